// koa-session 7.0.2's test/store.test.ts ("Koa Session External Store"), run against
// sessions(): the external store koa-session's tests plug in is, for pg-sessions, the
// database itself. Each test keeps koa-session's name and assertions; they run in
// koa-session's order, because the "saved session" ones reuse the cookie "new
// session" obtained.
import { setTimeout as sleep } from 'node:timers/promises';
import test, { type ExecutionContext } from 'ava';
import type Koa from 'koa';
import type pg from 'pg';
import type { TestDatabase } from '../../src/testing/index.js';
import { setupDatabase } from '../helpers/database.js';
import {
  assignSession,
  bareApp,
  cookieHeader,
  expectSetCookie,
  inspect,
  type KoaSessionOptions,
  koaApp,
  koaSession,
  listen,
  sessionFor,
} from './harness.js';

let db: TestDatabase;
let admin: pg.Pool;
/** The cookie of the session "new session › when populated › should Set-Cookie" saved. */
let cookie: string;

test.before(async () => {
  ({ db, admin } = await setupDatabase());
});

test.after.always(async () => {
  await admin?.end();
  await db?.drop();
});

/** koa-session's `App()` of this file: the store is the database. */
function storeApp(t: ExecutionContext, options?: KoaSessionOptions): Koa {
  return koaApp(t, db.appUrl, options);
}

/** The payloads of one app event; koa-session emits them on the next tick. */
function collect(app: Koa, event: string): Record<string, unknown>[] {
  const payloads: Record<string, unknown>[] = [];
  app.on(event, (payload: Record<string, unknown>) => payloads.push(payload));
  return payloads;
}

test.serial(
  'Koa Session External Store › when the session contains a ; › should still work',
  async (t) => {
    const app = storeApp(t);
    app.use((ctx) => {
      if (ctx.method === 'POST') {
        koaSession(ctx).string = ';';
        ctx.status = 204;
      } else {
        ctx.body = koaSession(ctx).string;
      }
    });
    const client = await listen(t, app);
    const posted = await client.post('/');
    t.is(posted.status, 204);
    const read = await client.get('/', { cookie: cookieHeader(posted) });
    t.is(read.text, ';');
  },
);

test.serial(
  'Koa Session External Store › new session › when not accessed › should not Set-Cookie',
  async (t) => {
    const app = storeApp(t);
    app.use((ctx) => {
      ctx.body = 'greetings';
    });
    const client = await listen(t, app);
    const reply = await client.get('/');
    t.is(reply.status, 200);
    t.falsy(reply.setCookie);
  },
);

test.serial(
  'Koa Session External Store › new session › when accessed and not populated › should not Set-Cookie',
  async (t) => {
    const app = storeApp(t);
    app.use((ctx) => {
      void ctx.session;
      ctx.body = 'greetings';
    });
    const client = await listen(t, app);
    const reply = await client.get('/');
    t.is(reply.status, 200);
    t.falsy(reply.setCookie);
  },
);

test.serial(
  'Koa Session External Store › new session › when populated › should Set-Cookie',
  async (t) => {
    const app = storeApp(t);
    app.use((ctx) => {
      koaSession(ctx).message = 'hello';
      ctx.body = '';
    });
    const client = await listen(t, app);
    const reply = await client.get('/');
    expectSetCookie(t, reply, /koa\.sess/);
    t.is(reply.status, 200);
    cookie = cookieHeader(reply);
  },
);

test.serial(
  'Koa Session External Store › new session › when populated › should not Set-Cookie',
  async (t) => {
    const app = storeApp(t);
    app.use((ctx) => {
      ctx.body = ctx.session;
    });
    const client = await listen(t, app);
    const reply = await client.get('/');
    t.is(reply.status, 200);
    t.falsy(reply.setCookie);
  },
);

test.serial(
  'Koa Session External Store › saved session › when not accessed › should not Set-Cookie',
  async (t) => {
    const app = storeApp(t);
    app.use((ctx) => {
      ctx.body = 'aklsdjflasdjf';
    });
    const client = await listen(t, app);
    const reply = await client.get('/', { cookie });
    t.is(reply.status, 200);
    t.falsy(reply.setCookie);
  },
);

test.serial(
  'Koa Session External Store › saved session › when accessed but not changed › should be the same session',
  async (t) => {
    const app = storeApp(t);
    let message: unknown;
    app.use((ctx) => {
      message = koaSession(ctx).message;
      ctx.body = 'aklsdjflasdjf';
    });
    const client = await listen(t, app);
    const reply = await client.get('/', { cookie });
    t.is(message, 'hello');
    t.is(reply.status, 200);
  },
);

