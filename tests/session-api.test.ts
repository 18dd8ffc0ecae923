// koa-session 7's Session API in both forms (issue 25): save, regenerate, commit and
// manuallyCommit with a callback or a promise, and the same timing as koa-session: when
// the callback runs (or the promise settles) the row is written and the cookie set.
// passport (through koa-passport) waits on exactly these callbacks at login and logout.
import { createHash } from 'node:crypto';
import test from 'ava';
import type { Context } from 'koa';
import type pg from 'pg';
import type { Session } from '../src/index.js';
import type { TestDatabase } from '../src/testing/index.js';
import { sessionRows, setupDatabase } from './helpers/database.js';
import { Browser, startApp, type TestApp } from './helpers/http.js';

let db: TestDatabase;
let admin: pg.Pool;
let app: TestApp;

/** The session's stored row, as the handler sees it mid-request. */
async function storedRow(id: string | null) {
  const rows = await sessionRows(admin);
  return rows.find((row) => row.id === id);
}

/** The token in the Set-Cookie the response carries so far (unsigned cookie `sid`). */
function tokenSent(ctx: Context): string | undefined {
  const header = ctx.response.get('set-cookie') as unknown as string[] | string;
  const lines = Array.isArray(header) ? header : [header];
  const line = lines.find((candidate) => candidate.startsWith('sid='));
  return line?.slice('sid='.length).split(';')[0];
}

const sha256 = (token: string) => createHash('sha256').update(token).digest('hex');

/** Promise form of a callback API, so a handler can await what passport waits for. */
function called(start: (done: (error?: Error) => void) => unknown): Promise<Error | undefined> {
  return new Promise((resolve) => {
    const returned = start((error) => resolve(error));
    if (returned !== undefined) resolve(new Error('a callback form returned a value'));
  });
}

test.before(async () => {
  ({ db, admin } = await setupDatabase());
  app = await startApp(
    { database: db.appUrl, cookie: { signed: false }, touchInterval: 0 },
    (router) => {
      router.post('/save-callback', async (ctx) => {
        ctx.session!.step = 'saved';
        const error = await called((done) => ctx.session!.save(done));
        // What is done when the callback runs: the row and the cookie.
        const row = await storedRow(ctx.sessions.id);
        const token = tokenSent(ctx);
        ctx.body = {
          error: error?.message ?? null,
          stored: row?.data ?? null,
          cookieMatchesRow: token !== undefined && sha256(token) === row?.token_hash,
        };
      });
      router.post('/save-promise', async (ctx) => {
        const before = await storedRow(ctx.sessions.id);
        const saved = ctx.session!.save();
        await saved;
        const after = await storedRow(ctx.sessions.id);
        // An unchanged session keeps its version; the write slides its expiry.
        ctx.body = {
          isPromise: saved instanceof Promise,
          version: [before?.version, after?.version],
          slid: after!.last_seen_at.getTime() > before!.last_seen_at.getTime(),
        };
      });
      router.post('/regenerate-callback', async (ctx) => {
        const id = ctx.sessions.id;
        const before = await storedRow(id);
        const error = await called((done) => ctx.session!.regenerate(done));
        const after = await storedRow(ctx.sessions.id);
        const token = tokenSent(ctx);
        ctx.body = {
          error: error?.message ?? null,
          sameId: id !== null && after?.id === id,
          tokenChanged: before?.token_hash !== after?.token_hash,
          cookieMatchesRow: token !== undefined && sha256(token) === after?.token_hash,
          data: after?.data ?? null,
        };
      });
      router.post('/regenerate-promise', async (ctx) => {
        const created = ctx.sessions.id === null;
        await ctx.session!.regenerate();
        const row = await storedRow(ctx.sessions.id);
        ctx.body = { created, stored: row !== undefined };
      });
      router.post('/commit-forms', async (ctx) => {
        ctx.session!.a = 1;
        const first = await called((done) => ctx.session!.commit(done));
        const afterFirst = (await storedRow(ctx.sessions.id))?.data ?? null;
        ctx.session!.b = 2;
        const second = await called((done) => ctx.session!.commit({ save: true }, done));
        const afterSecond = (await storedRow(ctx.sessions.id))?.data ?? null;
        ctx.session!.c = 3;
        await ctx.session!.manuallyCommit();
        const afterThird = (await storedRow(ctx.sessions.id))?.data ?? null;
        ctx.body = {
          errors: [first, second].map((e) => e?.message ?? null),
          afterFirst,
          afterSecond,
          afterThird,
        };
      });
      router.post('/save-not-awaited', (ctx) => {
        ctx.session!.first = 'by save()';
        void ctx.session!.save();
        ctx.session!.second = 'by the end of the request';
        ctx.body = 'ok';
      });
      router.post('/save-bad-value', async (ctx) => {
        (ctx.session as Record<string, unknown>).handler = () => 'not JSON';
        const error = (await called((done) => ctx.session!.save(done))) as
          | (Error & { code?: string })
          | undefined;
        delete (ctx.session as Record<string, unknown>).handler;
        ctx.body = { code: error?.code ?? null };
      });
      router.post('/set', (ctx) => {
        Object.assign(ctx.session!, ctx.request.query);
        ctx.body = { id: ctx.sessions.id };
      });
      router.post('/assign-is-new', (ctx) => {
        ctx.session!.kept = 'before the mistake';
        (ctx.session as unknown as { isNew: boolean }).isNew = false;
        ctx.body = 'not reached';
      });
      router.post('/require-save', (ctx) => {
        ctx.session!._requireSave = true;
        ctx.body = {
          expire: ctx.session!._expire ?? null,
          version: ctx.sessions.version,
          id: ctx.sessions.id,
        };
      });
      router.get('/get', (ctx) => {
        ctx.body = {
          data: ctx.session?.toJSON() ?? null,
          id: ctx.sessions.id,
          version: ctx.sessions.version,
        };
      });
    },
  );
});

