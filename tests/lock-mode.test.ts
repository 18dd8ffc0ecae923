import test from 'ava';
import type pg from 'pg';
import type { SessionOptions } from '../src/index.js';
import type { TestDatabase } from '../src/testing/index.js';
import { sessionRows, setupDatabase } from './helpers/database.js';
import { Browser, startApp, type TestApp } from './helpers/http.js';

// Lock mode: a wait for another request's lock is bounded by lockTimeout (not cut short
// by statement_timeout), and a request without a cookie has nothing to lock.

let db: TestDatabase;
let admin: pg.Pool;

test.before(async () => {
  ({ db, admin } = await setupDatabase());
});

test.after.always(async () => {
  await admin?.end();
  await db?.drop();
});

async function lockApp(options: Partial<SessionOptions> = {}): Promise<TestApp> {
  const app = await startApp(
    { database: db.appUrl, mode: 'lock', gc: false, ...options },
    (router) => {
      router.post('/init', (ctx) => {
        ctx.session!.holds = 0;
        ctx.body = 'ok';
      });
      // Holds the session's row lock for ?ms.
      router.post('/hold', async (ctx) => {
        const found = !ctx.session!.isNew;
        ctx.session!.holds = Number(ctx.session!.holds ?? 0) + 1;
        await new Promise((resolve) => setTimeout(resolve, Number(ctx.query.ms)));
        ctx.body = ctx.query.report ? { found } : 'held';
      });
      router.get('/read', async (ctx) => {
        const { rows } = await ctx.db!.executeQuery<{ statement_timeout: string }>({
          sql: "SELECT current_setting('statement_timeout') AS statement_timeout",
          parameters: [],
          query: { kind: 'RawNode' } as never,
          queryId: { queryId: 'statement-timeout' },
        });
        ctx.body = {
          holds: ctx.session!.holds ?? null,
          statementTimeout: rows[0]?.statement_timeout,
        };
      });
      router.post('/write', (ctx) => {
        ctx.session!.written = true;
        ctx.body = 'ok';
      });
      router.post('/logout', (ctx) => {
        ctx.session = null;
        ctx.body = 'bye';
      });
      router.post('/increment', async (ctx) => {
        const current = Number(ctx.session!.counter ?? 0);
        // Widen the window between read and write so that the requests really overlap.
        await new Promise((resolve) => setImmediate(resolve));
        ctx.session!.counter = current + 1;
        ctx.body = 'ok';
      });
      // What the request's transaction has cost so far: a transaction id means a commit
      // record, and a commit record after WAL means a flush.
      router.get('/xid', async (ctx) => {
        const counter = ctx.session!.counter ?? null;
        const { rows } = await ctx.db!.executeQuery<{ xid: string | null }>({
          sql: 'SELECT pg_current_xact_id_if_assigned()::text AS xid',
          parameters: [],
          query: { kind: 'RawNode' } as never,
          queryId: { queryId: 'xid' },
        });
        ctx.body = { counter, xid: rows[0]?.xid ?? null };
      });
    },
  );
  await app.middleware.start();
  return app;
}

/** Starts a request that holds the lock, then measures one that waits behind it. */
async function waitBehind(app: TestApp, holdMs: number) {
  const browser = new Browser(app.url);
  await browser.post('/init');
  const holding = browser.clone().post(`/hold?ms=${holdMs}`);
  await new Promise((resolve) => setTimeout(resolve, 200));
  const started = Date.now();
  const waiting = await browser.clone().get('/read');
  const elapsed = Date.now() - started;
  await holding;
  return { waiting, elapsed };
}

test('with the defaults, a lock-mode request waiting 7 s behind another succeeds', async (t) => {
  const app = await lockApp();
  t.teardown(() => app.close());
  const { waiting, elapsed } = await waitBehind(app, 7_200);
  t.is(waiting.status, 200, JSON.stringify(waiting.body));
  t.like(waiting.body, { holds: 1 });
  t.true(elapsed >= 6_500, `waited ${elapsed} ms`);
});

test('lockTimeout longer than statementTimeout: a wait between the two succeeds', async (t) => {
  const app = await lockApp({ statementTimeout: 600, lockTimeout: 2_000 });
  t.teardown(() => app.close());
  const { waiting, elapsed } = await waitBehind(app, 1_300);
  t.is(waiting.status, 200, JSON.stringify(waiting.body));
  t.true(elapsed >= 900, `waited ${elapsed} ms`);
  // Past the lock, the handler's statements are bounded by statementTimeout again.
  t.like(waiting.body, { holds: 1, statementTimeout: '600ms' });
});

