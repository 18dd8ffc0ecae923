import test from 'ava';
import { migrate, ReplicaRouter, type SessionOptions } from '../src/index.js';
import { PostgresServer } from '../src/testing/index.js';
import { Browser, startApp } from './helpers/http.js';

// The same outage through the single pool and through the replica router (whose write
// first waits up to failoverTimeout for a primary to appear among its hosts).
const databases: [string, (url: string) => SessionOptions['database'], number][] = [
  ['a database URL', (url) => url, 5_000],
  [
    'a ReplicaRouter',
    (url) =>
      new ReplicaRouter({
        hosts: [url],
        failoverTimeout: 1_000,
        connectTimeout: 1_000,
        statementTimeout: 1_000,
        healthCheckInterval: 100,
      }),
    1_000 + 1_000 + 1_000 + 1_000,
  ],
];

for (const [name, database, limitMs] of databases) {
  test(`${name}: a database that is down gives 503 promptly, and the app recovers when it is back`, async (t) => {
    // A server of its own: this test stops and restarts it.
    const server = await PostgresServer.start();
    t.teardown(() => server.destroy());
    const migrated = await migrate(server.url(), 'up');
    t.is(migrated.exitCode, 0, migrated.output);

    const options: SessionOptions = {
      database: database(server.url()),
      connectTimeout: 1000,
      statementTimeout: 1000,
    };
    const app = await startApp(options, (router) => {
      router.post('/set', (ctx) => {
        ctx.session!.n = Number(ctx.session!.n ?? 0) + 1;
        ctx.body = ctx.session!.n;
      });
    });
    t.teardown(async () => {
      await app.close();
      // A router passed in is the app's to close, not the middleware's.
      if (options.database instanceof ReplicaRouter) await options.database.close();
    });
    const browser = new Browser(app.url);
    t.is((await browser.post('/set')).body, 1);

    await server.stop();
    const started = Date.now();
    const down = await browser.post('/set');
    t.is(down.status, 503);
    t.is((down.body as { error: string }).error, 'SESSION_STORE_UNAVAILABLE');
    t.true(Date.now() - started < limitMs, 'no hang beyond the configured timeouts');

    await server.launch();
    let recovered = await browser.post('/set');
    for (let attempt = 0; attempt < 30 && recovered.status !== 200; attempt++) {
      await new Promise((resolve) => setTimeout(resolve, 100));
      recovered = await browser.post('/set');
    }
    t.is(recovered.status, 200);
    t.is(recovered.body, 2, 'the session written before the outage is intact');
  });
}

test('a request transaction whose server goes away mid-request gets 503, and nothing crashes', async (t) => {
  const server = await PostgresServer.start();
  t.teardown(() => server.destroy());
  const migrated = await migrate(server.url(), 'up');
  t.is(migrated.exitCode, 0, migrated.output);
  let entered!: () => void;
  let release!: () => void;
  const inHandler = new Promise<void>((resolve) => {
    entered = resolve;
  });
  const released = new Promise<void>((resolve) => {
    release = resolve;
  });
  const app = await startApp(
    {
      database: server.url(),
      transaction: 'request',
      connectTimeout: 1000,
      statementTimeout: 1000,
    },
    (router) => {
      router.post('/slow', async (ctx) => {
        ctx.session!.n = 1;
        entered();
        // The transaction's connection is checked out and idle while the server stops.
        await released;
        ctx.body = 'done';
      });
    },
  );
  t.teardown(() => app.close());
  const response = new Browser(app.url).post('/slow');
  await inHandler;
  await server.stop();
  release();
  const down = await response;
  t.is(down.status, 503);
  t.is((down.body as { error: string }).error, 'SESSION_STORE_UNAVAILABLE');
});

test('a database that is down at the first request gives 503, and the middleware starts once it is back', async (t) => {
  const server = await PostgresServer.start();
  t.teardown(() => server.destroy());
  const migrated = await migrate(server.url(), 'up');
  t.is(migrated.exitCode, 0, migrated.output);
  await server.stop();
  // Nothing has started the middleware: the first request starts it, and fails to.
  const app = await startApp(
    { database: server.url(), connectTimeout: 1000, statementTimeout: 1000 },
    (router) => {
      router.post('/set', (ctx) => {
        ctx.session!.n = Number(ctx.session!.n ?? 0) + 1;
        ctx.body = ctx.session!.n;
      });
    },
  );
  t.teardown(() => app.close());
  const browser = new Browser(app.url);
  const down = await browser.post('/set');
  t.is(down.status, 503);
  t.is((down.body as { error: string }).error, 'SESSION_STORE_UNAVAILABLE');
  t.is(app.middleware.listenerPid, undefined, 'not started: no listener');

  await server.launch();
  let up = await browser.post('/set');
  for (let attempt = 0; attempt < 30 && up.status !== 200; attempt++) {
    await new Promise((resolve) => setTimeout(resolve, 100));
    up = await browser.post('/set');
  }
  t.is(up.status, 200, 'a later request starts the middleware');
  t.is(up.body, 1);
  t.is((await browser.post('/set')).body, 2, 'the session written after the start is served');
  t.not(app.middleware.listenerPid, undefined, 'started: the cache listener is up');
});

test('with the database down, ctx.sessions operations answer the typed 503 too, not an untyped 500', async (t) => {
  const server = await PostgresServer.start();
  t.teardown(() => server.destroy());
  const migrated = await migrate(server.url(), 'up');
  t.is(migrated.exitCode, 0, migrated.output);
  const app = await startApp(
    { database: server.url(), connectTimeout: 1000, statementTimeout: 1000 },
    (router) => {
      // No cookie: the request loads nothing, so only the operation itself meets the outage.
      router.get('/devices', async (ctx) => {
        ctx.body = await ctx.sessions.listForUser('someone');
      });
      router.post('/revoke', async (ctx) => {
        ctx.body = await ctx.sessions.revoke('2f1c7e2a-8d4b-4f7e-9a51-0c3d5e6f7a8b');
      });
      router.post('/revoke-user', async (ctx) => {
        ctx.body = await ctx.sessions.revokeUser('someone');
      });
    },
  );
  t.teardown(() => app.close());
  const browser = new Browser(app.url);
  t.deepEqual((await browser.get('/devices')).body, [], 'up: the operations work');
  await server.stop();
  for (const [method, path] of [
    ['GET', '/devices'],
    ['POST', '/revoke'],
    ['POST', '/revoke-user'],
  ] as const) {
    const down = await browser.request(path, { method });
    t.is(down.status, 503, path);
    t.like(down.body, { error: 'SESSION_STORE_UNAVAILABLE' }, path);
  }
});
