import { randomBytes } from 'node:crypto';
import test from 'ava';
import Keygrip from 'keygrip';
import pg from 'pg';
import type { TestDatabase } from '../src/testing/index.js';
import { sessionRows, setupDatabase } from './helpers/database.js';
import { Browser, startApp, type TestApp } from './helpers/http.js';

let db: TestDatabase;
let admin: pg.Pool;
let app: TestApp;

test.before(async () => {
  ({ db, admin } = await setupDatabase());
  app = await startApp(
    { database: db.appUrl, bearer: true, tenant: (ctx) => ctx.get('x-tenant') || 'default' },
    (router) => {
      router.get('/whoami', (ctx) => {
        ctx.body = { id: ctx.sessions.id, data: ctx.session?.toJSON() ?? null };
      });
      router.post('/login', (ctx) => {
        ctx.sessions.bindUser(String(ctx.query.user));
        ctx.session!.name = String(ctx.query.user);
        ctx.body = { token: ctx.sessions.token };
      });
      router.post('/proto', (ctx) => {
        ctx.session!.payload = JSON.parse('{"__proto__": {"polluted": true}, "ok": 1}');
        ctx.body = 'ok';
      });
    },
    (koa) => {
      koa.proxy = true;
    },
  );
});

test.after.always(async () => {
  await app?.close();
  await admin?.end();
  await db?.drop();
});

test('a tampered cookie signature gives a fresh session, never an error', async (t) => {
  const browser = new Browser(app.url);
  await browser.post('/login?user=alice');
  browser.cookies.set('sid.sig', 'AAAAAAAAAAAAAAAAAAAAAAAAAAA');
  const response = await browser.get('/whoami');
  t.is(response.status, 200);
  t.deepEqual(response.body, { id: null, data: {} });
});

test('app.keys rotation: a cookie signed with an older key still works and is re-signed with the new one', async (t) => {
  const browser = new Browser(app.url);
  await browser.post('/login?user=rotating');
  const token = browser.cookies.get('sid')!;
  // As if this cookie had been signed before 'test key one' was put in front.
  browser.cookies.set('sid.sig', new Keygrip(['test key two']).sign(`sid=${token}`));
  const response = await browser.get('/whoami');
  t.is(response.status, 200);
  t.like(response.body, { data: { name: 'rotating' } });
  t.is(browser.cookies.get('sid.sig'), new Keygrip(['test key one']).sign(`sid=${token}`));
  t.like((await browser.get('/whoami')).body, { data: { name: 'rotating' } });

  // Signed by a key the app no longer has: not accepted.
  browser.cookies.set('sid.sig', new Keygrip(['a retired key']).sign(`sid=${token}`));
  t.deepEqual((await browser.get('/whoami')).body, { id: null, data: {} });
});

test('a Keygrip instance as app.keys (its own algorithm) signs and verifies the session cookie', async (t) => {
  const keys = new Keygrip(['instance key'], 'sha256');
  const own = await startApp(
    { database: db.appUrl },
    (router) => {
      router.post('/login', (ctx) => {
        ctx.session!.name = String(ctx.query.user);
        ctx.body = 'ok';
      });
      router.get('/whoami', (ctx) => {
        ctx.body = { data: ctx.session?.toJSON() ?? null };
      });
    },
    (koa) => {
      koa.keys = keys as unknown as string[];
    },
  );
  t.teardown(() => own.close());
  const browser = new Browser(own.url);
  await browser.post('/login?user=grip');
  const token = browser.cookies.get('sid')!;
  t.is(browser.cookies.get('sid.sig'), keys.sign(`sid=${token}`), 'signed with SHA-256');
  t.deepEqual((await browser.get('/whoami')).body, { data: { name: 'grip' } });
  // The default SHA-1 signature with the same secret is not this app's signature.
  browser.cookies.set('sid.sig', new Keygrip(['instance key']).sign(`sid=${token}`));
  t.deepEqual((await browser.get('/whoami')).body, { data: {} });
});

test('1,000 random cookie values give fresh sessions and no 5xx', async (t) => {
  const keys = new Keygrip(['test key one', 'test key two']);
  const statuses = new Map<number, number>();
  const values: string[] = [];
  for (let index = 0; index < 1000; index++) {
    const kind = index % 4;
    if (kind === 0) values.push(randomBytes(32).toString('base64url'));
    else if (kind === 1) values.push(randomBytes(1 + (index % 90)).toString('base64'));
    else if (kind === 2) values.push(encodeURIComponent(randomBytes(24).toString('latin1')));
    else values.push(`${'A'.repeat(index % 200)}'";--\\`);
  }
  for (let start = 0; start < values.length; start += 50) {
    await Promise.all(
      values.slice(start, start + 50).map(async (value, offset) => {
        const browser = new Browser(app.url);
        browser.cookies.set('sid', value);
        // Half of them correctly signed, so the token check itself is exercised.
        if ((start + offset) % 2 === 0) browser.cookies.set('sid.sig', keys.sign(`sid=${value}`));
        const response = await browser.get('/whoami');
        statuses.set(response.status, (statuses.get(response.status) ?? 0) + 1);
        if (response.status === 200) t.deepEqual(response.body, { id: null, data: {} });
      }),
    );
  }
  t.deepEqual([...statuses], [[200, 1000]]);
});

