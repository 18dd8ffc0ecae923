// A user's sessions exported and erased (migration 10, `pg-sessions export` and
// `pg-sessions erase`): after erasure no row of any table holds the user's id, address
// or user agent; the reporting views keep working; the app role can do neither.
import test from 'ava';
import pg from 'pg';
import type { TestDatabase } from '../src/testing/index.js';
import { runCli } from './helpers/cli.js';
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
        ctx.session!.cart = ['tea'];
        ctx.body = 'ok';
      });
      router.post('/regenerate', (ctx) => {
        ctx.sessions.regenerate();
        ctx.body = 'ok';
      });
      router.get('/me', (ctx) => {
        ctx.body = { user: ctx.sessions.userId };
      });
    },
    (app) => {
      app.proxy = true; // the test names each client's address in X-Forwarded-For
    },
  );
});

test.after.always(async () => {
  await server?.close();
  await admin?.end();
  await db?.drop();
});

/** A browser of `user` from `ip` with its own user agent, signed in and rotated once. */
async function device(user: string, ip: string, agent: string): Promise<Browser> {
  const browser = new Browser(server.url);
  const headers = { 'x-forwarded-for': ip, 'user-agent': agent };
  await browser.request(`/login?user=${user}`, { method: 'POST', headers });
  await browser.request('/regenerate', { method: 'POST', headers });
  return browser;
}

/** Every text rendering of every row of the schema's tables that mentions `needle`. */
async function rowsMentioning(needle: string): Promise<string[]> {
  const found: string[] = [];
  for (const table of ['session', 'previous_token', 'event']) {
    const { rows } = await admin.query(
      `SELECT t::text AS row FROM sessions.${table} AS t WHERE strpos(t::text, $1) > 0`,
      [needle],
    );
    for (const row of rows) found.push(`${table}: ${row.row}`);
  }
  return found;
}

test.serial('export prints the user’s sessions and events, never a token hash', async (t) => {
  await device('zoe', '203.0.113.7', 'ZoeBrowser/1.0');
  const result = await runCli(['export', '--user', 'zoe', '--tenant', 'default', '--url', db.url]);
  t.is(result.code, 0, result.stderr);
  const exported = JSON.parse(result.stdout) as {
    user: string;
    sessions: { ip: string; user_agent: string; data: unknown }[];
    events: { kind: string }[];
  };
  t.is(exported.user, 'zoe');
  t.is(exported.sessions.length, 1);
  t.like(exported.sessions[0], {
    ip: '203.0.113.7',
    user_agent: 'ZoeBrowser/1.0',
    data: { cart: ['tea'] },
  });
  t.true(exported.events.some((event) => event.kind === 'created'));
  t.true(exported.events.some((event) => event.kind === 'rotated'));
  t.notRegex(result.stdout, /token_hash|\\\\x[0-9a-f]{64}/);
});

test.serial(
  'erase: nothing names the user any more, other users are untouched, the views still work',
  async (t) => {
    const [laptop, phone] = [
      await device('yuri', '198.51.100.23', 'YuriLaptop/2.0'),
      await device('yuri', '198.51.100.24', 'YuriPhone/3.0'),
    ];
    const bystander = await device('xena', '192.0.2.99', 'XenaBrowser/4.0');
    t.true((await rowsMentioning('yuri')).length > 0, 'the user is in the tables before');

    const result = await runCli([
      'erase',
      '--user',
      'yuri',
      '--tenant',
      'default',
      '--pseudonym',
      'erased-user-1',
      '--url',
      db.url,
    ]);
    t.is(result.code, 0, result.stderr);
    t.regex(result.stdout, /2 sessions deleted, \d+ events rewritten as erased-user-1/);

    for (const needle of ['yuri', '198.51.100.23', '198.51.100.24', 'YuriLaptop', 'YuriPhone']) {
      t.deepEqual(await rowsMentioning(needle), [], needle);
    }
    const { rows: erased } = await admin.query(
      `SELECT count(*)::int AS n FROM sessions.event WHERE kind = 'erased' AND user_id = 'erased-user-1'`,
    );
    t.is(erased[0].n, 2);
    // Their cookies reach nothing; the bystander's still works.
    t.deepEqual((await laptop.get('/me')).body, { user: null });
    t.deepEqual((await phone.get('/me')).body, { user: null });
    t.deepEqual((await bystander.get('/me')).body, { user: 'xena' });
    t.true((await rowsMentioning('XenaBrowser')).length > 0);

    const auditor = new pg.Client(db.auditorUrl);
    await auditor.connect();
    try {
      const { rows: views } = await auditor.query(
        `SELECT table_name FROM information_schema.views WHERE table_schema = 'sessions'`,
      );
      t.true(views.length > 0);
      for (const { table_name: view } of views) {
        await t.notThrowsAsync(auditor.query(`SELECT * FROM sessions.${view}`), view);
      }
    } finally {
      await auditor.end();
    }
  },
);

test.serial('the app role can neither export nor erase', async (t) => {
  await device('wendy', '192.0.2.5', 'WendyBrowser/1.0');
  const app = new pg.Client(db.appUrl);
  await app.connect();
  try {
    for (const call of [
      `SELECT sessions.export_user('default', 'wendy')`,
      `SELECT * FROM sessions.erase_user('default', 'wendy')`,
    ]) {
      const error = await t.throwsAsync(app.query(call));
      t.is((error as { code?: string }).code, '42501', call);
    }
  } finally {
    await app.end();
  }
  t.true((await rowsMentioning('wendy')).length > 0, 'nothing was erased');
  const cli = await runCli(['erase', '--user', 'wendy', '--tenant', 'default', '--url', db.appUrl]);
  t.is(cli.code, 2);
  t.regex(cli.stderr, /sessions_admin/);
});
