// koa-passport 6 (passport 0.6's session manager) with passport-local, over real HTTP, on
// pg-sessions with its defaults and on koa-session 7. passport ≥ 0.6 logs in with
// `req.session.regenerate(cb)` then `req.session.save(cb)`, and logs out with
// `req.session.save(cb)` then `req.session.regenerate(cb)`: a session whose methods never
// call the callback leaves the request hanging, which these tests report as a request
// that got no answer within REQUEST_TIMEOUT_MS.
import { createHash } from 'node:crypto';
import test, { type ExecutionContext } from 'ava';
import type Koa from 'koa';
import type Router from 'koa-router';
import type pg from 'pg';
import { type Account, passportLogin } from '../../examples/passport-login.js';
import type { TestDatabase } from '../../src/testing/index.js';
import { sessionRows, setupDatabase } from '../helpers/database.js';
import type { Browser } from '../helpers/http.js';
import {
  type AppNode,
  BACKENDS,
  type Backend,
  REQUEST_TIMEOUT_MS,
  sessionCookie,
  sessionData,
  sessionId,
  startNode,
  storageFor,
} from './harness.js';

const USERS: readonly Account[] = [
  { id: '1', username: 'ada', password: 'correct horse battery staple', name: 'Ada Lovelace' },
  { id: '2', username: 'grace', password: 'cobol forever', name: 'Grace Hopper' },
];
const ADA = { username: 'ada', password: 'correct horse battery staple' };

/**
 * Every node, whatever its session backend: the README's example (examples/passport-login.ts)
 * and the routes these tests add with its passport instance (one per node, as each
 * process of a real deployment has its own).
 */
function passportApp(app: Koa, router: Router): void {
  const passport = passportLogin(app, router, USERS);
  const failureRedirect = '/login?failed=1';
  router.get('/visit', (ctx) => {
    const session = ctx.session!;
    if (typeof ctx.query.returnTo === 'string') session.returnTo = ctx.query.returnTo;
    session.visits = Number(session.visits ?? 0) + 1;
    ctx.body = { id: sessionId(ctx) };
  });
  router.post(
    '/login/keep',
    passport.authenticate('local', {
      successRedirect: '/me',
      failureRedirect,
      keepSessionInfo: true,
    }),
  );
  router.post(
    '/login/return',
    passport.authenticate('local', { successReturnToOrRedirect: '/me', failureRedirect }),
  );
  router.post(
    '/login/return/keep',
    passport.authenticate('local', {
      successReturnToOrRedirect: '/me',
      failureRedirect,
      keepSessionInfo: true,
    }),
  );
  // A login written straight into the session (as passport's own login leaves it), so
  // that logout can be exercised on its own.
  router.post('/login/direct', (ctx) => {
    ctx.session!.passport = { user: '1' };
    ctx.body = { ok: true };
  });
  router.get('/session', (ctx) => {
    ctx.body = { id: sessionId(ctx), data: sessionData(ctx) };
  });
}

/** Two nodes of one backend, sharing its storage: a request may reach either. */
interface World {
  readonly backend: Backend;
  readonly a: AppNode;
  readonly b: AppNode;
}

let db: TestDatabase;
let admin: pg.Pool;
const worlds = new Map<Backend, World>();

test.before(async () => {
  ({ db, admin } = await setupDatabase());
  for (const backend of BACKENDS) {
    const storage = storageFor(backend, db.appUrl);
    const a = await startNode(storage, passportApp);
    const b = await startNode(storage, passportApp);
    worlds.set(backend, { backend, a, b });
  }
});

test.after.always(async () => {
  for (const world of worlds.values()) {
    await world.a.close();
    await world.b.close();
  }
  await admin?.end();
  await db?.drop();
});

function world(backend: Backend): World {
  const found = worlds.get(backend);
  if (!found) throw new Error(`no nodes for ${backend}`);
  return found;
}

/** A test whose requests may hang: each request times out, and so does the test. */
function bounded(t: ExecutionContext): void {
  t.timeout(REQUEST_TIMEOUT_MS * 4, 'a request hung past its own timeout');
}

