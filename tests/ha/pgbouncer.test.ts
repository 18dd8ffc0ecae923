import test from 'ava';
import { migrate } from '../../src/db/migrator.js';
import type { ConcurrencyMode, SessionOptions } from '../../src/index.js';
import { PostgresServer } from '../../src/testing/index.js';
import { Browser, startApp, type TestApp } from '../helpers/http.js';
import { pollUntil, queryUrl } from '../helpers/replica-apps.js';
import { PgBouncer } from './helpers/pgbouncer.js';

// The middleware behind Debian's PgBouncer in transaction pooling, with two server
// connections for everything: any session-level state (a SET, a prepared statement, a
// LISTEN) would leak between requests and tenants, or be lost. LISTEN goes around it
// (cache.listenUrl), straight to PostgreSQL.
const DATABASE = 'sessions_bouncer';
const APP_ROLE = 'pgs_bouncer_app';

let server: PostgresServer;
let bouncer: PgBouncer;
let directUrl: string;
const apps: TestApp[] = [];

test.before(async () => {
  server = await PostgresServer.start();
  await queryUrl(server.url(), `CREATE DATABASE ${DATABASE}`);
  const migrated = await migrate(server.url(DATABASE), 'up');
  if (migrated.exitCode !== 0) throw new Error(`migration failed:\n${migrated.output}`);
  await queryUrl(server.url(), `CREATE ROLE ${APP_ROLE} LOGIN IN ROLE sessions_app`);
  directUrl = `postgres://${APP_ROLE}@${server.host}:${server.port}/${DATABASE}`;
  bouncer = await PgBouncer.start({
    host: server.host,
    port: server.port,
    database: DATABASE,
    users: [APP_ROLE],
    poolSize: 2,
  });
});

test.after.always(async () => {
  await Promise.allSettled(apps.splice(0).map((app) => app.close()));
  await bouncer?.stop();
  await server?.destroy();
});

async function appBehindBouncer(options: Partial<SessionOptions>): Promise<TestApp> {
  const app = await startApp(
    {
      database: bouncer.url(APP_ROLE),
      cache: { listenUrl: directUrl },
      tenant: (ctx) => ctx.get('x-tenant') || 'default',
      gc: false,
      ...options,
    },
    (router) => {
      router.get('/get', (ctx) => {
        ctx.body = { id: ctx.sessions.id, data: ctx.session?.toJSON() ?? null };
      });
      router.post('/set', (ctx) => {
        Object.assign(ctx.session!, ctx.request.query);
        ctx.body = { id: ctx.sessions.id };
      });
      router.post('/set-then-fail', (ctx) => {
        Object.assign(ctx.session!, ctx.request.query);
        ctx.throw(500, 'the handler failed');
      });
      router.post('/login', (ctx) => {
        ctx.sessions.bindUser(String(ctx.query.user));
        ctx.body = 'ok';
      });
      router.post('/logout', (ctx) => {
        ctx.session = null;
        ctx.body = 'bye';
      });
      router.post('/revoke-user', async (ctx) => {
        ctx.body = { ended: await ctx.sessions.revokeUser(String(ctx.query.user)) };
      });
    },
  );
  apps.push(app);
  // The middleware starts (and LISTENs) with its first request.
  await new Browser(app.url).get('/get');
  await pollUntil('the listener up', 5_000, () => app.middleware.listenerPid !== undefined);
  return app;
}

function tenantBrowser(url: string, tenant: string): Browser {
  const browser = new Browser(url);
  const request = browser.request.bind(browser);
  browser.request = (path, init = {}) =>
    request(path, { ...init, headers: { 'x-tenant': tenant, ...init.headers } });
  return browser;
}

const MODES: readonly ConcurrencyMode[] = ['merge', 'strict', 'lock'];
const TRANSACTIONS = ['none', 'request'] as const;

