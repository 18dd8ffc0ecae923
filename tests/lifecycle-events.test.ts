// Lifecycle events on every node (migration 11): process A changes sessions over HTTP;
// process B, another app process on the same database, hears each change once through
// its LISTEN connection and emits typed events on middleware.events, even after a
// listener of its own threw and after its LISTEN connection was cut and came back.
import { type ChildProcess, spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import test from 'ava';
import type pg from 'pg';
import type { TestDatabase } from '../src/testing/index.js';
import { setupDatabase } from './helpers/database.js';
import { Browser, startApp, type TestApp } from './helpers/http.js';

let db: TestDatabase;
let admin: pg.Pool;
let a: TestApp;

interface Heard {
  type: string;
  tenantId?: string;
  sessionId?: string;
  userId?: string | null;
  reason?: string | null;
  at?: string;
  pid?: number;
}

/** Process B: the middleware started, every lifecycle event printed as a JSON line. */
const PROCESS_B = `
  import { LIFECYCLE_EVENTS, sessions } from ${JSON.stringify(fileURLToPath(new URL('../src/index.ts', import.meta.url)))};
  const middleware = sessions({ database: process.env.URL, gc: false });
  const print = (line) => process.stdout.write(JSON.stringify(line) + '\\n');
  // A listener that throws comes first: the one after it, and the connection, carry on.
  middleware.events.on('session:revoked', () => { throw new Error('a listener of the app failed'); });
  for (const type of LIFECYCLE_EVENTS) middleware.events.on(type, (event) => print(event));
  middleware.events.on('cache:listener:up', () => print({ type: 'up', pid: middleware.listenerPid }));
  middleware.events.on('cache:listener:down', () => print({ type: 'down' }));
  await middleware.start();
  process.stdin.on('end', () => middleware.close().then(() => process.exit(0)));
  process.stdin.resume();
`;

let b: ChildProcess;
const heard: Heard[] = [];
const waiters: (() => void)[] = [];

test.before(async () => {
  ({ db, admin } = await setupDatabase());
  a = await startApp({ database: db.appUrl, gc: false, rotationGrace: 1 }, (router) => {
    router.post('/login', (ctx) => {
      ctx.sessions.bindUser(String(ctx.query.user));
      ctx.body = 'ok';
    });
    router.post('/regenerate', (ctx) => {
      ctx.sessions.regenerate();
      ctx.body = 'ok';
    });
    router.post('/logout', (ctx) => {
      ctx.session = null;
      ctx.body = 'bye';
    });
    router.post('/revoke', async (ctx) => {
      ctx.body = { revoked: await ctx.sessions.revoke(String(ctx.query.id), 'suspicious') };
    });
    router.get('/id', (ctx) => {
      ctx.body = { id: ctx.sessions.id };
    });
  });
  b = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', PROCESS_B], {
    env: { ...process.env, URL: db.appUrl },
    stdio: ['pipe', 'pipe', 'inherit'],
  });
  createInterface({ input: b.stdout! }).on('line', (line) => {
    heard.push(JSON.parse(line) as Heard);
    for (const wake of waiters.splice(0)) wake();
  });
  await until((all) => all.some((event) => event.type === 'up'));
});

test.after.always(async () => {
  b?.stdin?.end();
  await new Promise((resolve) =>
    b?.exitCode !== null ? resolve(undefined) : b.once('exit', resolve),
  );
  await a?.close();
  await admin?.end();
  await db?.drop();
});

/** Waits (at most 10 s) until what B heard satisfies `done`. */
async function until(done: (all: readonly Heard[]) => boolean): Promise<void> {
  const deadline = Date.now() + 10_000;
  while (!done(heard)) {
    if (Date.now() > deadline) throw new Error(`process B heard only ${JSON.stringify(heard)}`);
    await new Promise<void>((resolve) => {
      waiters.push(resolve);
      setTimeout(resolve, 100);
    });
  }
}

