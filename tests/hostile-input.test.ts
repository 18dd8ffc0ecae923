import test from 'ava';
import type pg from 'pg';
import type { TestDatabase } from '../src/testing/index.js';
import { sessionRows, setupDatabase } from './helpers/database.js';
import { Browser, startApp, type TestApp } from './helpers/http.js';

// Client input that PostgreSQL cannot store must never become an untyped 500, and must
// never cost the data already stored.

let db: TestDatabase;
let admin: pg.Pool;
let app: TestApp;

test.before(async () => {
  ({ db, admin } = await setupDatabase());
  app = await startApp(
    {
      database: db.appUrl,
      // The query string decodes broken UTF-8 to U+FFFD; an app deriving tenants from
      // other input can still produce a lone surrogate, which this one does on request.
      tenant: (ctx) =>
        ctx.query.tenant === 'lone-surrogate' ? '\ud800x' : String(ctx.query.tenant ?? 'default'),
    },
    (router) => {
      router.get('/whoami', (ctx) => {
        ctx.body = { id: ctx.sessions.id, data: ctx.session?.toJSON() ?? null };
      });
      // The request body's keys and values go into the session as they are.
      router.post('/store', async (ctx) => {
        const chunks: Buffer[] = [];
        for await (const chunk of ctx.req) chunks.push(chunk as Buffer);
        Object.assign(ctx.session!, JSON.parse(Buffer.concat(chunks).toString('utf8') || '{}'));
        ctx.body = 'stored';
      });
      router.post('/nested', (ctx) => {
        let value: unknown = 'bottom';
        for (let level = 0; level < Number(ctx.query.depth); level++) value = { value };
        ctx.session!.deep = value;
        ctx.body = 'stored';
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

const forwardedCases: [string, string | null][] = [
  ['not-an-ip', null],
  ['999.1.1.1', null],
  ['fe80::1%eth0', 'fe80::1'],
  ['junk, 1.2.3.4', null],
  ['1.2.3.4, junk', '1.2.3.4'],
];

for (const [forwarded, expected] of forwardedCases) {
  test(`X-Forwarded-For "${forwarded}" still gets a session`, async (t) => {
    const browser = new Browser(app.url);
    const response = await browser.request('/store', {
      method: 'POST',
      body: { visited: true },
      headers: { 'x-forwarded-for': forwarded },
    });
    t.is(response.status, 200, JSON.stringify(response.body));
    const id = (await browser.get('/whoami')).body as { id: string };
    const row = await admin.query('SELECT host(ip) AS ip FROM sessions.session WHERE id = $1', [
      id.id,
    ]);
    // Only an address inet can hold is kept (Koa takes the first entry); the zone of a
    // link-local address is dropped.
    t.is(row.rows[0]?.ip ?? null, expected);
  });
}

test('a valid X-Forwarded-For address is stored as the creation ip', async (t) => {
  const browser = new Browser(app.url);
  await browser.request('/store', {
    method: 'POST',
    body: { visited: true },
    headers: { 'x-forwarded-for': '203.0.113.9' },
  });
  const { id } = (await browser.get('/whoami')).body as { id: string };
  const row = await admin.query('SELECT host(ip) AS ip FROM sessions.session WHERE id = $1', [id]);
  t.is(row.rows[0]?.ip, '203.0.113.9');
});

const unstorable: [string, string][] = [
  ['a NUL in a value', '{"name":"a\\u0000b"}'],
  ['a NUL in a key', '{"na\\u0000me":"x"}'],
  ['a NUL in a nested key', '{"profile":{"a\\u0000":1}}'],
  ['a lone surrogate in a value', '{"name":"\\ud800"}'],
  ['a lone low surrogate in a nested value', '{"list":["ok","\\udc00x"]}'],
];

for (const [name, body] of unstorable) {
  test(`${name} is SESSION_DATA_INVALID, and what was stored stays`, async (t) => {
    const browser = new Browser(app.url);
    t.is((await browser.post('/store', { kept: 'yes' })).status, 200);
    const response = await browser.request('/store', {
      method: 'POST',
      body: JSON.parse(body),
    });
    t.is(response.status, 500);
    t.like(response.body, { error: 'SESSION_DATA_INVALID' });
    t.like((await browser.get('/whoami')).body, { data: { kept: 'yes' } });
  });
}

test('a value nested 100,000 levels deep is SESSION_DATA_INVALID, not a RangeError', async (t) => {
  const browser = new Browser(app.url);
  await browser.post('/store', { kept: 'yes' });
  const response = await browser.post('/nested?depth=100000');
  t.is(response.status, 500);
  t.like(response.body, { error: 'SESSION_DATA_INVALID' });
  t.is((await browser.post('/nested?depth=60')).status, 200);
  t.like((await browser.get('/whoami')).body, { data: { kept: 'yes' } });
});

test('a tenant with NUL or an unpaired surrogate is SESSION_TENANT_INVALID (400)', async (t) => {
  for (const tenant of ['a%00b', 'lone-surrogate', 'x'.repeat(201)]) {
    const response = await new Browser(app.url).post(`/store?tenant=${tenant}`, { a: 1 });
    t.is(response.status, 400, tenant);
    t.like(response.body, { error: 'SESSION_TENANT_INVALID' });
  }
  t.deepEqual(await sessionRows(admin, 'x'.repeat(201)), []);
});