for (const mode of MODES) {
  for (const transaction of TRANSACTIONS) {
    test.serial(
      `through PgBouncer (transaction pooling, 2 server connections): mode ${mode}, transaction ${transaction}: create, concurrent writes, tenants, a throwing handler, revokeUser heard by another app, destroy`,
      async (t) => {
        const app = await appBehindBouncer({ mode, transaction });
        const tenants = ['acme', 'globex', 'initech'];
        const clients = tenants.flatMap((tenant) =>
          Array.from({ length: 4 }, () => ({ tenant, browser: tenantBrowser(app.url, tenant) })),
        );
        for (const [k, client] of clients.entries()) {
          t.is((await client.browser.post(`/set?client=${k}`)).status, 200);
        }
        // Every client writes five different keys at once; every tenant at the same time.
        const responses = await Promise.all(
          clients.flatMap(({ browser }) =>
            Array.from({ length: 5 }, (_, i) => browser.post(`/set?k${i}=${i}`)),
          ),
        );
        t.deepEqual(
          responses.map((r) => r.status).filter((s) => s !== 200),
          [],
          'every concurrent write succeeded',
        );
        for (const [k, { browser }] of clients.entries()) {
          const { data } = (await browser.get('/get')).body as { data: Record<string, string> };
          t.like(data, { client: String(k), k0: '0', k1: '1', k2: '2', k3: '3', k4: '4' });
        }
        // A session is found only under its own tenant, whatever connection served the last one.
        const stranger = tenantBrowser(app.url, 'globex');
        for (const [name, value] of clients[0]!.browser.cookies) stranger.cookies.set(name, value);
        t.is(((await stranger.get('/get')).body as { id: string | null }).id, null);

        // A throwing handler: without a request transaction the change is saved anyway
        // (koa-session's rule), inside one it rolls back.
        const [first] = clients;
        t.is((await first!.browser.post('/set-then-fail?failed=1')).status, 500);
        const after = ((await first!.browser.get('/get')).body as { data: { failed?: string } })
          .data;
        if (transaction === 'request' || mode === 'lock') t.is(after.failed, undefined);

        // Login, then revokeUser through this app ends the session on the other one too (NOTIFY).
        const old = new Map(first!.browser.cookies);
        t.is((await first!.browser.post(`/login?user=u-${mode}-${transaction}`)).status, 200);
        const other = await appBehindBouncer({ mode, transaction });
        const onOther = tenantBrowser(other.url, 'acme');
        for (const [name, value] of first!.browser.cookies) onOther.cookies.set(name, value);
        t.truthy(((await onOther.get('/get')).body as { id: string | null }).id);
        t.truthy(
          ((await onOther.get('/get')).body as { id: string | null }).id,
          'cached on the other app',
        );
        const revoked = await first!.browser.post(`/revoke-user?user=u-${mode}-${transaction}`);
        t.deepEqual(revoked.body, { ended: 1 });
        await pollUntil(
          'the other app to refuse the revoked session',
          2_000,
          async () => ((await onOther.get('/get')).body as { id: string | null }).id === null,
        );
        const replay = tenantBrowser(app.url, 'acme');
        for (const [name, value] of old) replay.cookies.set(name, value);
        t.is(((await replay.get('/get')).body as { id: string | null }).id, null);

        // Destroy.
        const last = clients.at(-1)!.browser;
        t.is((await last.post('/logout')).status, 200);
        t.is(((await last.get('/get')).body as { id: string | null }).id, null);

        // LISTEN went around PgBouncer: both listeners are direct backends of the app role,
        // and every other backend of it is one of PgBouncer's two.
        const backends = await queryUrl<{ application_name: string; pid: number }>(
          server.url(),
          `SELECT application_name, pid FROM pg_stat_activity WHERE usename = $1`,
          [APP_ROLE],
        );
        const listeners = backends.filter((b) => b.application_name === 'pg-sessions-listener');
        t.deepEqual(
          listeners.map((b) => b.pid).sort(),
          [app.middleware.listenerPid, other.middleware.listenerPid].sort(),
        );
        t.true(
          backends.length - listeners.length <= 2,
          "at most PgBouncer's two server connections",
        );
        const pools = await bouncer.admin<{ user: string; cl_waiting: string }>('SHOW POOLS');
        t.truthy(pools.find((p) => p.user === APP_ROLE));
        await Promise.all(apps.splice(0).map((a) => a.close()));
      },
    );
  }
}
