import { createHash } from 'node:crypto';
import test from 'ava';
import type pg from 'pg';
import type { TestDatabase } from '../src/testing/index.js';
import { sessionIdOf } from '../src/token.js';
import { sessionRows, setupDatabase } from './helpers/database.js';
import { Browser, startApp, type TestApp } from './helpers/http.js';

let db: TestDatabase;
let admin: pg.Pool;
let app: TestApp;

test.before(async () => {
  ({ db, admin } = await setupDatabase());
  app = await startApp({ database: db.appUrl, touchInterval: 0 }, (router) => {
    router.get('/get', (ctx) => {
      ctx.body = {
        data: ctx.session?.toJSON() ?? null,
        isNew: ctx.session?.isNew,
        id: ctx.sessions.id,
      };
    });
    router.post('/set', (ctx) => {
      Object.assign(ctx.session!, ctx.request.query);
      ctx.body = { id: ctx.sessions.id };
    });
    router.post('/delete-key', (ctx) => {
      delete (ctx.session as Record<string, unknown>)[String(ctx.query.key)];
      ctx.body = 'ok';
    });
    router.post('/push', (ctx) => {
      const session = ctx.session as unknown as { cart?: string[] };
      session.cart ??= [];
      session.cart.push(String(ctx.query.item));
      ctx.body = session.cart;
    });
    router.post('/replace', (ctx) => {
      ctx.session = { replaced: true };
      ctx.body = 'ok';
    });
    router.post('/logout', (ctx) => {
      ctx.session = null;
      ctx.body = 'bye';
    });
    router.post('/regenerate', (ctx) => {
      ctx.sessions.regenerate();
      ctx.body = 'ok';
    });
    router.get('/touch-nothing', (ctx) => {
      ctx.body = 'nothing';
    });
  });
});

test.after.always(async () => {
  await app?.close();
  await admin?.end();
  await db?.drop();
});

function tokenOf(browser: Browser): string | undefined {
  return browser.cookies.get('sid');
}

function hashHex(token: string): string {
  return createHash('sha256').update(token).digest('hex');
}

test.serial('a request that never writes creates neither a cookie nor a row', async (t) => {
  const browser = new Browser(app.url);
  const before = (await sessionRows(admin)).length;
  const response = await browser.get('/get');
  t.is(response.status, 200);
  t.deepEqual(response.setCookies, []);
  t.deepEqual(response.body, { data: {}, isNew: true, id: null });
  t.is((await sessionRows(admin)).length, before);
});

test('create, read, update and destroy over HTTP', async (t) => {
  const browser = new Browser(app.url);
  const created = await browser.post('/set?name=ada&role=admin');
  t.is(created.status, 200);
  const token = tokenOf(browser);
  t.truthy(token);
  t.regex(token!, /^[A-Za-z0-9_-]{65}$/);
  const read = await browser.get('/get');
  t.deepEqual((read.body as { data: unknown }).data, { name: 'ada', role: 'admin' });
  t.false((read.body as { isNew: boolean }).isNew);
  const id = (read.body as { id: string }).id;
  t.regex(id, /^[0-9a-f-]{36}$/);
  t.is(sessionIdOf(token!), id, 'the token names its session');

  await browser.post('/set?name=grace');
  await browser.post('/delete-key?key=role');
  const updated = await browser.get('/get');
  t.deepEqual((updated.body as { data: unknown }).data, { name: 'grace' });

  const [row] = (await sessionRows(admin)).filter((r) => r.id === id);
  t.is(row.token_hash, hashHex(token!), 'only the SHA-256 of the token is stored');
  t.is(row.version, 3, 'two updates after the insert');

  const logout = await browser.post('/logout');
  t.is(logout.status, 200);
  t.is(tokenOf(browser), undefined, 'the cookie is cleared');
  t.false(
    (await sessionRows(admin)).some((r) => r.id === id),
    'the row is deleted',
  );
});

