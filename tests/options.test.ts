import test from 'ava';
import { SessionOptionsError, SessionSchemaError, sessions } from '../src/index.js';
import { createTestDatabase } from '../src/testing/index.js';

test('a wrong option fails at construction with a sentence naming the option', (t) => {
  const cases: [Parameters<typeof sessions>[0], RegExp][] = [
    [{ database: 'postgres://x/y', idleTimeout: -1 }, /option idleTimeout/],
    [
      { database: 'postgres://x/y', mode: 'optimistic' as never },
      /option mode: "optimistic" is not one of merge, strict, lock/,
    ],
    [{ database: 'postgres://x/y', cookie: { name: 'bad name' } }, /option cookie\.name/],
    [
      { database: 'postgres://x/y', cookie: { sameSite: 'none', secure: false } },
      /option cookie\.sameSite/,
    ],
    [{ database: 'postgres://x/y', maxSessionsPerUser: 0 }, /option maxSessionsPerUser/],
    [{ database: 'postgres://x/y', tenant: 'acme' as never }, /option tenant: must be a function/],
  ];
  for (const [options, message] of cases) {
    const error = t.throws(() => sessions(options), { instanceOf: SessionOptionsError });
    t.regex(error?.message ?? '', message);
    t.is(error?.code, 'SESSION_OPTIONS_INVALID');
  }
});

test('the caller’s options object is never modified, and the resolved one is frozen', (t) => {
  const options = { database: 'postgres://x/y', cookie: { name: 'app' } };
  const middleware = sessions(options);
  t.deepEqual(options, { database: 'postgres://x/y', cookie: { name: 'app' } });
  t.true(Object.isFrozen(middleware.options));
  t.true(Object.isFrozen(middleware.options.cookie));
  t.is(middleware.options.cookie.sameSite, 'lax');
  t.is(middleware.options.idleTimeout, 86_400_000);
});

test('start() on a database without the schema says which command to run', async (t) => {
  const db = await createTestDatabase({ migrated: false });
  t.teardown(() => db.drop());
  const middleware = sessions({ database: db.url });
  t.teardown(() => middleware.close());
  const error = await t.throwsAsync(middleware.start(), { instanceOf: SessionSchemaError });
  t.regex(error?.message ?? '', /pg-sessions migrate up/);
});

test('start() and close() are idempotent and share one in-flight promise', async (t) => {
  const db = await createTestDatabase();
  t.teardown(() => db.drop());
  const middleware = sessions({ database: db.appUrl });
  const [first, second] = [middleware.start(), middleware.start()];
  t.is(first, second);
  await first;
  const [closeA, closeB] = [middleware.close(), middleware.close()];
  t.is(closeA, closeB);
  await closeA;
});