test.serial(
  'Koa Session External Store › saved session › when accessed but not changed › should not Set-Cookie',
  async (t) => {
    const app = storeApp(t);
    let message: unknown;
    app.use((ctx) => {
      message = koaSession(ctx).message;
      ctx.body = 'aklsdjflasdjf';
    });
    const client = await listen(t, app);
    const reply = await client.get('/', { cookie });
    t.is(message, 'hello');
    t.is(reply.status, 200);
    t.falsy(reply.setCookie);
  },
);

test.serial(
  'Koa Session External Store › saved session › when accessed and changed › should Set-Cookie',
  async (t) => {
    const app = storeApp(t);
    app.use((ctx) => {
      koaSession(ctx).money = '$$$';
      ctx.body = 'aklsdjflasdjf';
    });
    const client = await listen(t, app);
    const reply = await client.get('/', { cookie });
    expectSetCookie(t, reply, /koa\.sess/);
    t.is(reply.status, 200);
  },
);

test.serial(
  'Koa Session External Store › when session is › null › should expire the session',
  async (t) => {
    const app = storeApp(t);
    app.use((ctx) => {
      ctx.session = null;
      ctx.body = 'asdf';
    });
    const client = await listen(t, app);
    const reply = await client.get('/');
    expectSetCookie(t, reply, /koa\.sess/);
    t.is(reply.status, 200);
  },
);

test.serial(
  'Koa Session External Store › when session is › an empty object › should not Set-Cookie',
  async (t) => {
    const app = storeApp(t);
    app.use((ctx) => {
      ctx.session = {};
      ctx.body = 'asdf';
    });
    const client = await listen(t, app);
    const reply = await client.get('/');
    t.is(reply.status, 200);
    t.falsy(reply.setCookie);
  },
);

test.serial(
  'Koa Session External Store › when session is › an object › should create a session',
  async (t) => {
    const app = storeApp(t);
    app.use((ctx) => {
      ctx.session = { message: 'hello' };
      ctx.body = 'asdf';
    });
    const client = await listen(t, app);
    const reply = await client.get('/');
    expectSetCookie(t, reply, /koa\.sess/);
    t.is(reply.status, 200);
  },
);

test.serial(
  'Koa Session External Store › when session is › anything else › should throw',
  async (t) => {
    const app = storeApp(t);
    app.use((ctx) => {
      assignSession(ctx, 'asdf');
    });
    const client = await listen(t, app);
    const reply = await client.get('/');
    t.is(reply.status, 500);
  },
);

test.serial(
  'Koa Session External Store › session › .inspect() › should return session content',
  async (t) => {
    const app = storeApp(t);
    app.use((ctx) => {
      koaSession(ctx).foo = 'bar';
      ctx.body = koaSession(ctx)[inspect]();
    });
    const client = await listen(t, app);
    const reply = await client.get('/');
    expectSetCookie(t, reply, /koa\.sess=.+;/);
    t.deepEqual(reply.body, { foo: 'bar' });
    t.is(reply.status, 200);
  },
);

test.serial(
  'Koa Session External Store › session › .length › should return session length',
  async (t) => {
    const app = storeApp(t);
    app.use((ctx) => {
      koaSession(ctx).foo = 'bar';
      ctx.body = String(koaSession(ctx).length);
    });
    const client = await listen(t, app);
    const reply = await client.get('/');
    expectSetCookie(t, reply, /koa\.sess=.+;/);
    t.is(reply.text, '1');
    t.is(reply.status, 200);
  },
);

test.serial(
  'Koa Session External Store › session › .populated › should return session populated',
  async (t) => {
    const app = storeApp(t);
    app.use((ctx) => {
      koaSession(ctx).foo = 'bar';
      ctx.body = String(koaSession(ctx).populated);
    });
    const client = await listen(t, app);
    const reply = await client.get('/');
    expectSetCookie(t, reply, /koa\.sess=.+;/);
    t.is(reply.text, 'true');
    t.is(reply.status, 200);
  },
);

test.serial('Koa Session External Store › session › .save() › should save session', async (t) => {
  const app = storeApp(t);
  app.use((ctx) => {
    koaSession(ctx).save();
    ctx.body = 'hello';
  });
  const client = await listen(t, app);
  const reply = await client.get('/');
  expectSetCookie(t, reply, /koa\.sess=.+;/);
  t.is(reply.text, 'hello');
  t.is(reply.status, 200);
});

