import test from 'ava';
import Keygrip from 'keygrip';
import Koa from 'koa';
import pg from 'pg';
import {
  ReplicaRouter,
  type ReplicaRouterOptions,
  SessionOptionsError,
  SessionSchemaError,
  sessions,
} from '../src/index.js';
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
    [
      { database: 'postgres://x/y', rotateInterval: 0 },
      /option rotateInterval: must be a positive/,
    ],
    [
      { database: 'postgres://x/y', rotateInterval: '15m' as never },
      /option rotateInterval: must be a positive/,
    ],
    [{ database: 'postgres://x/y', rotationGrace: -1 }, /option rotationGrace: must be a positive/],
    [
      { database: 'postgres://x/y', rotationGrace: 7_200_000 },
      /option rotationGrace: must be at most an hour/,
    ],
    [
      { database: 'postgres://x/y', idleTimeout: 30_000, rotationGrace: 60_000 },
      /option rotationGrace: .*at most idleTimeout/,
    ],
  ];
  for (const [options, message] of cases) {
    const error = t.throws(() => sessions(options), { instanceOf: SessionOptionsError });
    t.regex(error?.message ?? '', message);
    t.is(error?.code, 'SESSION_OPTIONS_INVALID');
  }
});

test('an unknown option name is refused with the nearest known one', (t) => {
  const cases: [Record<string, unknown>, RegExp][] = [
    [
      { idleTimout: 1000 },
      /option idleTimout: is not an option of pg-sessions; did you mean idleTimeout\?/,
    ],
    [
      { cookie: { sameSite: 'lax', nmae: 'x' } },
      /option cookie\.nmae: .*did you mean cookie\.name\?/,
    ],
    [{ cache: { maxEntry: 10 } }, /did you mean cache\.maxEntries\?/],
    [{ gc: { intervall: 10 } }, /did you mean gc\.interval\?/],
    [{ rollling: true }, /did you mean rolling\?/],
    [{ rotationInterval: 60_000 }, /did you mean rotateInterval\?/],
    [{ somethingElse: 1 }, /option somethingElse: is not an option of pg-sessions$/],
  ];
  for (const [extra, message] of cases) {
    const error = t.throws(() => sessions({ database: 'postgres://x/y', ...extra } as never), {
      instanceOf: SessionOptionsError,
    });
    t.regex(error?.message ?? '', message);
  }
});

test('koa-session’s option names are accepted with koa-session’s meaning', (t) => {
  const middleware = sessions({
    database: 'postgres://x/y',
    key: 'koa.sess',
    maxAge: 3_600_000,
    httpOnly: true,
    signed: false,
    secure: true,
    sameSite: 'strict',
    overwrite: true,
    rolling: true,
    renew: false,
    autoCommit: false,
    valid: () => true,
    beforeSave: () => {},
    genid: () => 'label',
    prefix: 'sess:',
  });
  const { cookie, idleTimeout, koa } = middleware.options;
  t.like(cookie, {
    name: 'koa.sess',
    maxAge: 3_600_000,
    signed: false,
    secure: true,
    sameSite: 'strict',
  });
  t.is(idleTimeout, 3_600_000, 'maxAge is also how long the stored session lives after a save');
  t.like(koa, { rolling: true, renew: false, autoCommit: false, prefix: 'sess:' });
  t.is(
    sessions({ database: 'postgres://x/y', maxAge: 'session' }).options.cookie.maxAge,
    'session',
  );
});

