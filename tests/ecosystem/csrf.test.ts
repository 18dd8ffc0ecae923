// koa-csrf 5 on pg-sessions with its defaults, over real HTTP. koa-csrf keeps one secret
// per session (`ctx.session.secret`, created on the first request that has a session) and
// hands out tokens derived from it (`ctx.state._csrf`); a state-changing request must
// bring one back in the body (`_csrf`), the query, or a csrf-token / x-csrf-token header.
import test, { type ExecutionContext } from 'ava';
import type Koa from 'koa';
import CSRF from 'koa-csrf';
import koaPassport from 'koa-passport';
import type Router from 'koa-router';
import { Strategy as LocalStrategy } from 'passport-local';
import type pg from 'pg';
import type { TestDatabase } from '../../src/testing/index.js';
import { sessionRows, setupDatabase } from '../helpers/database.js';
import type { Browser } from '../helpers/http.js';
import {
  type AppNode,
  REQUEST_TIMEOUT_MS,
  sessionCookie,
  sessionId,
  startNode,
  storageFor,
} from './harness.js';

const ADA = { id: '1', username: 'ada', password: 'correct horse battery staple' };

function csrfApp(app: Koa, router: Router): void {
  app.use(new CSRF());
  const passport = new koaPassport.KoaPassport();
  passport.use(
    new LocalStrategy((username, password, done) => {
      done(null, username === ADA.username && password === ADA.password ? ADA : false);
    }),
  );
  passport.serializeUser((user, done) => done(null, (user as typeof ADA).id));
  passport.deserializeUser((id: string, done) => done(null, id === ADA.id ? ADA : false));
  app.use(passport.initialize());
  app.use(passport.session());

  router.get('/form', (ctx) => {
    ctx.body = { csrf: ctx.state._csrf, id: sessionId(ctx) };
  });
  router.post('/transfer', (ctx) => {
    ctx.body = { ok: true };
  });
  // koa-session 7's promise form of regenerate: a new session token, the same data.
  router.post('/regenerate', async (ctx) => {
    await ctx.session!.regenerate();
    ctx.body = { ok: true };
  });
  router.post(
    '/login',
    passport.authenticate('local', { successRedirect: '/form', failureRedirect: '/form' }),
  );
  router.post('/logout', (ctx) => {
    ctx.session = null;
    ctx.body = { ok: true };
  });
}

let db: TestDatabase;
let admin: pg.Pool;
let a: AppNode;
let b: AppNode;

test.before(async () => {
  ({ db, admin } = await setupDatabase());
  const storage = storageFor('pg-sessions', db.appUrl);
  a = await startNode(storage, csrfApp);
  b = await startNode(storage, csrfApp);
});

test.after.always(async () => {
  await a?.close();
  await b?.close();
  await admin?.end();
  await db?.drop();
});

function bounded(t: ExecutionContext): void {
  t.timeout(REQUEST_TIMEOUT_MS * 4, 'a request hung past its own timeout');
}

async function tokenFor(browser: Browser): Promise<string> {
  const reply = await browser.get('/form');
  const { csrf } = reply.body as { csrf: string };
  if (typeof csrf !== 'string' || csrf.length === 0) throw new Error('no CSRF token handed out');
  return csrf;
}

async function transfer(browser: Browser, token?: string) {
  const reply = await browser.post('/transfer', token === undefined ? {} : { _csrf: token });
  return { status: reply.status, body: reply.body };
}

const ACCEPTED = { status: 200, body: { ok: true } };
const REFUSED = { status: 403, body: { error: 'Invalid CSRF token' } };

test('an anonymous GET gets a token, and the secret behind it is stored in a new session row, not in the cookie', async (t) => {
  bounded(t);
  const browser = a.browser();
  const reply = await browser.get('/form');
  const { csrf } = reply.body as { csrf: string };
  t.regex(csrf, /^[\w-]+$/);
  // koa-csrf writes ctx.session.secret on every request that has no secret yet: the
  // first anonymous GET already creates the session.
  const token = sessionCookie(browser);
  t.truthy(token, 'the GET set the session cookie');
  const { id } = (await browser.get('/form')).body as { id: string };
  const row = (await sessionRows(admin)).find((candidate) => candidate.id === id);
  t.deepEqual(Object.keys(row?.data ?? {}), ['secret']);
  t.is(typeof row?.data.secret, 'string');
  t.false(token!.includes(row?.data.secret), 'the cookie carries only the session token');
});