test.after.always(async () => {
  await app?.close();
  await admin?.end();
  await db?.drop();
});

test('save(callback): when the callback runs, the row holds the data and the cookie is set', async (t) => {
  const browser = new Browser(app.url);
  const reply = await browser.request('/save-callback', { method: 'POST' });
  t.is(reply.status, 200);
  t.deepEqual(reply.body, { error: null, stored: { step: 'saved' }, cookieMatchesRow: true });
  const next = await browser.request('/get');
  t.deepEqual((next.body as { data: unknown }).data, { step: 'saved' });
});

test('save() returns a promise that settles after a write, even when nothing changed', async (t) => {
  const browser = new Browser(app.url);
  await browser.request('/set?x=1', { method: 'POST' });
  const reply = await browser.request('/save-promise', { method: 'POST' });
  t.deepEqual(reply.body, {
    isPromise: true,
    version: [1, 1],
    slid: true,
  });
});

test('regenerate(callback): when the callback runs, the same session has a new token and the cookie carries it', async (t) => {
  const browser = new Browser(app.url);
  await browser.request('/set?cart=3', { method: 'POST' });
  const oldCookie = browser.cookies.get('sid');
  const reply = await browser.request('/regenerate-callback', { method: 'POST' });
  t.deepEqual(reply.body, {
    error: null,
    sameId: true,
    tokenChanged: true,
    cookieMatchesRow: true,
    data: { cart: '3' },
  });
  t.not(browser.cookies.get('sid'), oldCookie);
  const next = await browser.request('/get');
  t.deepEqual((next.body as { data: unknown }).data, { cart: '3' });
});

test('regenerate() on a first visit stores the new session at once', async (t) => {
  const browser = new Browser(app.url);
  const reply = await browser.request('/regenerate-promise', { method: 'POST' });
  t.deepEqual(reply.body, { created: true, stored: true });
  t.true(browser.cookies.has('sid'));
});

test('commit(callback), commit({ save }, callback) and manuallyCommit() each write before they settle', async (t) => {
  const browser = new Browser(app.url);
  const reply = await browser.request('/commit-forms', { method: 'POST' });
  t.deepEqual(reply.body, {
    errors: [null, null],
    afterFirst: { a: 1 },
    afterSecond: { a: 1, b: 2 },
    afterThird: { a: 1, b: 2, c: 3 },
  });
});

test('a save() the handler does not await and the request’s own commit both land, in one row', async (t) => {
  const browser = new Browser(app.url);
  const reply = await browser.request('/save-not-awaited', { method: 'POST' });
  t.is(reply.status, 200);
  const next = await browser.request('/get');
  const { data, id } = next.body as { data: unknown; id: string };
  t.deepEqual(data, { first: 'by save()', second: 'by the end of the request' });
  const rows = (await sessionRows(admin)).filter((row) => row.id === id);
  t.is(rows.length, 1);
});

test('a value that cannot be stored reaches the callback as SESSION_DATA_INVALID, and the rest is kept', async (t) => {
  const browser = new Browser(app.url);
  await browser.request('/set?kept=yes', { method: 'POST' });
  const reply = await browser.request('/save-bad-value', { method: 'POST' });
  t.deepEqual(reply.body, { code: 'SESSION_DATA_INVALID' });
  const next = await browser.request('/get');
  t.deepEqual((next.body as { data: unknown }).data, { kept: 'yes' });
});

test('assigning isNew is the typed SESSION_DATA_INVALID, not a TypeError, and loses nothing', async (t) => {
  const browser = new Browser(app.url);
  await browser.request('/set?earlier=1', { method: 'POST' });
  const reply = await browser.request('/assign-is-new', { method: 'POST' });
  t.is(reply.status, 500);
  t.is((reply.body as { error: string }).error, 'SESSION_DATA_INVALID');
  const next = await browser.request('/get');
  // koa-session saves what the handler changed before it threw; so does pg-sessions.
  t.deepEqual((next.body as { data: unknown }).data, { earlier: '1', kept: 'before the mistake' });
});

test('_requireSave forces a write and _expire is the loaded session’s expiry', async (t) => {
  const browser = new Browser(app.url);
  await browser.request('/set?x=1', { method: 'POST' });
  const { id } = (await browser.request('/get')).body as { id: string };
  const before = await storedRow(id);
  const reply = await browser.request('/require-save', { method: 'POST' });
  const { expire } = reply.body as { expire: number | null };
  t.is(expire, before!.idle_expires_at.getTime());
  const after = await storedRow(id);
  t.true(after!.last_seen_at.getTime() > before!.last_seen_at.getTime());
  t.true(reply.setCookies.some((line) => line.startsWith('sid=')));
});

test('a session read before any request has none to commit: save() settles at once', async (t) => {
  const { Session: SessionClass } = await import('../src/session.js');
  const orphan: Session = new SessionClass(new Map(), true);
  await t.notThrowsAsync(orphan.save());
  t.is(orphan.maxAge, 86_400_000);
});
