// Named devices (migration 9): ctx.sessions.rename(id, name) on the user's own sessions,
// returned by listForUser(); row-level security keeps other tenants out.
import test from 'ava';
import pg from 'pg';
import type { TestDatabase } from '../src/testing/index.js';
import { setupDatabase } from './helpers/database.js';
import { Browser, startApp, type TestApp } from './helpers/http.js';

let db: TestDatabase;
let admin: pg.Pool;
let server: TestApp;

test.before(async () => {
  ({ db, admin } = await setupDatabase());
  server = await startApp(
    { database: db.appUrl, gc: false },
    (router) => {
      router.post('/login', (ctx) => {
        ctx.sessions.bindUser(String(ctx.query.user));
        ctx.body = 'ok';
      });
      router.post('/rename', async (ctx) => {
        const { id, name } = (
          ctx.request as unknown as { body: { id: string; name: string | null } }
        ).body;
        ctx.body = { renamed: await ctx.sessions.rename(id, name) };
      });
      router.get('/devices', async (ctx) => {
        ctx.body = (await ctx.sessions.listForUser()).map(({ id, name, current }) => ({
          id,
          name,
          current,
        }));
      });
    },
    (app) => {
      // JSON bodies for /rename, without a body-parser dependency.
      app.use(async (ctx, next) => {
        if (ctx.is('application/json')) {
          let text = '';
          for await (const chunk of ctx.req) text += chunk;
          (ctx.request as { body?: unknown }).body = JSON.parse(text);
        }
        await next();
      });
    },
  );
});

test.after.always(async () => {
  await server?.close();
  await admin?.end();
  await db?.drop();
});

async function signedIn(user: string): Promise<{ browser: Browser; id: string }> {
  const browser = new Browser(server.url);
  await browser.post(`/login?user=${user}`);
  const devices = (await browser.get('/devices')).body as { id: string; current: boolean }[];
  return { browser, id: devices.find((device) => device.current)!.id };
}

test('a user names their sessions; listForUser returns the names, any Unicode, trimmed', async (t) => {
  const laptop = await signedIn('ann');
  const phone = await signedIn('ann');
  t.deepEqual(
    (await laptop.browser.post('/rename', { id: phone.id, name: '  Ann’s phone 📱 ' })).body,
    {
      renamed: true,
    },
  );
  t.deepEqual((await laptop.browser.post('/rename', { id: laptop.id, name: 'Work laptop' })).body, {
    renamed: true,
  });
  const devices = (await phone.browser.get('/devices')).body as { id: string; name: string }[];
  t.deepEqual(Object.fromEntries(devices.map((device) => [device.id, device.name])), {
    [laptop.id]: 'Work laptop',
    [phone.id]: 'Ann’s phone 📱',
  });
  // null clears it.
  await laptop.browser.post('/rename', { id: laptop.id, name: null });
  const { rows } = await admin.query('SELECT device_name FROM sessions.session WHERE id = $1', [
    laptop.id,
  ]);
  t.is(rows[0].device_name, null);
});

test('another user’s session, an unknown id or a wrong name is never renamed', async (t) => {
  const owner = await signedIn('bea');
  const other = await signedIn('carl');
  t.deepEqual((await other.browser.post('/rename', { id: owner.id, name: 'mine' })).body, {
    renamed: false,
  });
  t.deepEqual((await other.browser.post('/rename', { id: 'not-a-uuid', name: 'x' })).body, {
    renamed: false,
  });
  for (const name of ['', '   ', 'x'.repeat(101), 'a\u0000b', '\ud800']) {
    const answer = await owner.browser.post('/rename', { id: owner.id, name });
    t.is(answer.status, 500, JSON.stringify(name));
    t.like(answer.body, { error: 'SESSION_DATA_INVALID' });
  }
  t.deepEqual(
    (await owner.browser.post('/rename', { id: owner.id, name: '💻'.repeat(100) })).body,
    {
      renamed: true,
    },
  );
  const { rows } = await admin.query('SELECT device_name FROM sessions.session WHERE id = $1', [
    owner.id,
  ]);
  t.is(rows[0].device_name, '💻'.repeat(100));
});

test('row-level security: the app role renames no session of another tenant', async (t) => {
  const owner = await signedIn('dora');
  const client = new pg.Client(db.appUrl);
  await client.connect();
  try {
    await client.query('BEGIN');
    await client.query(`SELECT set_config('sessions.tenant', 'another tenant', true)`);
    const result = await client.query(
      `UPDATE sessions.session SET device_name = 'taken' WHERE id = $1 RETURNING id`,
      [owner.id],
    );
    await client.query('COMMIT');
    t.is(result.rowCount, 0);
  } finally {
    await client.end();
  }
  const { rows } = await admin.query('SELECT device_name FROM sessions.session WHERE id = $1', [
    owner.id,
  ]);
  t.is(rows[0].device_name, null);
});
