import { createHash } from 'node:crypto';
import test from 'ava';
import type pg from 'pg';
import type { ConcurrencyMode, SessionOptions } from '../src/index.js';
import type { TestDatabase } from '../src/testing/index.js';
import { setupDatabase } from './helpers/database.js';
import { Browser, startApp, type TestApp } from './helpers/http.js';

// Token rotation with a grace period, and theft detection: a rotated-away token
// presented after its grace is a copy, and the whole session is revoked everywhere.

let db: TestDatabase;
let admin: pg.Pool;

test.before(async () => {
  ({ db, admin } = await setupDatabase());
});

test.after.always(async () => {
  await admin?.end();
  await db?.drop();
});

const GRACE = 400;

/** One app node with its own pool, cache and listener. */
async function node(options: Partial<SessionOptions> = {}): Promise<TestApp> {
  const app = await startApp(
    {
      database: db.appUrl,
      gc: false,
      bearer: true,
      rotationGrace: GRACE,
      mode: (ctx) => String(ctx.query.mode ?? 'merge') as ConcurrencyMode,
      transaction: (ctx) => (ctx.query.transaction === 'request' ? 'request' : 'none'),
      ...options,
    },
    (router) => {
      router.post('/login', (ctx) => {
        ctx.sessions.bindUser(String(ctx.query.user));
        ctx.session!.name = String(ctx.query.user);
        ctx.body = { token: ctx.sessions.token };
      });
      router.post('/regenerate', (ctx) => {
        ctx.sessions.regenerate();
        ctx.body = { token: ctx.sessions.token ?? null };
      });
      router.post('/set', (ctx) => {
        Object.assign(ctx.session!, ctx.query);
        ctx.body = 'ok';
      });
      router.get('/me', (ctx) => {
        ctx.body = { id: ctx.sessions.id, data: ctx.session?.toJSON() ?? null };
      });
    },
    (koa) => {
      koa.proxy = true;
    },
  );
  await app.middleware.start();
  return app;
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
const sha256 = (text: string) => createHash('sha256').update(text).digest('hex');

async function until(condition: () => Promise<boolean>, timeoutMs: number): Promise<void> {
  const started = Date.now();
  while (Date.now() - started < timeoutMs) {
    if (await condition()) return;
    await sleep(10);
  }
  throw new Error(`condition not met within ${timeoutMs} ms`);
}

async function sessionById(id: string) {
  const { rows } = await admin.query(
    'SELECT revoked_at, revoked_reason, user_id FROM sessions.session WHERE id = $1',
    [id],
  );
  return rows[0] as { revoked_at: Date | null; revoked_reason: string | null } | undefined;
}

test('within the grace period a rotated-away token reaches the session, its writes land, and it gets no token', async (t) => {
  const a = await node({ rotationGrace: 5_000 });
  t.teardown(() => a.close());
  const browser = new Browser(a.url);
  await browser.post('/login?user=grace');
  const { id } = (await browser.get('/me')).body as { id: string };
  const inFlight = browser.clone();
  await browser.post('/regenerate');
  t.not(browser.cookies.get('sid'), inFlight.cookies.get('sid'));

  const read = await inFlight.get('/me');
  t.deepEqual(read.body, { id, data: { name: 'grace' } });
  t.deepEqual(read.setCookies, [], 'neither the old token again nor a new one');
  const write = await inFlight.post('/set?late=yes');
  t.is(write.status, 200);
  t.deepEqual(write.setCookies, []);
  // A rotation asked for by an in-flight request rotates nothing and hands out nothing.
  const again = await inFlight.post('/regenerate');
  t.deepEqual(again.body, { token: null });
  t.deepEqual(again.setCookies, []);
  t.deepEqual((await browser.get('/me')).body, { id, data: { name: 'grace', late: 'yes' } });
  t.is(a.middleware.metrics.snapshot().stolenTokens, 0);
});

for (const [shape, query] of [
  ['merge', '?mode=merge'],
  ['strict', '?mode=strict'],
  ['lock', '?mode=lock'],
  ['a request transaction', '?transaction=request'],
] as const) {
  test(`${shape}: a rotated-away token presented after the grace period revokes the session on every node`, async (t) => {
    const a = await node();
    const b = await node();
    t.teardown(() => Promise.all([a.close(), b.close()]));
    const victim = new Browser(a.url);
    await victim.post(`/login${query}&user=victim-${shape.replace(/ /g, '-')}`);
    const { id } = (await victim.get('/me')).body as { id: string };
    const thief = new Browser(b.url);
    for (const [name, value] of victim.cookies) thief.cookies.set(name, value);
    // Both nodes have the session cached under the token the thief copied.
    t.like((await thief.get('/me')).body, { id });
    await victim.post(`/regenerate${query}`);
    t.like((await victim.get('/me')).body, { id }, 'cached on a under the new token');
    const stolen: unknown[] = [];
    b.app.on('session:stolen', (event: { id: string; userId: string }) =>
      stolen.push({ id: event.id, userId: event.userId }),
    );
    await sleep(GRACE + 100);

    const presented = await thief.get(`/me${query}`);
    t.is(presented.status, 200);
    t.deepEqual(presented.body, { id: null, data: {} }, 'the thief gets a fresh, empty session');
    t.like(await sessionById(id), { revoked_reason: 'token_reused' });
    // The victim's current token is dead on both nodes, cached or not.
    await until(async () => ((await victim.get('/me')).body as { id: unknown }).id === null, 2_000);
    const onB = new Browser(b.url);
    for (const [name, value] of victim.cookies) onB.cookies.set(name, value);
    t.deepEqual((await onB.get('/me')).body, { id: null, data: {} });
    await until(async () => stolen.length === 1, 2_000);
    t.deepEqual(stolen, [{ id, userId: `victim-${shape.replace(/ /g, '-')}` }]);
    t.is(b.middleware.metrics.snapshot().stolenTokens, 1);
  });
}

test('the audit log records both requests of a token reuse, their ip and user agent, never the token', async (t) => {
  const a = await node();
  t.teardown(() => a.close());
  const victim = new Browser(a.url);
  const rotatingHeaders = { 'x-forwarded-for': '192.0.2.10', 'user-agent': 'victim-browser/1.0' };
  await victim.request('/login?user=audited', { method: 'POST', headers: rotatingHeaders });
  const oldToken = victim.cookies.get('sid')!;
  const thief = victim.clone();
  const { id } = (await victim.get('/me')).body as { id: string };
  await victim.request('/regenerate', { method: 'POST', headers: rotatingHeaders });
  const newToken = victim.cookies.get('sid')!;
  await sleep(GRACE + 100);
  await thief.get('/me', { 'x-forwarded-for': '203.0.113.66', 'user-agent': 'thief-tool/2.0' });

  const { rows } = await admin.query(
    `SELECT kind, reason, user_id, host(ip) AS ip, user_agent, host(rotation_ip) AS rotation_ip,
            rotation_user_agent
       FROM sessions.event WHERE session_id = $1 AND kind IN ('token_reused', 'revoked') ORDER BY kind`,
    [id],
  );
  t.deepEqual(rows, [
    {
      kind: 'revoked',
      reason: 'token_reused',
      user_id: 'audited',
      ip: null,
      user_agent: null,
      rotation_ip: null,
      rotation_user_agent: null,
    },
    {
      kind: 'token_reused',
      reason: null,
      user_id: 'audited',
      ip: '203.0.113.66',
      user_agent: 'thief-tool/2.0',
      rotation_ip: '192.0.2.10',
      rotation_user_agent: 'victim-browser/1.0',
    },
  ]);
  const everything = JSON.stringify(
    (await admin.query('SELECT * FROM sessions.event WHERE session_id = $1', [id])).rows,
  );
  for (const secret of [oldToken, newToken, sha256(oldToken), sha256(newToken)]) {
    t.false(everything.includes(secret));
  }
});

test('previous tokens are kept as SHA-256 only, and go with their session', async (t) => {
  const a = await node({ rotationGrace: 5_000 });
  t.teardown(() => a.close());
  const browser = new Browser(a.url);
  await browser.post('/login?user=hashes');
  const first = browser.cookies.get('sid')!;
  await browser.post('/regenerate');
  const second = browser.cookies.get('sid')!;
  await browser.post('/regenerate');
  const { id } = (await browser.get('/me')).body as { id: string };
  const previous = async () =>
    (
      await admin.query(
        `SELECT encode(token_hash, 'hex') AS hash FROM sessions.previous_token
          WHERE session_id = $1 ORDER BY rotated_at`,
        [id],
      )
    ).rows.map((row) => row.hash);
  t.deepEqual(await previous(), [sha256(first), sha256(second)]);
  const dump = JSON.stringify(
    (await admin.query('SELECT * FROM sessions.previous_token WHERE session_id = $1', [id])).rows,
  );
  t.false(dump.includes(first) || dump.includes(second));
  // Logout deletes the session and its previous tokens with it.
  const logout = await browser.clone().request('/me', { method: 'GET' });
  t.is(logout.status, 200);
  await admin.query('DELETE FROM sessions.session WHERE id = $1', [id]);
  t.deepEqual(await previous(), []);
});

test('garbage collection removes a revoked session with its previous tokens', async (t) => {
  const a = await node({ rotationGrace: 0, gc: { interval: 3_600_000 } });
  t.teardown(() => a.close());
  const browser = new Browser(a.url);
  await browser.post('/login?user=gc');
  const thief = browser.clone();
  await browser.post('/regenerate');
  const { id } = (await browser.get('/me')).body as { id: string };
  await thief.get('/me');
  t.like(await sessionById(id), { revoked_reason: 'token_reused' });
  const count = async () =>
    Number(
      (
        await admin.query('SELECT count(*) FROM sessions.previous_token WHERE session_id = $1', [
          id,
        ])
      ).rows[0].count,
    );
  t.is(await count(), 1);
  await a.middleware.collectGarbage();
  t.is(await sessionById(id), undefined);
  t.is(await count(), 0);
});

test('a grace-period load is one statement on a miss, a rotation one statement, a cache hit none', async (t) => {
  const a = await node({ rotationGrace: 5_000 });
  const b = await node({ rotationGrace: 5_000 });
  t.teardown(() => Promise.all([a.close(), b.close()]));
  const browser = new Browser(a.url);
  await browser.post('/login?user=trips');
  await browser.get('/me');
  const inFlight = new Browser(b.url);
  for (const [name, value] of browser.cookies) inFlight.cookies.set(name, value);
  let before = a.middleware.metrics.snapshot();
  await browser.post('/regenerate');
  let after = a.middleware.metrics.snapshot();
  t.is(after.roundTrips - before.roundTrips, 1, 'the rotation: one statement');
  t.is(after.rotations - before.rotations, 1);

  before = b.middleware.metrics.snapshot();
  t.like((await inFlight.get('/me')).body, { data: { name: 'trips' } });
  after = b.middleware.metrics.snapshot();
  t.is(after.roundTrips - before.roundTrips, 1, 'the previous token resolved in the load itself');

  before = a.middleware.metrics.snapshot();
  await browser.get('/me');
  after = a.middleware.metrics.snapshot();
  t.is(after.roundTrips - before.roundTrips, 0, 'the new token from the cache');
});

test('a bearer token rotated away works in its grace period and revokes the session after it', async (t) => {
  const a = await node();
  t.teardown(() => a.close());
  const login = await new Browser(a.url).post('/login?user=api');
  const oldToken = (login.body as { token: string }).token;
  const rotated = await new Browser(a.url).request('/regenerate', {
    method: 'POST',
    headers: { authorization: `Bearer ${oldToken}` },
  });
  const newToken = (rotated.body as { token: string }).token;
  t.not(newToken, oldToken);
  const bearer = (token: string) =>
    new Browser(a.url).get('/me', { authorization: `Bearer ${token}` });
  t.like((await bearer(oldToken)).body, { data: { name: 'api' } });
  await sleep(GRACE + 100);
  t.deepEqual((await bearer(oldToken)).body, { id: null, data: {} });
  t.deepEqual((await bearer(newToken)).body, { id: null, data: {} });
});

test('periodic rotation: after rotateInterval the next request gets a new token, transparently', async (t) => {
  // Wide enough that a loaded machine cannot make the second request due already.
  const a = await node({ rotateInterval: 3_000, rotationGrace: 10_000 });
  t.teardown(() => a.close());
  const browser = new Browser(a.url);
  await browser.post('/login?user=periodic');
  const first = browser.cookies.get('sid');
  const { id } = (await browser.get('/me')).body as { id: string };
  t.is(browser.cookies.get('sid'), first, 'not due yet');
  const inFlight = browser.clone();
  await sleep(3_100);
  const due = await browser.get('/me');
  t.deepEqual(due.body, { id, data: { name: 'periodic' } });
  t.true(
    due.setCookies.some((line) => line.startsWith('sid=')),
    'the response carries the new cookie',
  );
  t.not(browser.cookies.get('sid'), first);
  const read = await inFlight.get('/me');
  t.deepEqual(read.body, { id, data: { name: 'periodic' } });
  t.deepEqual(read.setCookies, [], 'the old token in its grace period: no token');
  const { rows } = await admin.query(
    `SELECT count(*)::int AS rotated FROM sessions.event WHERE session_id = $1 AND kind = 'rotated'`,
    [id],
  );
  t.is(rows[0].rotated, 1, 'the periodic rotation (the login created the session)');
});

test('periodic rotation: parallel requests past the interval hand out exactly one new token', async (t) => {
  const a = await node({ rotateInterval: 300, rotationGrace: 5_000 });
  t.teardown(() => a.close());
  const browser = new Browser(a.url);
  await browser.post('/login?user=parallel');
  await browser.get('/me');
  await sleep(350);
  const before = a.middleware.metrics.snapshot();
  const responses = await Promise.all(Array.from({ length: 10 }, () => browser.clone().get('/me')));
  t.true(responses.every((response) => response.status === 200));
  const handedOut = new Set(
    responses.flatMap((response) => response.setCookies.filter((line) => line.startsWith('sid='))),
  );
  t.is(handedOut.size, 1, [...handedOut].join(' | '));
  t.is(a.middleware.metrics.snapshot().rotations - before.rotations, 1);
});

test('periodic rotation never rotates a bearer client behind its back', async (t) => {
  const a = await node({ rotateInterval: 100 });
  t.teardown(() => a.close());
  const login = await new Browser(a.url).post('/login?user=bearer-periodic');
  const token = (login.body as { token: string }).token;
  await sleep(150);
  const bearer = () => new Browser(a.url).get('/me', { authorization: `Bearer ${token}` });
  t.like((await bearer()).body, { data: { name: 'bearer-periodic' } });
  t.like((await bearer()).body, { data: { name: 'bearer-periodic' } });
  t.is(a.middleware.metrics.snapshot().rotations, 0);
});

test('periodic rotation goes through the same detection: the replaced token after its grace revokes', async (t) => {
  const a = await node({ rotateInterval: 200 });
  t.teardown(() => a.close());
  const browser = new Browser(a.url);
  await browser.post('/login?user=renewed');
  const { id } = (await browser.get('/me')).body as { id: string };
  const copy = browser.clone();
  await sleep(250);
  await browser.get('/me');
  t.not(browser.cookies.get('sid'), copy.cookies.get('sid'));
  await sleep(GRACE + 100);
  t.deepEqual((await copy.get('/me')).body, { id: null, data: {} });
  t.like(await sessionById(id), { revoked_reason: 'token_reused' });
});
