import test from 'ava';
import type pg from 'pg';
import type { ConcurrencyMode } from '../src/index.js';
import type { TestDatabase } from '../src/testing/index.js';
import { setupDatabase } from './helpers/database.js';
import { Browser, startApp, type TestApp } from './helpers/http.js';

// A logout (or revocation) ends the session it loaded, whatever happened to its token
// meanwhile: a rotation that committed just before, or while, the logout ran.

let db: TestDatabase;
let admin: pg.Pool;
let app: TestApp;

test.before(async () => {
  ({ db, admin } = await setupDatabase());
  app = await startApp(
    {
      database: db.appUrl,
      poolSize: 20,
      gc: false,
      mode: (ctx) => String(ctx.query.mode ?? 'merge') as ConcurrencyMode,
      transaction: (ctx) => (ctx.query.transaction === 'request' ? 'request' : 'none'),
    },
    (router) => {
      router.post('/login', (ctx) => {
        ctx.sessions.bindUser(String(ctx.query.user));
        ctx.session!.name = String(ctx.query.user);
        ctx.body = 'ok';
      });
      router.post('/regenerate', (ctx) => {
        ctx.session!.regenerated = true;
        ctx.sessions.regenerate();
        ctx.body = 'ok';
      });
      router.post('/logout', (ctx) => {
        ctx.session = null;
        ctx.body = 'bye';
      });
      router.post('/revoke-self', async (ctx) => {
        ctx.body = await ctx.sessions.revoke(ctx.sessions.id!, 'signed_out');
      });
      router.get('/me', (ctx) => {
        ctx.body = { id: ctx.sessions.id, data: ctx.session?.toJSON() ?? null };
      });
    },
  );
});

test.after.always(async () => {
  await app?.close();
  await admin?.end();
  await db?.drop();
});

/** True while the session row exists and is neither revoked nor expired. */
async function isLive(id: string): Promise<boolean> {
  const { rows } = await admin.query(
    'SELECT 1 FROM sessions.session WHERE id = $1 AND revoked_at IS NULL AND expires_at > now()',
    [id],
  );
  return rows.length > 0;
}

async function login(user: string, query = ''): Promise<{ browser: Browser; id: string }> {
  const browser = new Browser(app.url);
  await browser.post(`/login?user=${user}${query}`);
  const { id } = (await browser.get('/me')).body as { id: string };
  return { browser, id };
}

const shapes: [string, string][] = [
  ['merge', '&mode=merge'],
  ['strict', '&mode=strict'],
  ['lock', '&mode=lock'],
  ['a request transaction', '&transaction=request'],
];

for (const [shape, query] of shapes) {
  test(`${shape}: a rotation followed by a logout that still carries the old cookie ends the session`, async (t) => {
    const { browser, id } = await login(`old-cookie-${shape.replace(/ /g, '-')}`, query);
    const oldCookie = browser.clone();
    t.is((await browser.post(`/regenerate?x=1${query}`)).status, 200);
    t.not(browser.cookies.get('sid'), oldCookie.cookies.get('sid'), 'the token was rotated');
    const logout = await oldCookie.post(`/logout?x=1${query}`);
    t.is(logout.status, 200);
    t.false(await isLive(id), 'the session ended');
    t.deepEqual(
      (await browser.get('/me')).body,
      { id: null, data: {} },
      'the new token is dead too',
    );
  });

  test(`${shape}: a rotation followed by a self-revocation with the old cookie ends the session`, async (t) => {
    const { browser, id } = await login(`revoke-${shape.replace(/ /g, '-')}`, query);
    const oldCookie = browser.clone();
    await browser.post(`/regenerate?x=1${query}`);
    const revoked = await oldCookie.post(`/revoke-self?x=1${query}`);
    t.is(revoked.status, 200);
    t.true(revoked.body as boolean);
    t.false(await isLive(id));
  });
}

for (const rotation of ['regenerate', 'login'] as const) {
  for (const [shape, query] of shapes) {
    test(`${shape}: 20 rounds of ${rotation} racing a logout with the old cookie never leave the session alive`, async (t) => {
      const alive: number[] = [];
      for (let round = 0; round < 20; round++) {
        const { browser, id } = await login(`race-${rotation}-${round}`, query);
        const oldCookie = browser.clone();
        const path =
          rotation === 'login' ? `/login?user=race-${rotation}-${round}` : '/regenerate?x=1';
        // Staggered by 0-19 ms, so the logout loads before, during and after the rotation.
        await Promise.all([
          browser.post(`${path}${query}`),
          new Promise((resolve) => setTimeout(resolve, round)).then(() =>
            oldCookie.post(`/logout?x=1${query}`),
          ),
        ]);
        if (await isLive(id)) alive.push(round);
      }
      t.deepEqual(alive, [], `rounds that left the session alive: ${alive.join(', ')}`);
    });
  }
}
