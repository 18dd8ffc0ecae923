// `durability: 'relaxed'` (issue 22): the middleware's ordinary data writes, and the
// creation of a session no user is bound to, commit with synchronous_commit = off; a
// rotation, a user binding, a revocation, a logout and every write in a request
// transaction still commit durably. A probe trigger records the transaction's
// synchronous_commit at the moment each write changes the row, which is what its
// COMMIT then uses.
import test from 'ava';
import type pg from 'pg';
import { type SessionOptions, sessions } from '../src/index.js';
import type { TestDatabase } from '../src/testing/index.js';
import { setupDatabase } from './helpers/database.js';
import { Browser, startApp, type TestApp } from './helpers/http.js';

let db: TestDatabase;
let admin: pg.Pool;

test.before(async () => {
  ({ db, admin } = await setupDatabase());
  await admin.query(`
    CREATE TABLE public.commit_probe (seq bigserial, op text, sync text);
    GRANT INSERT ON public.commit_probe TO PUBLIC;
    GRANT USAGE ON SEQUENCE public.commit_probe_seq_seq TO PUBLIC;
    CREATE FUNCTION public.probe_commit() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
      INSERT INTO public.commit_probe (op, sync)
      VALUES (TG_OP, current_setting('synchronous_commit'));
      RETURN NULL;
    END $$;
    CREATE TRIGGER session_commit_probe AFTER INSERT OR UPDATE OR DELETE ON sessions.session
      FOR EACH ROW EXECUTE FUNCTION public.probe_commit();
  `);
});

test.after.always(async () => {
  await admin?.end();
  await db?.drop();
});

async function app(options: Partial<SessionOptions>): Promise<TestApp> {
  return startApp(
    { database: db.appUrl, gc: false, touchInterval: 60_000, ...options },
    (router) => {
      router.post('/set', (ctx) => {
        Object.assign(ctx.session!, ctx.request.query);
        ctx.body = 'ok';
      });
      router.post('/login', (ctx) => {
        ctx.sessions.bindUser(String(ctx.query.user));
        ctx.body = 'ok';
      });
      router.post('/regenerate', (ctx) => {
        ctx.sessions.regenerate();
        ctx.body = 'ok';
      });
      router.post('/revoke-self', async (ctx) => {
        ctx.body = await ctx.sessions.revoke(ctx.sessions.id!, 'signed_out');
      });
      router.post('/logout', (ctx) => {
        ctx.session = null;
        ctx.body = 'bye';
      });
    },
  );
}

/** The synchronous_commit of each row change since `after`, as `op:setting`. */
async function commits(after: number): Promise<string[]> {
  const { rows } = await admin.query<{ op: string; sync: string }>(
    'SELECT op, sync FROM public.commit_probe WHERE seq > $1 ORDER BY seq',
    [after],
  );
  return rows.map((row) => `${row.op}:${row.sync}`);
}

async function mark(): Promise<number> {
  const { rows } = await admin.query<{ seq: string | null }>(
    'SELECT max(seq)::text AS seq FROM public.commit_probe',
  );
  return Number(rows[0]?.seq ?? 0);
}

test.serial('relaxed: a data write and an anonymous creation commit asynchronously', async (t) => {
  const relaxed = await app({ durability: 'relaxed' });
  t.teardown(() => relaxed.close());
  const browser = new Browser(relaxed.url);
  const before = await mark();
  await browser.post('/set?a=1');
  await browser.post('/set?b=2');
  t.deepEqual(await commits(before), ['INSERT:off', 'UPDATE:off']);
});

test.serial(
  'relaxed: a sign-in, a rotation, a revocation and a logout still commit durably',
  async (t) => {
    const relaxed = await app({ durability: 'relaxed' });
    t.teardown(() => relaxed.close());
    const browser = new Browser(relaxed.url);
    await browser.post('/set?a=1');
    let before = await mark();
    await browser.post('/login?user=ada');
    t.deepEqual(await commits(before), ['UPDATE:on'], 'bindUser (with its rotation)');
    before = await mark();
    await browser.post('/regenerate');
    t.deepEqual(await commits(before), ['UPDATE:on'], 'regenerate');
    before = await mark();
    t.is((await browser.post('/revoke-self')).body, true);
    t.deepEqual(await commits(before), ['UPDATE:on'], 'revoke');
    await browser.post('/set?fresh=1');
    before = await mark();
    await browser.post('/logout');
    t.deepEqual(await commits(before), ['DELETE:on'], 'logout');
  },
);

test.serial(
  'relaxed: a request transaction commits durably (it holds the app’s writes too)',
  async (t) => {
    const relaxed = await app({ durability: 'relaxed', transaction: 'request' });
    t.teardown(() => relaxed.close());
    const browser = new Browser(relaxed.url);
    const before = await mark();
    await browser.post('/set?a=1');
    await browser.post('/set?b=2');
    t.deepEqual(await commits(before), ['INSERT:on', 'UPDATE:on']);
  },
);

test.serial('durable (the default): every write commits durably', async (t) => {
  const durable = await app({});
  t.teardown(() => durable.close());
  const browser = new Browser(durable.url);
  const before = await mark();
  await browser.post('/set?a=1');
  await browser.post('/set?b=2');
  t.deepEqual(await commits(before), ['INSERT:on', 'UPDATE:on']);
});

test('an unknown durability is refused at construction, naming the option', (t) => {
  const error = t.throws(() => sessions({ database: db.appUrl, durability: 'fast' as never }));
  t.regex(String(error?.message), /durability/);
});