test.serial(
  'Koa Session External Store › when an error is thrown downstream and caught upstream › should still save the session',
  async (t) => {
    const app = bareApp(t);
    app.keys = ['a', 'b'];
    app.use(async (ctx, next) => {
      try {
        await next();
      } catch (error) {
        const failure = error as { status: number; message: string };
        ctx.status = failure.status;
        ctx.body = failure.message;
      }
    });
    app.use(sessionFor(t, db.appUrl, {}, app));
    app.use(async (ctx, next) => {
      koaSession(ctx).name = 'funny';
      await next();
    });
    app.use((ctx) => {
      ctx.throw(401);
    });
    const client = await listen(t, app);
    const reply = await client.get('/');
    expectSetCookie(t, reply, /koa\.sess/);
    t.is(reply.status, 401);
  },
);

test.serial(
  'Koa Session External Store › when maxAge present › and set to be a session cookie › should not expire the session',
  async (t) => {
    const app = storeApp(t, { maxAge: 'session' });
    app.use((ctx) => {
      if (ctx.method === 'POST') {
        koaSession(ctx).message = 'hi';
        ctx.body = 200;
        return;
      }
      ctx.body = koaSession(ctx).message;
    });
    const client = await listen(t, app);
    const posted = await client.post('/');
    expectSetCookie(t, posted, /koa\.sess/);
    const setCookie = cookieHeader(posted);
    t.false(setCookie.includes('expires='));
    const read = await client.get('/', { cookie: setCookie });
    t.is(read.text, 'hi');
  },
);

test.serial(
  'Koa Session External Store › when maxAge present › and not expire › should not expire the session',
  async (t) => {
    const app = storeApp(t, { maxAge: 100 });
    app.use((ctx) => {
      if (ctx.method === 'POST') {
        koaSession(ctx).message = 'hi';
        ctx.body = 200;
        return;
      }
      ctx.body = koaSession(ctx).message;
    });
    const client = await listen(t, app);
    const posted = await client.post('/');
    expectSetCookie(t, posted, /koa\.sess/);
    const read = await client.get('/', { cookie: cookieHeader(posted) });
    t.is(read.text, 'hi');
  },
);

test.serial(
  'Koa Session External Store › when maxAge present › and expired › should expire the sess',
  async (t) => {
    const app = storeApp(t, { maxAge: 100 });
    const expired = collect(app, 'session:expired');
    app.use((ctx) => {
      if (ctx.method === 'POST') {
        koaSession(ctx).message = 'hi';
        ctx.status = 200;
        return;
      }
      ctx.body = koaSession(ctx).message || '';
    });
    const client = await listen(t, app);
    const posted = await client.post('/');
    expectSetCookie(t, posted, /koa\.sess/);
    await sleep(200);
    const read = await client.get('/', { cookie: cookieHeader(posted) });
    t.is(read.text, '');
    await sleep(0);
    // koa-session's test accepts zero events; pg-sessions must emit exactly this one.
    t.is(expired.length, 1, 'session:expired was emitted');
    for (const args of expired) {
      t.regex(String(args.key), /^\w+-/);
      t.truthy(args.value);
      t.truthy(args.ctx);
    }
  },
);

test.serial(
  'Koa Session External Store › ctx.session.maxAge › should return opt.maxAge',
  async (t) => {
    const app = storeApp(t, { maxAge: 100 });
    app.use((ctx) => {
      ctx.body = koaSession(ctx).maxAge;
    });
    const client = await listen(t, app);
    const reply = await client.get('/');
    t.is(reply.text, '100');
  },
);

test.serial(
  'Koa Session External Store › ctx.session.maxAge= › should set sessionOptions.maxAge',
  async (t) => {
    const app = storeApp(t);
    app.use((ctx) => {
      koaSession(ctx).foo = 'bar';
      koaSession(ctx).maxAge = 100;
      ctx.body = koaSession(ctx).foo;
    });
    const client = await listen(t, app);
    const reply = await client.get('/');
    expectSetCookie(t, reply, /expires=/);
    t.is(reply.status, 200);
  },
);

test.serial(
  'Koa Session External Store › ctx.session.maxAge= › should save even session not change',
  async (t) => {
    const app = storeApp(t);
    app.use((ctx) => {
      koaSession(ctx).maxAge = 100;
      ctx.body = ctx.session;
    });
    const client = await listen(t, app);
    const reply = await client.get('/');
    expectSetCookie(t, reply, /expires=/);
    t.is(reply.status, 200);
  },
);

