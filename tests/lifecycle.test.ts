import test from 'ava';
import type pg from 'pg';
import type { TestDatabase } from '../src/testing/index.js';
import { sessionRows, setupDatabase } from './helpers/database.js';
import { Browser, startApp, type TestApp } from './helpers/http.js';

let db: TestDatabase;
let admin: pg.Pool;

test.before(async () => {
  ({ db, admin } = await setupDatabase());
  await admin.query('CREATE TABLE public.orders (id serial PRIMARY KEY, item text NOT NULL)');
  await admin.query('GRANT SELECT, INSERT ON public.orders TO sessions_app');
  await admin.query('GRANT USAGE ON SEQUENCE public.orders_id_seq TO sessions_app');
});

test.after.always(async () => {
  await admin?.end();
  await db?.drop();
});

async function appWith(options: Parameters<typeof startApp>[0]): Promise<TestApp> {
  return startApp(options, (router) => {
    router.post('/set', (ctx) => {
      Object.assign(ctx.session!, ctx.request.query);
      ctx.body = ctx.sessions.id;
    });
    router.get('/get', (ctx) => {
      ctx.body = { data: ctx.session!.toJSON(), id: ctx.sessions.id };
    });
    router.post('/order', async (ctx) => {
      ctx.session!.lastOrder = String(ctx.query.item);
      await ctx
        .db!.insertInto('public.orders' as never)
        .values({ item: String(ctx.query.item) } as never)
        .execute();
      if (ctx.query.fail) throw new Error('payment failed');
      ctx.body = 'ordered';
    });
    router.post('/big', (ctx) => {
      ctx.session!.blob = 'x'.repeat(Number(ctx.query.size));
      ctx.body = 'ok';
    });
    router.post('/bad/:kind', (ctx) => {
      const session = ctx.session!;
      const kind = ctx.params.kind;
      if (kind === 'bigint') session.value = 10n;
      if (kind === 'function') session.value = () => 1;
      if (kind === 'nan') session.value = Number.NaN;
      if (kind === 'cycle') {
        const cycle: Record<string, unknown> = {};
        cycle.self = cycle;
        session.value = cycle;
      }
      if (kind === 'sparse') session.value = [1, undefined, 3];
      if (kind === 'map') session.value = new Map([[1, 2]]);
      ctx.body = 'ok';
    });
  });
}

test('idle expiry: a session unused for longer than idleTimeout is gone', async (t) => {
  // Wide margins: the steps only need to be shorter than idleTimeout on a loaded machine.
  const app = await appWith({ database: db.appUrl, idleTimeout: 2_000, touchInterval: 0 });
  t.teardown(() => app.close());
  const browser = new Browser(app.url);
  await browser.post('/set?a=1');
  // Activity within the idle window keeps it alive (sliding expiry): three steps of
  // 1 s outlive the 2 s timeout only because each request's touch slid it forward.
  for (let step = 0; step < 3; step++) {
    await new Promise((resolve) => setTimeout(resolve, 1_000));
    t.deepEqual(((await browser.get('/get')).body as { data: unknown }).data, { a: '1' });
    await app.middleware.flushTouches();
  }
  await new Promise((resolve) => setTimeout(resolve, 2_300));
  t.deepEqual(((await browser.get('/get')).body as { data: unknown }).data, {});
});

test('absolute expiry ends a session however active it is', async (t) => {
  const app = await appWith({
    database: db.appUrl,
    idleTimeout: 60_000,
    absoluteTimeout: 1200,
    touchInterval: 0,
  });
  t.teardown(() => app.close());
  const browser = new Browser(app.url);
  await browser.post('/set?a=1');
  const deadline = Date.now() + 2500;
  let lastSeen: unknown;
  while (Date.now() < deadline) {
    lastSeen = ((await browser.get('/get')).body as { data: unknown }).data;
    await new Promise((resolve) => setTimeout(resolve, 150));
  }
  t.deepEqual(lastSeen, {});
});

test('touch slides idle expiry forward and never moves last_seen_at backwards', async (t) => {
  const app = await appWith({ database: db.appUrl, touchInterval: 0 });
  t.teardown(() => app.close());
  const browser = new Browser(app.url);
  await browser.post('/set?a=1');
  const id = ((await browser.get('/get')).body as { id: string }).id;
  const before = (await sessionRows(admin)).find((row) => row.id === id);
  await new Promise((resolve) => setTimeout(resolve, 50));
  await browser.get('/get');
  // Touches are batched: nothing is written until the flush.
  await app.middleware.flushTouches();
  const after = (await sessionRows(admin)).find((row) => row.id === id);
  t.true(after.last_seen_at > before.last_seen_at);
  t.true(after.idle_expires_at > before.idle_expires_at);
  t.is(after.version, before.version, 'a touch is not a content change');
});

test("transaction: 'request' commits the app's write and the session change together", async (t) => {
  const app = await appWith({ database: db.appUrl, transaction: 'request' });
  t.teardown(() => app.close());
  const browser = new Browser(app.url);
  await browser.post('/set?a=1');
  const ok = await browser.post('/order?item=book');
  t.is(ok.status, 200);
  const failed = await browser.post('/order?item=piano&fail=1');
  t.is(failed.status, 500);
  const orders = await admin.query('SELECT item FROM public.orders ORDER BY id');
  t.deepEqual(
    orders.rows.map((row) => row.item),
    ['book'],
    'the failed order rolled back',
  );
  t.is(
    ((await browser.get('/get')).body as { data: { lastOrder: string } }).data.lastOrder,
    'book',
  );
});

test('session data over maxSize is refused with 413 and nothing is written', async (t) => {
  const app = await appWith({ database: db.appUrl, maxSize: 1024 });
  t.teardown(() => app.close());
  const browser = new Browser(app.url);
  await browser.post('/set?a=1');
  const tooBig = await browser.post('/big?size=2000');
  t.is(tooBig.status, 413);
  t.is((tooBig.body as { error: string }).error, 'SESSION_TOO_LARGE');
  t.deepEqual(((await browser.get('/get')).body as { data: unknown }).data, { a: '1' });
  t.is((await browser.post('/big?size=500')).status, 200);
});

test('values JSON cannot represent faithfully raise SESSION_DATA_INVALID', async (t) => {
  const app = await appWith({ database: db.appUrl });
  t.teardown(() => app.close());
  const browser = new Browser(app.url);
  await browser.post('/set?a=1');
  for (const kind of ['bigint', 'function', 'nan', 'cycle', 'sparse', 'map']) {
    const response = await browser.post(`/bad/${kind}`);
    t.is(response.status, 500, kind);
    t.is((response.body as { error: string }).error, 'SESSION_DATA_INVALID', kind);
  }
  t.deepEqual(((await browser.get('/get')).body as { data: unknown }).data, { a: '1' });
});