test('a POST without a token, or with a made-up one, is refused with 403', async (t) => {
  bounded(t);
  const browser = a.browser();
  t.deepEqual(await transfer(browser), REFUSED, 'no session, no token');
  await tokenFor(browser);
  t.deepEqual(await transfer(browser), REFUSED, 'a session, no token');
  t.deepEqual(await transfer(browser, 'made-up-token'), REFUSED);
});

test('the token from a prior GET is accepted, in the body, the query or a header, and again later', async (t) => {
  bounded(t);
  const browser = a.browser();
  const token = await tokenFor(browser);
  t.deepEqual(await transfer(browser, token), ACCEPTED);
  const query = await browser.post(`/transfer?_csrf=${encodeURIComponent(token)}`);
  t.is(query.status, 200);
  const header = await browser.request('/transfer', {
    method: 'POST',
    headers: { 'x-csrf-token': token },
    body: {},
  });
  t.is(header.status, 200);
  // Every GET salts a new token from the same secret; the old ones stay valid.
  const second = await tokenFor(browser);
  t.not(second, token);
  t.deepEqual(await transfer(browser, token), ACCEPTED);
  t.deepEqual(await transfer(browser, second), ACCEPTED);
});

test('a token from another session is refused', async (t) => {
  bounded(t);
  const victim = a.browser();
  const attacker = a.browser();
  await tokenFor(victim);
  const attackersToken = await tokenFor(attacker);
  t.deepEqual(await transfer(victim, attackersToken), REFUSED);
  t.deepEqual(await transfer(attacker, attackersToken), ACCEPTED);
});

test('the token is accepted by another node serving the same session', async (t) => {
  bounded(t);
  const browser = a.browser();
  const token = await tokenFor(browser);
  t.deepEqual(await transfer(browser.clone(b.url), token), ACCEPTED);
});

test('the token survives a regenerate: a new session token, the same CSRF secret', async (t) => {
  bounded(t);
  const browser = a.browser();
  const token = await tokenFor(browser);
  const before = sessionCookie(browser);
  const regenerate = await browser.post('/regenerate', { _csrf: token });
  t.is(regenerate.status, 200);
  t.not(sessionCookie(browser), before, 'the session token changed');
  t.deepEqual(await transfer(browser, token), ACCEPTED);
  t.deepEqual(await transfer(browser, await tokenFor(browser)), ACCEPTED);
});

test('the token survives a passport login (its regenerate and save)', async (t) => {
  bounded(t);
  const browser = a.browser();
  const token = await tokenFor(browser);
  const before = sessionCookie(browser);
  const login = await browser.post('/login', {
    _csrf: token,
    username: ADA.username,
    password: ADA.password,
  });
  t.is(login.status, 302);
  t.is(login.headers.get('location'), '/form');
  t.not(sessionCookie(browser), before, 'the login rotated the session token');
  t.deepEqual(await transfer(browser, token), ACCEPTED);
  t.deepEqual(await transfer(browser.clone(b.url), token), ACCEPTED);
});

test('a login without the token is refused before passport sees it', async (t) => {
  bounded(t);
  const browser = a.browser();
  await tokenFor(browser);
  const login = await browser.post('/login', { username: ADA.username, password: ADA.password });
  t.deepEqual({ status: login.status, body: login.body }, REFUSED);
});

test('after logout (ctx.session = null) the old token is refused: the next session has a new secret', async (t) => {
  bounded(t);
  const browser = a.browser();
  const token = await tokenFor(browser);
  t.is((await browser.post('/logout', { _csrf: token })).status, 200);
  t.is(sessionCookie(browser), undefined, 'the session cookie is cleared');
  t.deepEqual(await transfer(browser, token), REFUSED);
  t.deepEqual(await transfer(browser, await tokenFor(browser)), ACCEPTED);
});
