// pg-sessions' side of the koa-session compatibility (issue 13): what koa-session's
// own tests do not check but the drop-in promise needs, over real HTTP.
import { setTimeout as sleep } from 'node:timers/promises';
import test from 'ava';
import type pg from 'pg';
import type { TestDatabase } from '../src/testing/index.js';
import { sessionRows, setupDatabase } from './helpers/database.js';
import { bareApp, cookieHeader, listen, sessionFor } from './koa-session/harness.js';

let db: TestDatabase;
let admin: pg.Pool;

test.before(async () => {
  ({ db, admin } = await setupDatabase());
});

test.after.always(async () => {
  await admin?.end();
  await db?.drop();
});

test.serial('a throwing event listener is logged, and the request still answers', async (t) => {
  const app = bareApp(t);
  app.keys = ['k'];
  app.use(sessionFor(t, db.appUrl, { signed: false }, app));
  app.use((ctx) => {
    ctx.body = String(ctx.session?.isNew);
  });
  let called = 0;
  app.on('session:missed', () => {
    called++;
    throw new Error('a listener bug');
  });
  const client = await listen(t, app);
  const reply = await client.get('/', { cookie: 'koa.sess=not-a-token' });
  t.is(reply.status, 200);
  t.is(reply.text, 'true');
  await sleep(20);
  t.is(called, 1);
});

test.serial(
  'with request transactions, a throw caught upstream rolls the session back',
  async (t) => {
    const app = bareApp(t);
    app.keys = ['k'];
    app.use(async (ctx, next) => {
      try {
        await next();
      } catch {
        ctx.status = 401;
      }
    });
    app.use(sessionFor(t, db.appUrl, { transaction: 'request' } as never, app));
    app.use((ctx) => {
      ctx.session!.marker = 'rolled-back';
      throw new Error('after the change');
    });
    const client = await listen(t, app);
    const reply = await client.get('/');
    t.is(reply.status, 401);
    t.is(reply.setCookie, undefined);
    const rows = await sessionRows(admin);
    t.false(rows.some((row) => JSON.stringify(row).includes('rolled-back')));
  },
);

test.serial(
  'genid and prefix decorate the cookie value; the 256-bit token stays the whole secret',
  async (t) => {
    const app = bareApp(t);
    app.keys = ['k'];
    app.use(sessionFor(t, db.appUrl, { prefix: 'sess:', genid: () => 'user-42' }, app));
    app.use((ctx) => {
      if (ctx.method === 'POST') ctx.session!.n = 1;
      ctx.body = String(ctx.session?.n ?? '');
    });
    const client = await listen(t, app);
    const posted = await client.post('/');
    const value = /koa\.sess=([^;]+)/.exec(cookieHeader(posted))?.[1] ?? '';
    t.regex(value, /^sess:user-42\.[A-Za-z0-9_-]{65}$/);
    t.is((await client.get('/', { cookie: cookieHeader(posted) })).text, '1');
    // Another label, or none, in front of the same token: the signature no longer holds.
    const forged = cookieHeader(posted).replace('sess:user-42.', 'sess:admin.');
    t.is((await client.get('/', { cookie: forged })).text, '');
  },
);

test.serial('autoCommit: false writes nothing unless manuallyCommit() is called', async (t) => {
  const app = bareApp(t);
  app.keys = ['k'];
  app.use(sessionFor(t, db.appUrl, { autoCommit: false }, app));
  app.use(async (ctx) => {
    ctx.session!.n = 1;
    if (ctx.path === '/commit') {
      await (ctx.session as unknown as { manuallyCommit(): Promise<void> }).manuallyCommit();
    }
    ctx.body = 'ok';
  });
  const client = await listen(t, app);
  t.is((await client.get('/')).setCookie, undefined);
  t.truthy((await client.get('/commit')).setCookie);
});

test.serial(
  'a per-session maxAge applies to an existing session too, number or session',
  async (t) => {
    const app = bareApp(t);
    app.keys = ['k'];
    app.use(sessionFor(t, db.appUrl, {}, app));
    app.use((ctx) => {
      const session = ctx.session!;
      if (ctx.path === '/login') session.user = 'u1';
      if (ctx.path === '/short') session.maxAge = 5_000;
      if (ctx.path === '/browser') session.maxAge = 'session';
      ctx.body = { user: session.user, maxAge: session.maxAge };
    });
    const client = await listen(t, app);
    const login = await client.get('/login');
    const cookie = cookieHeader(login);
    const short = await client.get('/short', { cookie });
    t.is(short.status, 200);
    t.deepEqual(short.body, { user: 'u1', maxAge: 5_000 });
    const expires = /expires=([^;]+)/.exec(cookieHeader(short))?.[1] ?? '';
    const lifetime = Date.parse(expires) - Date.now();
    t.true(lifetime > 0 && lifetime <= 6_000, `expires in ${lifetime} ms`);
    const browser = await client.get('/browser', { cookie });
    t.is(browser.status, 200);
    t.deepEqual(browser.body, { user: 'u1', maxAge: 'session' });
    t.regex(cookieHeader(browser), /koa\.sess=/);
    t.notRegex(cookieHeader(browser), /expires=/);
  },
);

test.serial(
  'an event never carries a token: a malformed key that could hide one is hashed',
  async (t) => {
    const app = bareApp(t);
    app.use(sessionFor(t, db.appUrl, { signed: false, prefix: 'new:' }, app));
    app.use((ctx) => {
      ctx.body = 'ok';
    });
    const keys: unknown[] = [];
    app.on('session:missed', ({ key }: { key: unknown }) => keys.push(key));
    const client = await listen(t, app);
    const token = 'A'.repeat(43);
    await client.get('/', { cookie: `koa.sess=old:${token}` });
    await client.get('/', { cookie: 'koa.sess=invalid-key' });
    await sleep(20);
    t.is(keys.length, 2);
    t.regex(String(keys[0]), /^[0-9a-f]{64}$/);
    t.false(String(keys[0]).includes(token));
    t.is(keys[1], 'invalid-key');
  },
);

for (const overwrite of [true, false]) {
  test.serial(
    `overwrite: ${overwrite} — a save() and the request's own write send the cookie ${overwrite ? 'once' : 'twice'}`,
    async (t) => {
      const app = bareApp(t);
      app.keys = ['k'];
      app.use(sessionFor(t, db.appUrl, { overwrite } as never, app));
      app.use(async (ctx) => {
        ctx.session!.first = 1;
        await ctx.session!.save();
        ctx.session!.second = 2;
        ctx.body = 'ok';
      });
      const client = await listen(t, app);
      const reply = await client.get('/');
      const sessionCookies = (reply.setCookie ?? []).filter((line) => line.startsWith('koa.sess='));
      t.is(sessionCookies.length, overwrite ? 1 : 2);
    },
  );
}