/** What a redirect answered, as a browser would follow it. */
function redirect(reply: { status: number; headers: Headers }) {
  return { status: reply.status, location: reply.headers.get('location') };
}

async function me(browser: Browser) {
  const reply = await browser.get('/me');
  return { status: reply.status, body: reply.body };
}

async function dataOf(browser: Browser): Promise<unknown> {
  return ((await browser.get('/session')).body as { data: unknown }).data;
}

const LOGGED_IN = { status: 200, body: { id: '1', name: 'Ada Lovelace' } };
const LOGGED_OUT = { status: 401, body: { error: 'not logged in' } };

// --- The same flows on every backend ---------------------------------------------------
//
// Each scenario returns what a browser observes; every backend must observe `expected`,
// except where `differs` names a backend and says why.

interface Scenario {
  readonly title: string;
  run(world: World): Promise<unknown>;
  readonly expected: unknown;
  readonly differs?: Partial<Record<Backend, unknown>>;
}

const SCENARIOS: Scenario[] = [
  {
    title:
      'a login without a session before answers, sets a cookie, and the user is known on both nodes',
    async run({ a, b }) {
      const browser = a.browser();
      const login = await browser.post('/login', ADA);
      return {
        login: redirect(login),
        cookie: sessionCookie(browser) !== undefined,
        meOnA: await me(browser),
        meOnB: await me(browser.clone(b.url)),
      };
    },
    expected: {
      login: { status: 302, location: '/me' },
      cookie: true,
      meOnA: LOGGED_IN,
      meOnB: LOGGED_IN,
    },
  },
  {
    title:
      'a login rotates the session cookie, and without keepSessionInfo the data set before it stays',
    async run({ a }) {
      const browser = a.browser();
      await browser.get('/visit?returnTo=/account');
      const before = sessionCookie(browser);
      const login = await browser.post('/login', ADA);
      return {
        login: redirect(login),
        cookieChanged: sessionCookie(browser) !== before,
        data: await dataOf(browser),
      };
    },
    expected: {
      login: { status: 302, location: '/me' },
      cookieChanged: true,
      data: { visits: 1, returnTo: '/account', passport: { user: '1' } },
    },
  },
  {
    title: 'keepSessionInfo: true keeps the data set before the login across its regenerate',
    async run({ a }) {
      const browser = a.browser();
      await browser.get('/visit?returnTo=/account');
      const before = sessionCookie(browser);
      const login = await browser.post('/login/keep', ADA);
      return {
        login: redirect(login),
        cookieChanged: sessionCookie(browser) !== before,
        data: await dataOf(browser),
      };
    },
    expected: {
      login: { status: 302, location: '/me' },
      cookieChanged: true,
      data: { visits: 1, returnTo: '/account', passport: { user: '1' } },
    },
  },
  {
    title:
      'successReturnToOrRedirect sends the user back to returnTo and removes it, with or without keepSessionInfo',
    async run({ a }) {
      const outcome = async (path: string) => {
        const browser = a.browser();
        await browser.get('/visit?returnTo=/account');
        const login = await browser.post(path, ADA);
        return { login: redirect(login), data: await dataOf(browser), me: await me(browser) };
      };
      return { plain: await outcome('/login/return'), keep: await outcome('/login/return/keep') };
    },
    expected: {
      plain: {
        login: { status: 302, location: '/account' },
        data: { visits: 1, passport: { user: '1' } },
        me: LOGGED_IN,
      },
      keep: {
        login: { status: 302, location: '/account' },
        data: { visits: 1, passport: { user: '1' } },
        me: LOGGED_IN,
      },
    },
  },
  {
    title: 'logout answers, rotates the cookie, and ends the login on both nodes',
    async run({ a, b }) {
      const browser = a.browser();
      await browser.get('/visit');
      await browser.post('/login', ADA);
      const loggedInOnB = await me(browser.clone(b.url));
      const before = sessionCookie(browser);
      const logout = await browser.post('/logout');
      return {
        loggedInOnB,
        logout: redirect(logout),
        cookieChanged: sessionCookie(browser) !== before,
        cookieKept: sessionCookie(browser) !== undefined,
        meOnA: await me(browser),
        meOnB: await me(browser.clone(b.url)),
        data: await dataOf(browser),
      };
    },
    expected: {
      loggedInOnB: LOGGED_IN,
      logout: { status: 302, location: '/' },
      cookieChanged: true,
      cookieKept: true,
      meOnA: LOGGED_OUT,
      meOnB: LOGGED_OUT,
      // passport deletes `passport.user` and keeps the rest: the session lives on.
      data: { visits: 1, passport: {} },
    },
  },
  {
    title:
      'logout on its own (of a login written straight into the session) answers and ends the login',
    async run({ a, b }) {
      const browser = a.browser();
      await browser.post('/login/direct');
      const loggedIn = await me(browser);
      const before = sessionCookie(browser);
      const logout = await browser.post('/logout');
      return {
        loggedIn,
        logout: redirect(logout),
        cookieChanged: sessionCookie(browser) !== before,
        meOnA: await me(browser),
        meOnB: await me(browser.clone(b.url)),
      };
    },
    expected: {
      loggedIn: LOGGED_IN,
      logout: { status: 302, location: '/' },
      cookieChanged: true,
      meOnA: LOGGED_OUT,
      meOnB: LOGGED_OUT,
    },
  },
  {
    title:
      'a wrong password redirects to the failure URL, logs nobody in and changes no session data',
    async run({ a }) {
      const browser = a.browser();
      await browser.get('/visit');
      const before = sessionCookie(browser);
      const login = await browser.post('/login', { username: 'ada', password: 'wrong' });
      return {
        login: redirect(login),
        setCookie: login.setCookies.length > 0,
        cookieUnchanged: sessionCookie(browser) === before,
        me: await me(browser),
        data: await dataOf(browser),
      };
    },
    expected: {
      login: { status: 302, location: '/login?failed=1' },
      setCookie: false,
      cookieUnchanged: true,
      me: LOGGED_OUT,
      data: { visits: 1 },
    },
  },
  {
    title: 'the cookie held before logout, replayed afterwards on either node',
    async run({ backend, a, b }) {
      const browser = a.browser();
      await browser.post('/login', ADA);
      const stolen = browser.clone();
      await browser.post('/logout');
      const onB = () => me(stolen.clone(b.url));
      // Only pg-sessions caches: node B drops its copy when the change notification comes.
      return {
        onA: await me(stolen),
        onB: backend === 'pg-sessions' ? await eventually(onB) : await onB(),
      };
    },
    expected: { onA: LOGGED_OUT, onB: LOGGED_OUT },
    differs: {
      // The cookie store keeps the whole session in the cookie: an old cookie is the old
      // session, login included, for as long as it has not expired.
      'koa-session cookie store': { onA: LOGGED_IN, onB: LOGGED_IN },
    },
  },
];

