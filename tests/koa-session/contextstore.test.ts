// koa-session 7.0.2's test/contextstore.test.ts ("Koa Session External Context
// Store"), run against sessions(): the per-request ContextStore koa-session's tests
// plug in is, for pg-sessions, the database itself; the tests' `genid` is passed as
// koa-session's option. Each test keeps koa-session's name and assertions; they run
// in koa-session's order, because the "saved session" ones reuse the cookie "new
// session" obtained.
import { setTimeout as sleep } from 'node:timers/promises';
import test, { type ExecutionContext } from 'ava';
import type Koa from 'koa';
import type pg from 'pg';
import { type SessionMiddleware, sessions } from '../../src/index.js';
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
  translate,
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

/** koa-session's `App()` of this file: the database as the store, and its `genid`. */
function contextStoreApp(t: ExecutionContext, options: KoaSessionOptions = {}): Koa {
  return koaApp(t, db.appUrl, {
    ...options,
    genid: (ctx) => {
      const sid = `${Date.now()}_suffix`;
      ctx.state.sid = sid;
      return sid;
    },
  });
}

test.serial(
  'Koa Session External Context Store › when the session contains a ; › should still work',
  async (t) => {
    const app = contextStoreApp(t);
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
    t.truthy(posted.setCookie, 'should have set cookie');
    const read = await client.get('/', { cookie: cookieHeader(posted) });
    t.is(read.text, ';');
  },
);

test.serial(
  'Koa Session External Context Store › new session › when not accessed › should not Set-Cookie',
  async (t) => {
    const app = contextStoreApp(t);
    app.use((ctx) => {
      ctx.body = 'greetings';
    });
    const client = await listen(t, app);
    const reply = await client.get('/');
    t.is(reply.status, 200);
    t.is(reply.setCookie, undefined, 'should not have set cookie');
  },
);

test.serial(
  'Koa Session External Context Store › new session › when accessed and not populated › should not Set-Cookie',
  async (t) => {
    const app = contextStoreApp(t);
    app.use((ctx) => {
      void ctx.session;
      ctx.body = 'greetings';
    });
    const client = await listen(t, app);
    const reply = await client.get('/');
    t.is(reply.status, 200);
    t.is(reply.setCookie, undefined, 'should not have set cookie');
  },
);

test.serial(
  'Koa Session External Context Store › new session › when populated › should Set-Cookie',
  async (t) => {
    const app = contextStoreApp(t);
    app.use((ctx) => {
      koaSession(ctx).message = 'hello';
      ctx.body = '';
    });
    const client = await listen(t, app);
    const reply = await client.get('/');
    expectSetCookie(t, reply, /koa\.sess/);
    t.is(reply.status, 200);
    cookie = cookieHeader(reply);
    t.regex(cookie, /\d+_suffix/);
  },
);

test.serial(
  'Koa Session External Context Store › new session › when populated › should pass sid to middleware',
  async (t) => {
    const app = contextStoreApp(t);
    let sid: unknown;
    app.use((ctx) => {
      koaSession(ctx).message = 'hello';
      sid = ctx.state.sid;
      ctx.body = '';
    });
    const client = await listen(t, app);
    const reply = await client.get('/');
    t.regex(String(sid), /\d+_suffix/);
    expectSetCookie(t, reply, /koa\.sess/);
    t.is(reply.status, 200);
    cookie = cookieHeader(reply);
    t.regex(cookie, /\d+_suffix/);
  },
);

test.serial(
  'Koa Session External Context Store › new session › when populated › should not Set-Cookie',
  async (t) => {
    const app = contextStoreApp(t);
    app.use((ctx) => {
      ctx.body = ctx.session;
    });
    const client = await listen(t, app);
    const reply = await client.get('/');
    t.is(reply.status, 200);
    t.is(reply.setCookie, undefined, 'should not have set cookie');
  },
);

test.serial(
  'Koa Session External Context Store › saved session › when not accessed › should not Set-Cookie',
  async (t) => {
    const app = contextStoreApp(t);
    app.use((ctx) => {
      ctx.body = 'aklsdjflasdjf';
    });
    const client = await listen(t, app);
    const reply = await client.get('/', { cookie });
    t.is(reply.status, 200);
    t.is(reply.setCookie, undefined, 'should not have set cookie');
  },
);

