import test from 'ava';
import { SessionDataError } from '../../src/errors.js';
import { MAX_DEPTH, serializeValue } from '../../src/serialize.js';

test('plain JSON values serialise as JSON.stringify does, Dates through toJSON', (t) => {
  const date = new Date('2026-01-02T03:04:05.000Z');
  t.is(
    serializeValue({ a: [1, 'x', null, true], d: date }, 'v'),
    JSON.stringify({ a: [1, 'x', null, true], d: date }),
  );
  t.is(serializeValue({ dropped: undefined, kept: 1 }, 'v'), '{"kept":1}');
});

const unfaithful: [string, () => unknown, RegExp][] = [
  ['NaN', () => Number.NaN, /NaN is not a JSON number/],
  ['Infinity', () => Number.POSITIVE_INFINITY, /Infinity/],
  ['BigInt', () => 1n, /BigInt/],
  ['a function', () => () => 1, /functions/],
  ['a symbol', () => Symbol('s'), /symbols/],
  ['a Map', () => new Map(), /Map is not a plain object/],
  // biome-ignore lint/suspicious/noSparseArray: the hole is the point
  ['a sparse array', () => [1, , 3], /sparse array/],
  ['undefined inside an array', () => [undefined], /undefined/],
];

for (const [name, make, message] of unfaithful) {
  test(`${name} is refused with a SessionDataError`, (t) => {
    const error = t.throws(() => serializeValue({ inner: make() }, 'key'), {
      instanceOf: SessionDataError,
    });
    t.regex(error.message, message);
  });
}

test('a cycle is refused, but the same object twice (no cycle) is fine', (t) => {
  const shared = { x: 1 };
  t.is(serializeValue({ a: shared, b: shared }, 'v'), '{"a":{"x":1},"b":{"x":1}}');
  const cyclic: Record<string, unknown> = {};
  cyclic.self = cyclic;
  t.throws(() => serializeValue(cyclic, 'v'), {
    instanceOf: SessionDataError,
    message: /circular/,
  });
});

test('text PostgreSQL cannot store is refused: NUL and unpaired surrogates, in values and keys', (t) => {
  for (const value of ['a\u0000b', '\ud800', 'x\udc00', { 'k\u0000': 1 }, ['\ud83d']]) {
    t.throws(
      () => serializeValue(value, 'v'),
      { instanceOf: SessionDataError },
      JSON.stringify(value),
    );
  }
  // A surrogate pair (an emoji) is fine.
  t.is(serializeValue('😀', 'v'), '"😀"');
});

test('nesting is limited to MAX_DEPTH levels', (t) => {
  const nest = (levels: number): unknown => {
    let value: unknown = 1;
    for (let level = 0; level < levels; level++) value = [value];
    return value;
  };
  t.notThrows(() => serializeValue(nest(MAX_DEPTH), 'v'));
  t.throws(() => serializeValue(nest(MAX_DEPTH + 1), 'v'), { message: /deeper than 64/ });
});