/**
 * The first answer that is a 401, trying for up to two seconds: another node drops its
 * cached copy of a session when the change notification arrives, a few ms after the write.
 * If it never comes, the last answer is returned for the assertion to show.
 */
async function eventually(read: () => Promise<{ status: number; body: unknown }>) {
  const deadline = Date.now() + 2_000;
  for (;;) {
    const answer = await read();
    if (answer.status === 401 || Date.now() > deadline) return answer;
    await new Promise((resolve) => setTimeout(resolve, 25));
  }
}

for (const scenario of SCENARIOS) {
  for (const backend of BACKENDS) {
    test(`${scenario.title} [${backend}]`, async (t) => {
      bounded(t);
      const expected = scenario.differs?.[backend] ?? scenario.expected;
      t.deepEqual(await scenario.run(world(backend)), expected);
    });
  }
}

// --- pg-sessions: the session row behind the cookie --------------------------------------

function hashHex(token: string): string {
  return createHash('sha256').update(token).digest('hex');
}

async function rowOf(id: string) {
  const row = (await sessionRows(admin)).find((candidate) => candidate.id === id);
  if (!row) throw new Error(`no session row ${id}`);
  return row as { id: string; data: unknown; version: number; token_hash: string; user_id: null };
}

async function idOf(browser: Browser): Promise<string> {
  const { id } = (await browser.get('/session')).body as { id: string | null };
  if (id === null) throw new Error('the browser has no saved session');
  return id;
}