test.serial(
  'Koa Session External Store › ctx.session.maxAge= › should save when create session only with maxAge',
  async (t) => {
    const app = storeApp(t);
    app.use((ctx) => {
      ctx.session = { maxAge: 100 };
      ctx.body = ctx.session;
    });
    const client = await listen(t, app);
    const reply = await client.get('/');
    expectSetCookie(t, reply, /expires=/);
    t.is(reply.status, 200);
  },
);

test.serial(
  'Koa Session External Store › ctx.session.regenerate › should change the session key, but not content',
  async (t) => {
    const app = storeApp(t);
    const message = 'hi';
    const seen: unknown[] = [];
    app.use(async (ctx, next) => {
      ctx.session = { message: 'hi' };
      await next();
    });
    app.use(async (ctx, next) => {
      const sessionKey = ctx.cookies.get('koa.sess');
      if (sessionKey) {
        await koaSession(ctx).regenerate();
      }
      await next();
    });
    app.use((ctx) => {
      seen.push(koaSession(ctx).message);
      ctx.body = '';
    });
    const client = await listen(t, app);
    const first = await client.get('/');
    t.is(first.status, 200);
    t.is(seen[0], message);
    const koaSessionCookie = cookieHeader(first);
    t.regex(koaSessionCookie, /koa\.sess=/);
    const second = await client.get('/', { cookie: koaSessionCookie });
    t.is(second.status, 200);
    t.is(seen[1], message);
    const cookies = cookieHeader(second);
    t.regex(cookies, /koa\.sess=/);
    t.not(cookies, koaSessionCookie);
  },
);

test.serial(
  'Koa Session External Store › when store return empty › should create new Session',
  async (t) => {
    const app = storeApp(t, { signed: false });
    const missed = collect(app, 'session:missed');
    app.use((ctx) => {
      ctx.body = String(koaSession(ctx).isNew);
    });
    const client = await listen(t, app);
    const reply = await client.get('/', { cookie: 'koa.sess=invalid-key' });
    t.is(reply.text, 'true');
    t.is(reply.status, 200);
    await sleep(0);
    // koa-session's test accepts zero events; pg-sessions must emit exactly this one.
    t.is(missed.length, 1, 'session:missed was emitted');
    for (const args of missed) {
      t.is(args.key, 'invalid-key');
      t.truthy(args.ctx);
    }
  },
);

test.serial(
  'Koa Session External Store › when valid and beforeSave set › should ignore session when uid changed',
  async (t) => {
    const app = bareApp(t);
    app.keys = ['a', 'b'];
    app.use(
      sessionFor(t, db.appUrl, {
        valid: (ctx, session) => ctx.cookies.get('uid') === session.uid,
        beforeSave: (ctx, session) => {
          session.uid = ctx.cookies.get('uid');
        },
      }),
    );
    app.use((ctx) => {
      const session = koaSession(ctx);
      if (!session.foo) {
        session.foo = `${Date.now()}|uid:${ctx.cookies.get('uid')}`;
      }
      ctx.body = { foo: session.foo, uid: ctx.cookies.get('uid') };
    });
    const invalid = collect(app, 'session:invalid');
    const client = await listen(t, app);
    const first = await client.get('/', { cookie: 'uid=123' });
    t.is(first.status, 200);
    const data = first.body as { foo: string; uid: string };
    const cookies = cookieHeader(first);
    t.true(cookies.includes('koa.sess='));

    const same = await client.get('/', { cookie: `${cookies};uid=123` });
    t.is(same.status, 200);
    t.deepEqual(same.body, data);

    const other = await client.get('/', { cookie: `${cookies};uid=456` });
    t.is(other.status, 200);
    const otherBody = other.body as { foo: string; uid: string };
    t.is(otherBody.uid, '456');
    t.not(otherBody.foo, data.foo);
    await sleep(0);
    // koa-session's test accepts zero events; pg-sessions must emit exactly this one.
    t.is(invalid.length, 1, 'session:invalid was emitted');
    for (const args of invalid) {
      t.truthy(args.key);
      t.truthy(args.value);
      t.truthy(args.ctx);
    }
  },
);

test.serial('Koa Session External Store › ctx.session › can be mocked', async (t) => {
  const app = storeApp(t);
  app.use((ctx) => {
    ctx.body = ctx.session;
  });
  // What mm(app.context, 'session', …) does: a data property over the accessor.
  Object.defineProperty(app.context, 'session', {
    value: { foo: 'bar' },
    writable: true,
    configurable: true,
    enumerable: true,
  });
  const client = await listen(t, app);
  const reply = await client.get('/');
  t.deepEqual(reply.body, { foo: 'bar' });
  t.is(reply.status, 200);
});

