import test from 'ava';
import pg from 'pg';
import { SessionOptionsError, SessionSchemaError, sessions } from '../src/index.js';
import { createTestDatabase } from '../src/testing/index.js';
import { Browser, startApp } from './helpers/http.js';

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
    [
      { database: 'postgres://x/y', cache: { listenUrl: 'http://x/y' } },
      /option cache\.listenUrl: must be a postgres:\/\/ URL/,
    ],
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

test('cache.listenUrl sends the LISTEN connection there, and notifications still arrive', async (t) => {
  const db = await createTestDatabase();
  t.teardown(() => db.drop());
  const listenUrl = new URL(db.appUrl);
  listenUrl.searchParams.set('application_name', 'listener-behind-bouncer');
  const middleware = sessions({ database: db.appUrl, cache: { listenUrl: listenUrl.toString() } });
  t.teardown(() => middleware.close());
  await middleware.start();
  const admin = new pg.Client({ connectionString: db.url });
  await admin.connect();
  t.teardown(() => admin.end());
  const { rows } = await admin.query<{ name: string }>(
    'SELECT application_name AS name FROM pg_stat_activity WHERE pid = $1',
    [middleware.listenerPid],
  );
  t.deepEqual(rows, [{ name: 'listener-behind-bouncer' }]);
  const heard = new Promise((resolve) => middleware.events.once('cache:notification', resolve));
  await admin.query(
    `SELECT pg_notify('sessions_changed', '{"op":"update","s":[["default","00000000-0000-4000-8000-000000000000","00",2]]}')`,
  );
  t.truthy(await heard);
});

test('clients of a pool the app passes in come back without listeners of ours', async (t) => {
  const db = await createTestDatabase();
  t.teardown(() => db.drop());
  const pool = new pg.Pool({ connectionString: db.appUrl, max: 1 });
  t.teardown(() => pool.end());
  // Request transactions (Kysely) and single statements both check clients out.
  const app = await startApp(
    { database: pool, transaction: (ctx) => (ctx.path === '/tx' ? 'request' : 'none') },
    (router) => {
      router.post('/tx', (ctx) => {
        ctx.session!.n = 1;
        ctx.body = 'ok';
      });
      router.post('/plain', (ctx) => {
        ctx.session!.n = 2;
        ctx.body = 'ok';
      });
    },
  );
  t.teardown(() => app.close());
  const browser = new Browser(app.url);
  t.is((await browser.post('/tx')).status, 200);
  t.is((await browser.post('/plain')).status, 200);
  const client = await pool.connect();
  t.is(client.listenerCount('error'), 0, 'a checked-out client of the app has no listener of ours');
  client.release();
});