test('nested mutation and whole replacement are saved', async (t) => {
  const browser = new Browser(app.url);
  await browser.post('/push?item=apple');
  await browser.post('/push?item=pear');
  t.deepEqual(((await browser.get('/get')).body as { data: unknown }).data, {
    cart: ['apple', 'pear'],
  });
  await browser.post('/replace');
  t.deepEqual(((await browser.get('/get')).body as { data: unknown }).data, { replaced: true });
});

test('the cookie is HttpOnly, SameSite=Lax, path /, signed, and not Secure over plain HTTP', async (t) => {
  const browser = new Browser(app.url);
  const response = await browser.post('/set?a=1');
  const sid = response.setCookies.find((line) => line.startsWith('sid='));
  const signature = response.setCookies.find((line) => line.startsWith('sid.sig='));
  t.truthy(sid);
  t.truthy(signature, 'signed with app.keys');
  t.regex(sid!, /httponly/i);
  t.regex(sid!, /samesite=lax/i);
  t.regex(sid!, /path=\//i);
  t.regex(sid!, /expires=/i);
  t.notRegex(sid!, /secure/i);
});

test('an unchanged session is not rewritten', async (t) => {
  const browser = new Browser(app.url);
  await browser.post('/set?a=1');
  const id = ((await browser.get('/get')).body as { id: string }).id;
  const before = (await sessionRows(admin)).find((row) => row.id === id);
  const response = await browser.get('/touch-nothing');
  t.deepEqual(response.setCookies, []);
  const after = (await sessionRows(admin)).find((row) => row.id === id);
  t.is(after.version, before.version);
  t.is(after.data.a, '1');
});

test('regenerate keeps the data and the id, changes the token; the old token only finishes in-flight work', async (t) => {
  const browser = new Browser(app.url);
  await browser.post('/set?user=42');
  const before = await browser.get('/get');
  const oldCookies = browser.clone();
  const oldToken = tokenOf(browser);
  await browser.post('/regenerate');
  const newToken = tokenOf(browser);
  t.not(newToken, oldToken);
  const after = await browser.get('/get');
  t.deepEqual((after.body as { data: unknown }).data, { user: '42' });
  t.is((after.body as { id: string }).id, (before.body as { id: string }).id);
  // Within the grace period (rotationGrace) the old token still reaches the session, as
  // a request in flight would, but the response hands out no token at all; after it, its
  // use revokes the session (tests/token-theft.test.ts).
  const inFlight = await oldCookies.get('/get');
  t.deepEqual(inFlight.body, after.body);
  t.deepEqual(inFlight.setCookies, []);
});

test('a slow request that started before logout cannot bring the session back', async (t) => {
  const slowApp = await startApp({ database: db.appUrl }, (router) => {
    router.post('/slow', async (ctx) => {
      const session = ctx.session!;
      await new Promise((resolve) => setTimeout(resolve, 400));
      session.late = 'write';
      ctx.body = 'done';
    });
    router.post('/set', (ctx) => {
      ctx.session!.a = 1;
      ctx.body = 'ok';
    });
    router.get('/id', (ctx) => {
      ctx.body = ctx.sessions.id;
    });
    router.post('/logout', (ctx) => {
      ctx.session = null;
      ctx.body = 'bye';
    });
  });
  t.teardown(() => slowApp.close());
  const browser = new Browser(slowApp.url);
  await browser.post('/set');
  const id = (await browser.get('/id')).body as string;
  t.regex(id, /^[0-9a-f-]{36}$/);
  t.true((await sessionRows(admin)).some((row) => row.id === id));
  const slow = browser.clone().post('/slow');
  await new Promise((resolve) => setTimeout(resolve, 100));
  await browser.post('/logout');
  const late = await slow;
  t.is(late.status, 200);
  t.false(
    (await sessionRows(admin)).some((row) => row.id === id),
    'still destroyed',
  );
});
