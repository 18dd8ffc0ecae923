import test from 'ava';
import type { CompiledQuery } from 'kysely';
import { inlineParameters } from '../../src/db/runner.js';

function compiled(sql: string, parameters: unknown[]): CompiledQuery<unknown> {
  return { sql, parameters, query: undefined as never, queryId: undefined as never };
}

test('each kind of value becomes the literal an untyped bind parameter would be', (t) => {
  const text = inlineParameters(
    compiled('SELECT $1, $2, $3, $4, $5, $6, $7, $8', [
      null,
      42,
      true,
      "it's",
      Buffer.from([0xde, 0xad]),
      new Date('2026-01-02T03:04:05.000Z'),
      ['a', 'b"c', null],
      { k: "v'" },
    ]),
  );
  t.is(
    text,
    `SELECT NULL, '42', 'true', 'it''s', E'\\\\xdead', '2026-01-02T03:04:05.000Z',  E'{"a","b\\\\"c",NULL}', '{"k":"v''"}'`,
  );
});

test('$10 is the tenth parameter, not the first followed by 0', (t) => {
  const parameters = Array.from({ length: 10 }, (_, index) => index + 1);
  t.is(inlineParameters(compiled('SELECT $1, $10', parameters)), `SELECT '1', '10'`);
});

test('a backslash in a string cannot escape the literal', (t) => {
  t.is(
    inlineParameters(compiled('SELECT $1', ["a\\'; DROP TABLE x; --"])),
    // node-postgres switches to an E'' literal (after a space) and doubles both characters.
    `SELECT  E'a\\\\''; DROP TABLE x; --'`,
  );
});

test('a missing parameter or a non-finite number is an error, never a wrong statement', (t) => {
  t.throws(() => inlineParameters(compiled('SELECT $2', [1])), { message: /\$2/ });
  t.throws(() => inlineParameters(compiled('SELECT $1', [Number.NaN])), { message: /NaN/ });
});