test.serial(
  'Koa Session External Context Store › saved session › when accessed but not changed › should be the same session',
  async (t) => {
    const app = contextStoreApp(t);
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
  'Koa Session External Context Store › saved session › when accessed but not changed › should not Set-Cookie',
  async (t) => {
    const app = contextStoreApp(t);
    let message: unknown;
    app.use((ctx) => {
      message = koaSession(ctx).message;
      ctx.body = 'aklsdjflasdjf';
    });
    const client = await listen(t, app);
    const reply = await client.get('/', { cookie });
    t.is(message, 'hello');
    t.is(reply.status, 200);
    t.is(reply.setCookie, undefined, 'should not have set cookie');
  },
);

test.serial(
  'Koa Session External Context Store › saved session › when accessed and changed › should Set-Cookie',
  async (t) => {
    const app = contextStoreApp(t);
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
  'Koa Session External Context Store › when session is › null › should expire the session',
  async (t) => {
    const app = contextStoreApp(t);
    app.use((ctx) => {
      ctx.session = null;
      ctx.body = 'asdf';
    });
    const client = await listen(t, app);
    const reply = await client.get('/');
    expectSetCookie(t, reply, /koa\.sess/);
  },
);

test.serial(
  'Koa Session External Context Store › when session is › an empty object › should not Set-Cookie',
  async (t) => {
    const app = contextStoreApp(t);
    app.use((ctx) => {
      ctx.session = {};
      ctx.body = 'asdf';
    });
    const client = await listen(t, app);
    const reply = await client.get('/');
    t.is(reply.status, 200);
    t.is(reply.setCookie, undefined, 'should not have set cookie');
  },
);

test.serial(
  'Koa Session External Context Store › when session is › an object › should create a session',
  async (t) => {
    const app = contextStoreApp(t);
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
  'Koa Session External Context Store › when session is › anything else › should throw',
  async (t) => {
    const app = contextStoreApp(t);
    app.use((ctx) => {
      assignSession(ctx, 'asdf');
    });
    const client = await listen(t, app);
    const reply = await client.get('/');
    t.is(reply.status, 500);
  },
);

test.serial(
  'Koa Session External Context Store › session › .inspect() › should return session content',
  async (t) => {
    const app = contextStoreApp(t);
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
  'Koa Session External Context Store › session › .length › should return session length',
  async (t) => {
    const app = contextStoreApp(t);
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
  'Koa Session External Context Store › session › .populated › should return session populated',
  async (t) => {
    const app = contextStoreApp(t);
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

test.serial(
  'Koa Session External Context Store › session › .save() › should save session',
  async (t) => {
    const app = contextStoreApp(t);
    app.use((ctx) => {
      koaSession(ctx).save();
      ctx.body = 'hello';
    });
    const client = await listen(t, app);
    const reply = await client.get('/');
    expectSetCookie(t, reply, /koa\.sess=.+;/);
    t.is(reply.text, 'hello');
    t.is(reply.status, 200);
  },
);

test.serial(
  'Koa Session External Context Store › when an error is thrown downstream and caught upstream › should still save the session',
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
  "Koa Session External Context Store › when autoCommit is present › and set to false › should not set headers if manuallyCommit() isn't called",
  async (t) => {
    const app = contextStoreApp(t, { autoCommit: false });
    app.use((ctx) => {
      if (ctx.method === 'POST') {
        koaSession(ctx).message = 'hi';
        ctx.body = 200;
        return;
      }
      ctx.body = koaSession(ctx).message;
    });
    const client = await listen(t, app);
    const reply = await client.post('/');
    t.is(reply.status, 200);
    t.is(reply.setCookie, undefined, 'should not have set cookie');
  },
);

test.serial(
  'Koa Session External Context Store › when autoCommit is present › and set to false › should set headers if manuallyCommit() is called',
  async (t) => {
    const app = contextStoreApp(t, { autoCommit: false });
    app.use(async (ctx, next) => {
      if (ctx.method === 'POST') {
        koaSession(ctx).message = 'dummy';
      }
      await next();
    });
    app.use(async (ctx) => {
      ctx.body = 200;
      await koaSession(ctx).manuallyCommit();
    });
    const client = await listen(t, app);
    const reply = await client.post('/');
    expectSetCookie(t, reply, /koa\.sess/);
    t.is(reply.status, 200);
  },
);

test.serial(
  'Koa Session External Context Store › when maxAge present › and set to be a session cookie › should not expire the session',
  async (t) => {
    const app = contextStoreApp(t, { maxAge: 'session' });
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
    t.is(posted.status, 200);
    const setCookie = cookieHeader(posted);
    t.notRegex(setCookie, /expires=/);
    const read = await client.get('/', { cookie: setCookie });
    t.is(read.text, 'hi');
  },
);

test.serial(
  'Koa Session External Context Store › when maxAge present › and set to be a session cookie › should not expire the session after multiple session changes',
  async (t) => {
    const app = contextStoreApp(t, { maxAge: 'session' });
    app.use((ctx) => {
      const session = koaSession(ctx);
      session.count = (Number(session.count) || 0) + 1;
      ctx.body = `hi ${session.count}`;
    });
    const client = await listen(t, app);
    let reply = await client.get('/');
    expectSetCookie(t, reply, /koa\.sess/);
    t.is(reply.text, 'hi 1');
    t.is(reply.status, 200);
    let setCookie = cookieHeader(reply);
    t.notRegex(setCookie, /expires=/);

    reply = await client.get('/', { cookie: setCookie });
    expectSetCookie(t, reply, /koa\.sess/);
    t.is(reply.text, 'hi 2');
    t.is(reply.status, 200);
    setCookie = cookieHeader(reply);
    t.notRegex(setCookie, /expires=/);

    reply = await client.get('/', { cookie: setCookie });
    expectSetCookie(t, reply, /koa\.sess/);
    t.is(reply.text, 'hi 3');
    t.is(reply.status, 200);
    setCookie = cookieHeader(reply);
    t.notRegex(setCookie, /expires=/);
  },
);

// koa-session's schema error reads "Invalid input"; pg-sessions' equivalent is a
// SessionOptionsError that names the option, at construction.
test.serial(
  'Koa Session External Context Store › when maxAge present › and set to be a session cookie › should throw error when the maxAge improper string given',
  async (t) => {
    let created: SessionMiddleware | undefined;
    t.throws(
      () => {
        created = sessions(
          translate(db.appUrl, { maxAge: 'not the right string' as unknown as 'session' }),
        );
      },
      { name: 'SessionOptionsError', message: /maxAge/ },
    );
    await created?.close();
  },
);

test.serial(
  'Koa Session External Context Store › when maxAge present › and not expire › should not expire the session',
  async (t) => {
    const app = contextStoreApp(t, { maxAge: 100 });
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
    t.is(posted.status, 200);
    const read = await client.get('/', { cookie: cookieHeader(posted) });
    t.is(read.text, 'hi');
  },
);

test.serial(
  'Koa Session External Context Store › when maxAge present › and expired › should expire the sess',
  async (t) => {
    const app = contextStoreApp(t, { maxAge: 100 });
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
    t.is(posted.status, 200);
    await sleep(200);
    const read = await client.get('/', { cookie: cookieHeader(posted) });
    t.is(read.text, '');
  },
);

test.serial(
  'Koa Session External Context Store › ctx.session.maxAge › should return opt.maxAge',
  async (t) => {
    const app = contextStoreApp(t, { maxAge: 100 });
    app.use((ctx) => {
      ctx.body = koaSession(ctx).maxAge;
    });
    const client = await listen(t, app);
    const reply = await client.get('/');
    t.is(reply.text, '100');
  },
);

test.serial(
  'Koa Session External Context Store › ctx.session.maxAge= › should set sessionOptions.maxAge',
  async (t) => {
    const app = contextStoreApp(t);
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
  'Koa Session External Context Store › ctx.session.maxAge= › should save even session not change',
  async (t) => {
    const app = contextStoreApp(t);
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
  'Koa Session External Context Store › ctx.session.maxAge= › should save when create session only with maxAge',
  async (t) => {
    const app = contextStoreApp(t);
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
  'Koa Session External Context Store › when store return empty › should create new Session',
  async (t) => {
    const app = contextStoreApp(t, { signed: false });
    app.use((ctx) => {
      ctx.body = String(koaSession(ctx).isNew);
    });
    const client = await listen(t, app);
    const reply = await client.get('/', { cookie: 'koa.sess=invalid-key' });
    t.is(reply.text, 'true');
    t.is(reply.status, 200);
  },
);

test.serial(
  'Koa Session External Context Store › when valid and beforeSave set › should ignore session when uid changed',
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
    const client = await listen(t, app);
    const first = await client.get('/', { cookie: 'uid=123' });
    t.is(first.status, 200);
    const data = first.body as { foo: string; uid: string };
    const cookies = cookieHeader(first);
    t.regex(cookies, /koa\.sess=/);

    const same = await client.get('/', { cookie: `${cookies};uid=123` });
    t.is(same.status, 200);
    t.deepEqual(same.body, data);

    // should ignore uid:123 session and create a new session for uid:456
    const other = await client.get('/', { cookie: `${cookies};uid=456` });
    t.is(other.status, 200);
    const otherBody = other.body as { foo: string; uid: string };
    t.is(otherBody.uid, '456');
    t.not(otherBody.foo, data.foo);
  },
);

test.serial('Koa Session External Context Store › ctx.session › can be mocked', async (t) => {
  const app = contextStoreApp(t);
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