test('a wait beyond lockTimeout is SESSION_LOCK_TIMEOUT (503), also when it exceeds statementTimeout', async (t) => {
  const app = await lockApp({ statementTimeout: 600, lockTimeout: 1_000 });
  t.teardown(() => app.close());
  const { waiting, elapsed } = await waitBehind(app, 2_500);
  t.is(waiting.status, 503);
  t.like(waiting.body, { error: 'SESSION_LOCK_TIMEOUT' });
  t.true(elapsed >= 900 && elapsed < 2_000, `gave up after ${elapsed} ms`);
});

test('lock mode: a request without a cookie never touches the database', async (t) => {
  const app = await lockApp();
  t.teardown(() => app.close());
  const before = app.middleware.metrics.snapshot();
  const response = await new Browser(app.url).request('/hold?ms=0', { method: 'POST' });
  t.is(response.status, 200);
  const read = await new Browser(app.url).get('/read-nothing');
  t.is(read.status, 404);
  const after = app.middleware.metrics.snapshot();
  // One statement for the creation of the first one's session, nothing else.
  t.is(after.roundTrips - before.roundTrips, 1);
  t.is(after.creates - before.creates, 1);
});

test('lock mode: a request without a cookie that writes creates its session in one statement', async (t) => {
  const app = await lockApp();
  t.teardown(() => app.close());
  const browser = new Browser(app.url);
  const before = app.middleware.metrics.snapshot();
  t.is((await browser.post('/write')).status, 200);
  t.is(app.middleware.metrics.snapshot().roundTrips - before.roundTrips, 1);
  const rows = await sessionRows(admin);
  t.true(rows.some((row) => row.data.written === true));
});

test.serial(
  'lock mode: 200 concurrent increments of one session serialise, none lost',
  async (t) => {
    const app = await lockApp();
    t.teardown(() => app.close());
    const browser = new Browser(app.url);
    await browser.post('/init');
    const responses = await Promise.all(
      Array.from({ length: 200 }, () => browser.clone().post('/increment')),
    );
    t.deepEqual(
      responses.filter((response) => response.status !== 200).map((response) => response.body),
      [],
    );
    t.like((await browser.get('/xid')).body, { counter: 200 });
    const rows = await sessionRows(admin);
    t.true(rows.some((row) => row.data.counter === 200));
  },
);

test('lock mode: a request that only reads takes no transaction id, so its commit waits for no WAL flush', async (t) => {
  const app = await lockApp();
  t.teardown(() => app.close());
  const browser = new Browser(app.url);
  await browser.post('/init');
  await browser.post('/increment');
  const before = app.middleware.metrics.snapshot();
  t.deepEqual((await browser.get('/xid')).body, { counter: 1, xid: null });
  // BEGIN, the settings, the lock and the load in one message; COMMIT and the flush in
  // another (the handler's own query is the application's, not counted).
  t.is(app.middleware.metrics.snapshot().roundTrips - before.roundTrips, 2);
});

test('lock mode: no response answered after a logout hands its ended token out again', async (t) => {
  const app = await lockApp({ poolSize: 12 });
  t.teardown(() => app.close());
  let handedBack = 0;
  let answeredAfter = 0;
  for (let round = 0; round < 9; round++) {
    const browser = new Browser(app.url);
    await browser.post('/init');
    const token = browser.cookies.get('sid');
    const timed = async (path: string) => {
      const reply = await browser.clone().post(path);
      return { reply, at: performance.now() };
    };
    // Five slow writers of one session and a logout among them, all lock mode: they
    // take the session's lock one at a time. A writer answered after the logout must
    // not give the browser back the token the logout ended (it would hold a dead
    // cookie again), whether it waited behind the logout or committed just before it.
    const writers = Array.from({ length: 5 }, (_, index) =>
      timed(`/hold?report=1&ms=${20 + index * 5}`),
    );
    await new Promise((resolve) => setTimeout(resolve, 5));
    const logout = await timed('/logout');
    t.is(logout.reply.status, 200);
    for (const { reply, at } of await Promise.all(writers)) {
      t.is(reply.status, 200);
      if (at < logout.at) continue;
      answeredAfter++;
      if (reply.setCookies.some((line) => line.startsWith(`sid=${token};`))) handedBack++;
    }
  }
  t.true(answeredAfter > 0, 'some writers were answered after the logout');
  t.is(handedBack, 0, 'a response after the logout handed out its ended token');
});