test('a well-formed, correctly signed token that was never issued is not adopted', async (t) => {
  const keys = new Keygrip(['test key one']);
  const chosen = randomBytes(32).toString('base64url');
  const browser = new Browser(app.url);
  browser.cookies.set('sid', chosen);
  browser.cookies.set('sid.sig', keys.sign(`sid=${chosen}`));
  const response = await browser.post('/login?user=mallory');
  t.is(response.status, 200);
  t.not(browser.cookies.get('sid'), chosen, 'the server issued its own token');
  const hashes = (await sessionRows(admin)).map((row) => row.token_hash);
  const { createHash } = await import('node:crypto');
  t.false(hashes.includes(createHash('sha256').update(chosen).digest('hex')));
});

test('login rotates the token (no session fixation)', async (t) => {
  const browser = new Browser(app.url);
  await browser.post('/login?user=bob');
  const before = browser.cookies.get('sid');
  const id = ((await browser.get('/whoami')).body as { id: string }).id;
  await browser.post('/login?user=bob');
  t.not(browser.cookies.get('sid'), before);
  t.is(((await browser.get('/whoami')).body as { id: string }).id, id);
});

test('over HTTPS (behind a proxy) the cookie is Secure with the __Host- prefix', async (t) => {
  const browser = new Browser(app.url);
  const response = await browser.request('/login?user=carol', {
    method: 'POST',
    headers: { 'x-forwarded-proto': 'https' },
  });
  const cookie = response.setCookies.find((line) => line.startsWith('__Host-sid='));
  t.truthy(cookie, response.setCookies.join(' | '));
  t.regex(cookie!, /secure/i);
  t.regex(cookie!, /httponly/i);
  t.notRegex(cookie!, /domain=/i);
  const read = await browser.request('/whoami', { headers: { 'x-forwarded-proto': 'https' } });
  t.deepEqual((read.body as { data: unknown }).data, { name: 'carol' });
});

test('a bearer token works like the cookie, and a bad one gives a fresh session', async (t) => {
  const browser = new Browser(app.url);
  const login = await browser.post('/login?user=api');
  const token = (login.body as { token: string }).token;
  t.regex(token, /^[A-Za-z0-9_-]{65}$/);
  const client = new Browser(app.url);
  const read = await client.get('/whoami', { authorization: `Bearer ${token}` });
  t.deepEqual((read.body as { data: unknown }).data, { name: 'api' });
  t.deepEqual(read.setCookies, [], 'bearer clients get no cookie');
  const bad = await client.get('/whoami', { authorization: 'Bearer not-a-token' });
  t.is(bad.status, 200);
  t.deepEqual(bad.body, { id: null, data: {} });
});

test('a cookie from tenant A finds nothing on tenant B, and tenant B cannot touch it', async (t) => {
  const browser = new Browser(app.url);
  await browser.request('/login?user=tenant-a-user', {
    method: 'POST',
    headers: { 'x-tenant': 'A' },
  });
  const onA = await browser.request('/whoami', { headers: { 'x-tenant': 'A' } });
  t.deepEqual((onA.body as { data: unknown }).data, { name: 'tenant-a-user' });
  const onB = await browser.request('/whoami', { headers: { 'x-tenant': 'B' } });
  t.deepEqual(onB.body, { id: null, data: {} });
  const rowsA = await sessionRows(admin, 'A');
  t.is(rowsA.length, 1);
  t.is(rowsA[0].version, 1, 'the row on tenant A was not changed by the visit on tenant B');
});

test('__proto__ inside session data cannot pollute prototypes', async (t) => {
  const browser = new Browser(app.url);
  const response = await browser.post('/proto');
  t.is(response.status, 200);
  const read = await browser.get('/whoami');
  t.is(read.status, 200);
  t.is(({} as Record<string, unknown>).polluted, undefined);
  t.deepEqual((read.body as { data: { payload: Record<string, unknown> } }).data.payload.ok, 1);
});

test('sessions.lookup_session obeys row-level security: naming another tenant than the transaction finds nothing', async (t) => {
  const browser = new Browser(app.url);
  await browser.request('/login?user=rls-user', {
    method: 'POST',
    headers: { 'x-tenant': 'rls' },
  });
  const [row] = await sessionRows(admin, 'rls');
  if (!row) throw new Error('the login stored no session');
  const client = new pg.Client(db.appUrl);
  await client.connect();
  try {
    const lookup = async (setting: string, named: string) => {
      const results = (await client.query(
        `BEGIN; SELECT set_config('sessions.tenant', ${pg.escapeLiteral(setting)}, true);
         SELECT id FROM sessions.lookup_session(${pg.escapeLiteral(named)},
           '\\x${row.token_hash}'::bytea, make_interval(secs => 60), NULL); COMMIT`,
      )) as unknown as pg.QueryResult[];
      return results[2]?.rows ?? [];
    };
    t.deepEqual(await lookup('rls', 'rls'), [{ id: row.id }], 'its own tenant finds it');
    t.deepEqual(await lookup('other', 'rls'), [], 'under another tenant the row is invisible');
    t.deepEqual(await lookup('other', 'other'), [], 'and it is no session of that tenant');
  } finally {
    await client.end();
  }
});