test.serial(
  'Koa Session External Store › when rolling set to true › should not send set-cookie when session not exists',
  async (t) => {
    const client = await listen(t, setApp(t, { rolling: true }));
    const reply = await client.get('/');
    t.deepEqual(reply.body, {});
    t.falsy(reply.setCookie);
  },
);

test.serial(
  'Koa Session External Store › when rolling set to true › should send set-cookie when session exists and not change',
  async (t) => {
    const client = await listen(t, setApp(t, { rolling: true }));
    const set = await client.get('/set');
    t.deepEqual(set.body, { foo: 'bar' });
    t.is(set.setCookie?.length, 2);
    const read = await client.get('/', { cookie: cookieHeader(set) });
    t.deepEqual(read.body, { foo: 'bar' });
    t.is(read.setCookie?.length, 2);
  },
);

test.serial('Koa Session External Store › when prefix present › should still work', async (t) => {
  const app = storeApp(t, { prefix: 'sess:' });
  app.use((ctx) => {
    if (ctx.method === 'POST') {
      koaSession(ctx).string = ';';
      ctx.status = 204;
    } else {
      ctx.body = koaSession(ctx).string;
    }
  });
  const client = await listen(t, app);
  const posted = await client.post('/');
  t.is(posted.status, 204);
  t.true((posted.setCookie ?? []).join().includes('koa.sess=sess:'));
  const read = await client.get('/', { cookie: cookieHeader(posted) });
  t.is(read.text, ';');
});

test.serial(
  'Koa Session External Store › when renew set to true › should not send set-cookie when session not exists',
  async (t) => {
    const client = await listen(t, setApp(t, { renew: true, maxAge: 2000 }));
    const reply = await client.get('/');
    t.deepEqual(reply.body, {});
    t.falsy(reply.setCookie);
  },
);

test.serial(
  'Koa Session External Store › when renew set to true › should send set-cookie when session near expire and not change',
  async (t) => {
    const client = await listen(t, setApp(t, { renew: true, maxAge: 2000 }));
    const set = await client.get('/set');
    t.deepEqual(set.body, { foo: 'bar' });
    t.is(set.setCookie?.length, 2);
    const setCookie = cookieHeader(set);
    await sleep(1200);
    const read = await client.get('/', { cookie: setCookie });
    t.deepEqual(read.body, { foo: 'bar' });
    t.is(read.setCookie?.length, 2);
  },
);

test.serial(
  'Koa Session External Store › when renew set to true › should not send set-cookie when session not near expire and not change',
  async (t) => {
    const client = await listen(t, setApp(t, { renew: true, maxAge: 2000 }));
    const set = await client.get('/set');
    t.deepEqual(set.body, { foo: 'bar' });
    t.is(set.setCookie?.length, 2);
    const setCookie = cookieHeader(set);
    await sleep(500);
    const read = await client.get('/', { cookie: setCookie });
    t.deepEqual(read.body, { foo: 'bar' });
    t.falsy(read.setCookie);
  },
);

test.serial(
  'Koa Session External Store › when get session before middleware › should return empty session',
  async (t) => {
    const app = bareApp(t);
    app.keys = ['a', 'b'];
    const before: unknown[] = [];
    app.use(async (ctx, next) => {
      before.push(ctx.session);
      koaSession(ctx).foo = '123';
      await next();
    });
    app.use(sessionFor(t, db.appUrl, {}, app));
    app.use((ctx) => {
      if (ctx.path === '/set') ctx.session = { foo: 'bar' };
      ctx.body = ctx.session;
    });
    const client = await listen(t, app);
    const empty = await client.get('/');
    t.truthy(before[0]);
    t.deepEqual(empty.body, {});
    const set = await client.get('/set');
    t.deepEqual(set.body, { foo: 'bar' });
    const setCookie = cookieHeader(set);
    await sleep(1200);
    const read = await client.get('/', { cookie: setCookie });
    t.deepEqual(read.body, { foo: 'bar' });
  },
);

/** koa-session's `before()` apps that assign `{ foo: 'bar' }` on /set and answer the session. */
function setApp(t: ExecutionContext, options: KoaSessionOptions): Koa {
  const app = storeApp(t, options);
  app.use((ctx) => {
    if (ctx.path === '/set') ctx.session = { foo: 'bar' };
    ctx.body = ctx.session;
  });
  return app;
}
