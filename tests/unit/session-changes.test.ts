import test from 'ava';
import { SessionDataError } from '../../src/errors.js';
import { collectChanges, markSaved, Session, snapshotData } from '../../src/session.js';

function loadedSession(data: Record<string, unknown>): Session {
  return new Session(snapshotData(data), false);
}

test('an untouched session has an empty delta', (t) => {
  const session = loadedSession({ count: 1, cart: [1, 2], user: { name: 'a' } });
  const changes = collectChanges(session);
  t.deepEqual(changes.patch, {});
  t.deepEqual(changes.removed, []);
  t.is(changes.expected.size, 0);
});

test('set, nested mutation and deletion each land in the delta with what was loaded', (t) => {
  const session = loadedSession({ count: 1, cart: [1], gone: 'x', same: true });
  session.count = 2;
  (session.cart as number[]).push(2);
  delete session.gone;
  session.added = { a: 1 };
  const changes = collectChanges(session);
  t.deepEqual(changes.patch, { count: 2, cart: [1, 2], added: { a: 1 } });
  t.deepEqual(changes.removed, ['gone']);
  t.deepEqual(
    [...changes.expected],
    [
      ['count', '1'],
      ['cart', '[1]'],
      ['added', undefined],
      ['gone', '"x"'],
    ],
  );
});

test('a value set to what it already was is not a change; undefined deletes', (t) => {
  const session = loadedSession({ a: 'same', b: { deep: [1] }, c: 3 });
  session.a = 'same';
  session.b = { deep: [1] };
  session.c = undefined;
  const changes = collectChanges(session);
  t.deepEqual(changes.patch, {});
  t.deepEqual(changes.removed, ['c']);
});

test('the size counts every stored key, changed or not (at most a byte per key over)', (t) => {
  const session = loadedSession({ a: 'x'.repeat(100) });
  session.b = 'y'.repeat(50);
  const { size } = collectChanges(session);
  const json = JSON.stringify({ a: 'x'.repeat(100), b: 'y'.repeat(50) }).length;
  t.true(size >= json && size <= json + 2, `size ${size} for ${json} bytes of JSON`);
});

test('after markSaved the written data is the new baseline', (t) => {
  const session = loadedSession({ a: 1 });
  session.a = 2;
  markSaved(session, collectChanges(session).baseline);
  t.deepEqual(collectChanges(session).patch, {});
  t.false(session.isNew);
});

test('a value JSON cannot hold faithfully is refused with its path', (t) => {
  const session = loadedSession({});
  session.bad = { list: [1, () => 2] };
  const error = t.throws(() => collectChanges(session), { instanceOf: SessionDataError });
  t.regex(error.message, /bad\.list\[1\]/);
});
