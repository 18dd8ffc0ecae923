// Step-up ("sudo mode", migration 8): the session row's authenticated_at, set by
// bindUser() and ctx.sessions.reauthenticated(), kept by rotation, compared with the
// database's clock by ctx.sessions.requireFresh() and the requireFresh() middleware.
import test from 'ava';
import pg from 'pg';
import { requireFresh, type SessionOptions, SessionOptionsError } from '../src/index.js';
import type { TestDatabase } from '../src/testing/index.js';
import { setupDatabase } from './helpers/database.js';
import { Browser, startApp, type TestApp } from './helpers/http.js';

let db: TestDatabase;
let admin: pg.Pool;

test.before(async () => {
  ({ db, admin } = await setupDatabase());
});

test.after.always(async () => {
  await admin?.end();
  await db?.drop();
});

async function app(options: Partial<SessionOptions> = {}): Promise<TestApp> {
  return startApp({ database: db.appUrl, gc: false, ...options }, (router) => {
    router.post('/login', (ctx) => {
      ctx.sessions.bindUser(String(ctx.query.user));
      ctx.body = 'ok';
    });
    router.post('/set', (ctx) => {
      Object.assign(ctx.session!, ctx.request.query);
      ctx.body = 'ok';
    });
    router.post('/regenerate', (ctx) => {
      ctx.sessions.regenerate();
      ctx.body = 'ok';
    });
    router.post('/sensitive', async (ctx) => {
      await ctx.sessions.requireFresh(Number(ctx.query.maxAge));
      ctx.body = { allowed: true };
    });
    router.post('/guarded', requireFresh(60_000), (ctx) => {
      ctx.body = { allowed: true };
    });
    router.post('/reauthenticate', async (ctx) => {
      ctx.body = { done: await ctx.sessions.reauthenticated() };
    });
    router.get('/get', (ctx) => {
      ctx.body = { id: ctx.sessions.id, data: ctx.session!.toJSON() };
    });
  });
}

/** Moves the session's last sign-in `seconds` into the past, by the database's clock. */
async function ageSignIn(id: string, seconds: number): Promise<void> {
  await admin.query(
    `UPDATE sessions.session SET authenticated_at = now() - make_interval(secs => $2) WHERE id = $1`,
    [id, seconds],
  );
}

/** The `reauthenticated` events of a session: who (actor) for whom (user). */
async function reauthentications(id: string): Promise<{ actor: string; user_id: string }[]> {
  const { rows } = await admin.query(
    `SELECT actor, user_id FROM sessions.event WHERE session_id = $1 AND kind = 'reauthenticated'`,
    [id],
  );
  return rows;
}

async function idOf(browser: Browser): Promise<string> {
  return ((await browser.get('/get')).body as { id: string }).id;
}

const REFUSED = { error: 'SESSION_REAUTHENTICATION_REQUIRED' };

test('a sign-in is fresh; an older one is refused with a typed 401 that loses nothing; reauthenticated() makes it fresh again, logged', async (t) => {
  const server = await app();
  try {
    const browser = new Browser(server.url);
    await browser.post('/set?cart=3');
    await browser.post('/login?user=alice');
    t.is((await browser.post('/sensitive?maxAge=60000')).status, 200);
    const id = await idOf(browser);
    await ageSignIn(id, 600);
    const refused = await browser.post('/sensitive?maxAge=60000');
    t.is(refused.status, 401);
    t.like(refused.body, REFUSED);
    t.like((await browser.get('/get')).body, { id, data: { cart: '3' } });

    t.deepEqual((await browser.post('/reauthenticate')).body, { done: true });
    t.is((await browser.post('/sensitive?maxAge=60000')).status, 200);
    t.deepEqual(await reauthentications(id), [{ actor: 'user:alice', user_id: 'alice' }]);
  } finally {
    await server.close();
  }
});

test('the time survives a rotation and is compared by the database clock', async (t) => {
  const server = await app();
  try {
    const browser = new Browser(server.url);
    await browser.post('/login?user=bob');
    const id = await idOf(browser);
    await ageSignIn(id, 30);
    await browser.post('/regenerate');
    t.is(await idOf(browser), id, 'the same session, a new token');
    t.is((await browser.post('/sensitive?maxAge=60000')).status, 200);
    t.is((await browser.post('/sensitive?maxAge=10000')).status, 401);
    // A second sign-in (bindUser again) counts as proving it anew.
    await browser.post('/login?user=bob');
    t.is((await browser.post('/sensitive?maxAge=10000')).status, 200);
  } finally {
    await server.close();
  }
});

test('an anonymous session, or none, is never fresh, and reauthenticated() does nothing for it', async (t) => {
  const server = await app();
  try {
    const nobody = new Browser(server.url);
    t.like((await nobody.post('/sensitive?maxAge=60000')).body, REFUSED);
    const anonymous = new Browser(server.url);
    await anonymous.post('/set?a=1');
    t.is((await anonymous.post('/sensitive?maxAge=60000')).status, 401);
    t.deepEqual((await anonymous.post('/reauthenticate')).body, { done: false });
    t.deepEqual(await reauthentications(await idOf(anonymous)), []);
  } finally {
    await server.close();
  }
});

test('the requireFresh() middleware guards a route, and refuses a wrong maxAge at once', async (t) => {
  const server = await app();
  try {
    const browser = new Browser(server.url);
    await browser.post('/login?user=carol');
    t.deepEqual((await browser.post('/guarded')).body, { allowed: true });
    await ageSignIn(await idOf(browser), 120);
    t.like((await browser.post('/guarded')).body, REFUSED);
    t.throws(() => requireFresh(Number.NaN), { instanceOf: SessionOptionsError });
    t.throws(() => requireFresh(-1), { instanceOf: SessionOptionsError });
  } finally {
    await server.close();
  }
});

test('a reauthentication on one node is fresh on another, with the cache on in both', async (t) => {
  const [first, second] = [await app(), await app()];
  try {
    const browser = new Browser(first.url);
    await browser.post('/login?user=dave');
    const id = await idOf(browser);
    const elsewhere = browser.clone(second.url);
    await elsewhere.get('/get'); // the second node caches the session
    await ageSignIn(id, 600);
    t.is((await elsewhere.post('/sensitive?maxAge=60000')).status, 401);
    await browser.post('/reauthenticate');
    t.is((await elsewhere.post('/sensitive?maxAge=60000')).status, 200);
  } finally {
    await first.close();
    await second.close();
  }
});

test('row-level security: the app role reaches no other tenant’s session, to refresh or to read', async (t) => {
  const server = await app();
  const client = new pg.Client(db.appUrl);
  await client.connect();
  try {
    const browser = new Browser(server.url);
    await browser.post('/login?user=erin');
    const id = await idOf(browser);
    await ageSignIn(id, 600);
    await client.query('BEGIN');
    await client.query(`SELECT set_config('sessions.tenant', 'another tenant', true)`);
    const done = await client.query('SELECT sessions.reauthenticate($1) AS done', [id]);
    const fresh = await client.query(
      `SELECT sessions.authenticated_within($1, '1 hour') AS fresh`,
      [id],
    );
    await client.query('COMMIT');
    t.false(done.rows[0].done);
    t.is(fresh.rows[0].fresh, null);
    t.is((await browser.post('/sensitive?maxAge=60000')).status, 401, 'still stale');
    t.deepEqual(await reauthentications(id), []);
  } finally {
    await client.end();
    await server.close();
  }
});