test('pg-sessions: a login rotates the token and keeps the session id; the row holds passport.user', async (t) => {
  bounded(t);
  const { a } = world('pg-sessions');
  const browser = a.browser();
  const { id } = (await browser.get('/visit')).body as { id: string | null };
  // The visit created the session: its id comes with the next request.
  const sessionIdBefore = await idOf(browser);
  t.is(id, null);
  const tokenBefore = sessionCookie(browser)!;

  const login = await browser.post('/login', ADA);
  t.deepEqual(redirect(login), { status: 302, location: '/me' });
  const tokenAfter = sessionCookie(browser)!;
  t.not(tokenAfter, tokenBefore, 'the login rotated the token');
  t.is(await idOf(browser), sessionIdBefore, 'same session, new token');

  const row = await rowOf(sessionIdBefore);
  t.is(row.token_hash, hashHex(tokenAfter), 'the row answers to the new token only');
  t.deepEqual(row.data, { visits: 1, passport: { user: '1' } });
  // passport keeps its login in the data; pg-sessions' own user binding is not used.
  t.is(row.user_id, null);
});

test('pg-sessions: logout rotates the token again in the same session, and no node serves the login to either cookie', async (t) => {
  bounded(t);
  const { a, b } = world('pg-sessions');
  const browser = a.browser();
  await browser.get('/visit');
  await browser.post('/login', ADA);
  const id = await idOf(browser);
  const loginToken = sessionCookie(browser)!;
  // Node B reads (and caches) the logged-in session under the login's token.
  t.deepEqual(await me(browser.clone(b.url)), LOGGED_IN);
  const beforeLogout = browser.clone();

  const logout = await browser.post('/logout');
  t.deepEqual(redirect(logout), { status: 302, location: '/' });
  const logoutToken = sessionCookie(browser)!;
  t.not(logoutToken, loginToken, 'the logout rotated the token');
  t.is(await idOf(browser), id, 'the session goes on, logged out');
  t.is((await rowOf(id)).token_hash, hashHex(logoutToken));

  t.deepEqual(await me(browser), LOGGED_OUT);
  t.deepEqual(await me(browser.clone(b.url)), LOGGED_OUT);
  // The login's token, within its rotation grace, reaches the logged-out session.
  t.deepEqual(await me(beforeLogout), LOGGED_OUT);
  t.deepEqual(await eventually(() => me(beforeLogout.clone(b.url))), LOGGED_OUT);
});

test('pg-sessions: a wrong password leaves the stored session untouched', async (t) => {
  bounded(t);
  const { a } = world('pg-sessions');
  const browser = a.browser();
  await browser.get('/visit?returnTo=/account');
  const id = await idOf(browser);
  const before = await rowOf(id);
  const token = sessionCookie(browser);

  const login = await browser.post('/login', { username: 'ada', password: 'wrong' });
  t.deepEqual(redirect(login), { status: 302, location: '/login?failed=1' });
  t.deepEqual(login.setCookies, []);
  t.is(sessionCookie(browser), token);
  const after = await rowOf(id);
  t.deepEqual(after.data, { visits: 1, returnTo: '/account' });
  t.is(after.version, before.version, 'not written');
  t.is(after.token_hash, before.token_hash, 'not rotated');
  t.deepEqual(await me(browser), LOGGED_OUT);
});

test('pg-sessions: a failed login followed by a correct one logs in the same session', async (t) => {
  bounded(t);
  const { a } = world('pg-sessions');
  const browser = a.browser();
  await browser.get('/visit');
  const id = await idOf(browser);
  await browser.post('/login', { username: 'grace', password: 'fortran' });
  const login = await browser.post('/login', { username: 'grace', password: 'cobol forever' });
  t.deepEqual(redirect(login), { status: 302, location: '/me' });
  t.deepEqual(await me(browser), { status: 200, body: { id: '2', name: 'Grace Hopper' } });
  t.is(await idOf(browser), id);
});
