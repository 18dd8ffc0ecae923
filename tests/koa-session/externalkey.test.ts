// koa-session 7.0.2's test/externalkey.test.ts ("Koa Session External Key"), run
// against sessions(): the session key travels in a `User-Token` header that
// koa-session's `externalKey` option reads and writes, instead of the cookie. The
// option is passed under koa-session's name; its store is the database.
import test, { type ExecutionContext } from 'ava';
import type Koa from 'koa';
import type pg from 'pg';
import { type SessionMiddleware, sessions } from '../../src/index.js';
import type { TestDatabase } from '../../src/testing/index.js';
import { setupDatabase } from '../helpers/database.js';
import { type KoaSessionOptions, koaApp, koaSession, listen, translate } from './harness.js';

const TOKEN_KEY = 'User-Token';

let db: TestDatabase;
let admin: pg.Pool;

test.before(async () => {
  ({ db, admin } = await setupDatabase());
});

test.after.always(async () => {
  await admin?.end();
  await db?.drop();
});

/** koa-session's `App()` of this file: the key in the `User-Token` header by default. */
function externalKeyApp(t: ExecutionContext, options: KoaSessionOptions = {}): Koa {
  return koaApp(t, db.appUrl, {
    ...options,
    externalKey: options.externalKey ?? {
      get: (ctx) => ctx.get(TOKEN_KEY),
      set: (ctx, value) => ctx.set(TOKEN_KEY, value),
    },
  });
}

// koa-session's schema rejects it with a ZodError naming externalKey; pg-sessions'
// equivalent is a SessionOptionsError naming it, at construction.
test.serial(
  'Koa Session External Key › when the external key set/get is invalid › should throw a error',
  async (t) => {
    let created: SessionMiddleware | undefined;
    t.throws(
      () => {
        created = sessions(
          translate(db.appUrl, { externalKey: {} as unknown as KoaSessionOptions['externalKey'] }),
        );
      },
      { name: 'SessionOptionsError', message: /externalKey/ },
    );
    await created?.close();
  },
);

test.serial(
  'Koa Session External Key › custom get/set external key › should still work',
  async (t) => {
    const app = externalKeyApp(t);
    const seen: { externalKey: unknown; header: string }[] = [];
    app.use((ctx) => {
      const session = koaSession(ctx);
      if (ctx.method === 'POST') {
        session.string = ';';
        ctx.status = 204;
        seen.push({ externalKey: session.externalKey, header: '' });
      } else {
        ctx.body = session.string;
        seen.push({ externalKey: session.externalKey, header: ctx.get(TOKEN_KEY) });
      }
    });
    const client = await listen(t, app);
    const posted = await client.post('/');
    t.is(posted.status, 204);
    t.truthy(seen[0]?.externalKey);
    const token = posted.headers.get(TOKEN_KEY) ?? '';
    const read = await client.get('/', { [TOKEN_KEY]: token });
    t.is(seen[1]?.externalKey, seen[1]?.header);
    t.is(read.text, ';');
  },
);