test('koa-session options that would weaken the cookie or cannot apply are refused', (t) => {
  const cases: [Record<string, unknown>, RegExp][] = [
    [{ httpOnly: false }, /option httpOnly: false is refused/],
    [{ encode: () => '' }, /option encode: cannot apply/],
    [{ decode: () => ({}) }, /option decode: cannot apply/],
    [{ key: 'a', cookie: { name: 'b' } }, /option key: and cookie\.name are the same setting/],
    [
      { externalKey: {} },
      /option externalKey: must be an object with get\(ctx\) and set\(ctx, value\)/,
    ],
    [{ prefix: 'a b' }, /option prefix/],
    [{ rolling: 'yes' }, /option rolling: must be a boolean/],
    [{ genid: 'x' }, /option genid: must be a function/],
  ];
  for (const [extra, message] of cases) {
    const error = t.throws(() => sessions({ database: 'postgres://x/y', ...extra } as never), {
      instanceOf: SessionOptionsError,
    });
    t.regex(error?.message ?? '', message);
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
  // An application's own pool listens for its idle clients' errors, as pg asks of every
  // pool: the database is dropped at the end, and a client it ends must not end the test.
  pool.on('error', () => {});
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

test('an undefined app.keys entry fails every request from the first, not only writes, until it is fixed', async (t) => {
  const db = await createTestDatabase();
  t.teardown(() => db.drop());
  let app: Koa | undefined;
  const started = await startApp(
    { database: db.appUrl },
    (router) => {
      router.get('/read', (ctx) => {
        ctx.body = { views: ctx.session!.views ?? 0 };
      });
      router.post('/write', (ctx) => {
        ctx.session!.views = 1;
        ctx.body = 'ok';
      });
    },
    (koa) => {
      app = koa;
      // What app.keys = [process.env.SESSION_SECRET!] gives when the variable is unset.
      koa.keys = [undefined as unknown as string];
    },
  );
  t.teardown(() => started.close());
  const browser = new Browser(started.url);
  for (const [method, path] of [
    ['GET', '/read'],
    ['POST', '/write'],
  ] as const) {
    const response = await browser.request(path, { method });
    t.is(response.status, 500, `${method} ${path}`);
    t.deepEqual(response.body, { error: 'SESSION_OPTIONS_INVALID' });
    t.deepEqual(response.setCookies, [], 'no session was started');
  }
  // The same check, with its message, at once for an app sessions() is given.
  const checked = t.throws(() => sessions({ database: db.appUrl }, app), {
    instanceOf: SessionOptionsError,
  });
  t.is(checked?.option, 'app.keys[0]');
  t.regex(
    checked?.message ?? '',
    /app\.keys\[0\]: is undefined: set app\.keys to .*SESSION_SECRET/,
  );

  app!.keys = ['a secret at last'];
  t.is((await browser.post('/write')).status, 200, 'fixing app.keys fixes the app');
  t.is((await browser.get('/read')).status, 200);
});

test('given the app, sessions() checks app.keys at once, in both of koa-session’s argument orders', (t) => {
  const app = new Koa();
  app.keys = ['a secret', ''];
  for (const make of [
    () => sessions({ database: 'postgres://x/y' }, app),
    () => sessions(app, { database: 'postgres://x/y' }),
  ]) {
    const error = t.throws(make, { instanceOf: SessionOptionsError });
    t.is(error?.option, 'app.keys[1]');
    t.regex(error?.message ?? '', /app\.keys\[1\]: is an empty or unusable key/);
  }
  const unsignedRequired = new Koa();
  const error = t.throws(
    () => sessions(unsignedRequired, { database: 'postgres://x/y', cookie: { signed: true } }),
    { instanceOf: SessionOptionsError },
  );
  t.is(error?.option, 'app.keys');
  // No keys with signed 'auto' means unsigned cookies; a Keygrip instance is fine.
  t.notThrows(() => sessions(new Koa(), { database: 'postgres://x/y' }));
  const withKeygrip = new Koa();
  withKeygrip.keys = new Keygrip(['a secret']) as unknown as string[];
  t.notThrows(() => sessions({ database: 'postgres://x/y' }, withKeygrip));
  t.throws(() => sessions({ database: 'postgres://x/y' }, {} as Koa), {
    instanceOf: SessionOptionsError,
    message: /option app: the second argument must be the Koa application/,
  });
});

test('start() checks the keys of the app it was given before it connects', async (t) => {
  const app = new Koa();
  app.keys = ['a secret'];
  // Port 1 of a loopback address: nothing listens, so connecting would fail differently.
  const middleware = sessions(app, { database: 'postgres://nobody@127.0.0.1:1/none' });
  t.teardown(() => middleware.close());
  app.keys = [undefined as unknown as string];
  const error = await t.throwsAsync(middleware.start(), { instanceOf: SessionOptionsError });
  t.is(error?.option, 'app.keys[0]');
});

test('a wrong ReplicaRouter option fails at construction with a SessionOptionsError naming it', (t) => {
  const url = 'postgres://x/y';
  const cases: [unknown, string, RegExp][] = [
    [
      { hosts: [undefined, url] },
      'hosts[0]',
      /is undefined: give a postgres:\/\/ URL or a pg\.PoolConfig/,
    ],
    [{ hosts: [url, 'mysql://x/y'] }, 'hosts[1]', /must be a postgres:\/\/ URL/],
    [{ hosts: [] }, 'hosts', /is empty/],
    [{ hosts: url }, 'hosts', /must be an array/],
    [{}, 'hosts', /missing: give every server in hosts, or primary/],
    [undefined, 'hosts', /missing/],
    [{ hosts: [url], primary: url }, 'hosts', /not both/],
    [{ replicas: [url] }, 'primary', /replicas need their primary/],
    [{ primary: url, replicas: [url, null] }, 'replicas[1]', /is null/],
    [{ primary: 42 }, 'primary', /is number/],
    [{ hosts: [url], maxReplicaLagMs: -1 }, 'maxReplicaLagMs', /positive number/],
    [{ hosts: [url], healthCheckInterval: 0 }, 'healthCheckInterval', /positive number/],
    [{ hosts: [url], failoverTimeout: Number.NaN }, 'failoverTimeout', /positive number/],
    [{ hosts: [url], poolSize: 2.5 }, 'poolSize', /whole number/],
    [{ hosts: [url], connectTimeout: '1s' }, 'connectTimeout', /positive number/],
    [{ hosts: [url], statementTimeout: -5 }, 'statementTimeout', /positive number/],
  ];
  for (const [options, option, message] of cases) {
    const error = t.throws(() => new ReplicaRouter(options as ReplicaRouterOptions), {
      instanceOf: SessionOptionsError,
    });
    t.is(error?.option, option, JSON.stringify(options));
    t.regex(error?.message ?? '', message);
  }
});