/** Signs `browser` in as `user` over HTTP; the new session's id (known once it is saved). */
async function signIn(browser: Browser, user: string): Promise<{ id: string }> {
  await browser.post(`/login?user=${user}`);
  return (await browser.get('/id')).body as { id: string };
}

const about = (sessionId: string, type: string) =>
  heard.filter((event) => event.sessionId === sessionId && event.type === type);

test.serial(
  'created, rotated, revoked and ended reach the other process once each, with user, reason and time',
  async (t) => {
    const browser = new Browser(a.url);
    const { id } = await signIn(browser, 'ada');
    await until(() => about(id, 'session:created').length === 1);
    t.like(about(id, 'session:created')[0], { tenantId: 'default', userId: 'ada', reason: null });
    t.false(Number.isNaN(Date.parse(about(id, 'session:created')[0]!.at!)));

    await browser.post('/regenerate');
    await until(() => about(id, 'session:rotated').length === 1);

    const other = new Browser(a.url);
    const { id: otherId } = await signIn(other, 'bob');
    await browser.post(`/revoke?id=${otherId}`);
    await until(() => about(otherId, 'session:revoked').length === 1);
    t.like(about(otherId, 'session:revoked')[0], { userId: 'bob', reason: 'suspicious' });

    await browser.post('/logout');
    await until(() => about(id, 'session:ended').length === 1);
    t.like(about(id, 'session:ended')[0], { userId: 'ada', reason: 'destroyed' });

    // Nothing twice: one more change, and the earlier ones are still heard once.
    const third = new Browser(a.url);
    const { id: thirdId } = await signIn(third, 'cyd');
    await until(() => about(thirdId, 'session:created').length === 1);
    for (const [session, type] of [
      [id, 'session:created'],
      [id, 'session:rotated'],
      [otherId, 'session:revoked'],
      [id, 'session:ended'],
    ] as const) {
      t.is(about(session, type).length, 1, `${type} of ${session}`);
    }
  },
);

test.serial(
  'a stolen token (presented after its grace period) is heard as session:stolen',
  async (t) => {
    const browser = new Browser(a.url);
    const { id } = await signIn(browser, 'eve');
    const thief = browser.clone();
    await browser.post('/regenerate');
    await new Promise((resolve) => setTimeout(resolve, 50)); // past rotationGrace (1 ms)
    await thief.get('/id');
    await until(() => about(id, 'session:stolen').length === 1);
    t.like(about(id, 'session:stolen')[0], { userId: 'eve', reason: 'token_reused' });
    t.is(about(id, 'session:revoked').length, 0, 'one event for one change');
  },
);

test.serial(
  'expiry collected by garbage collection is heard as session:ended (expired)',
  async (t) => {
    const browser = new Browser(a.url);
    const { id } = await signIn(browser, 'fay');
    await admin.query(
      `UPDATE sessions.session SET idle_expires_at = now() - interval '1 minute' WHERE id = $1`,
      [id],
    );
    await admin.query('SELECT sessions.gc_batch(1000)');
    await until(() => about(id, 'session:ended').length === 1);
    t.like(about(id, 'session:ended')[0], { userId: 'fay', reason: 'expired' });
  },
);

test.serial(
  'after its LISTEN connection is cut, process B reconnects and hears changes again',
  async (t) => {
    const up = heard.filter((event) => event.type === 'up');
    const pid = up.at(-1)!.pid!;
    await admin.query('SELECT pg_terminate_backend($1)', [pid]);
    await until((all) => all.filter((event) => event.type === 'up').length > up.length);
    t.true(heard.some((event) => event.type === 'down'));
    const browser = new Browser(a.url);
    const { id } = await signIn(browser, 'gus');
    await until(() => about(id, 'session:created').length === 1);
    t.like(about(id, 'session:created')[0], { userId: 'gus' });
  },
);
