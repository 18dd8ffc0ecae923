// Tokens that name their session (migration 12): the session's id, then the secret.
// The id routes (on Citus, to the worker holding the session); the secret is the
// credential; tokens issued before, without an id, keep working.
import { randomBytes, randomUUID } from 'node:crypto';
import test from 'ava';
import type pg from 'pg';
import type { SessionOptions } from '../src/index.js';
import type { TestDatabase } from '../src/testing/index.js';
import { generateToken, hashToken, sessionIdOf } from '../src/token.js';
import { setupDatabase } from './helpers/database.js';
import { Browser, startApp, type TestApp } from './helpers/http.js';

let db: TestDatabase;
let admin: pg.Pool;

test.before(async () => {
  ({ db, admin } = await setupDatabase());
});

test.after.always(async () => {
  await admin?.end();
  await db?.drop();
});

async function app(options: Partial<SessionOptions> = {}): Promise<TestApp> {
  return startApp({ database: db.appUrl, gc: false, bearer: true, ...options }, (router) => {
    // Saved now (koa-session's save()), so the response can show the token and the id.
    router.post('/set', async (ctx) => {
      Object.assign(ctx.session!, ctx.request.query);
      await ctx.session!.save();
      ctx.body = { token: ctx.sessions.token, id: ctx.sessions.id };
    });
    router.post('/login', async (ctx) => {
      ctx.sessions.bindUser(String(ctx.query.user));
      await ctx.session!.save();
      ctx.body = { token: ctx.sessions.token, id: ctx.sessions.id };
    });
    router.post('/logout', (ctx) => {
      ctx.session = null;
      ctx.body = 'bye';
    });
    router.get('/get', (ctx) => {
      ctx.body = { id: ctx.sessions.id, data: ctx.session!.toJSON() };
    });
  });
}

/** A session row made the way release 0.1 made it: a 43-character token, no id in it. */
async function sessionOfTheEarlierKind(data: Record<string, unknown>): Promise<string> {
  const token = randomBytes(32).toString('base64url');
  await admin.query(
    `INSERT INTO sessions.session (tenant_id, token_hash, data, idle_expires_at, absolute_expires_at)
     VALUES ('default', $1, $2, now() + interval '1 day', now() + interval '7 days')`,
    [hashToken(token), JSON.stringify(data)],
  );
  return token;
}

const bearer = (token: string) => ({ authorization: `Bearer ${token}` });

test('a new token names its session; a rotation keeps the id, a new session after logout gets another', async (t) => {
  const server = await app();
  try {
    const browser = new Browser(server.url);
    const created = (await browser.post('/set?a=1')).body as { token: string; id: string };
    t.is(created.token.length, 65);
    t.is(sessionIdOf(created.token), created.id);
    const login = (await browser.post('/login?user=ada')).body as { token: string; id: string };
    t.not(login.token, created.token, 'rotated');
    t.is(login.id, created.id);
    t.is(sessionIdOf(login.token), created.id, 'the same session, the same id');
    await browser.post('/logout');
    const next = (await browser.post('/set?b=2')).body as { token: string; id: string };
    t.not(next.id, created.id);
    t.is(sessionIdOf(next.token), next.id);
  } finally {
    await server.close();
  }
});

test('a token issued before tokens named their session still reaches it, cached or not', async (t) => {
  for (const options of [{}, { cache: false as const }, { mode: 'lock' as const }]) {
    const server = await app(options);
    try {
      const token = await sessionOfTheEarlierKind({ kept: true });
      const client = new Browser(server.url);
      for (let round = 0; round < 2; round++) {
        const read = await client.get('/get', bearer(token));
        t.deepEqual((read.body as { data: unknown }).data, { kept: true }, JSON.stringify(options));
      }
    } finally {
      await server.close();
    }
  }
});

test('an id that is not the token’s session finds nothing: another session’s id, or a made-up one', async (t) => {
  const server = await app();
  try {
    const victim = new Browser(server.url);
    const { token, id } = (await victim.post('/set?secret=1')).body as {
      token: string;
      id: string;
    };
    const other = (await new Browser(server.url).post('/set?other=1')).body as { id: string };
    const secret = token.slice(22);
    const respelt = (sessionId: string) => generateToken(sessionId).slice(0, 22) + secret;
    for (const forged of [respelt(other.id), respelt(randomUUID()), generateToken(id)]) {
      const read = await new Browser(server.url).get('/get', bearer(forged));
      t.deepEqual(read.body, { id: null, data: {} }, forged);
    }
    const own = await new Browser(server.url).get('/get', bearer(respelt(id)));
    t.deepEqual((own.body as { data: unknown }).data, { secret: '1' }, 'the genuine token');
  } finally {
    await server.close();
  }
});

test('lock mode takes no lock for a made-up secret under a real session id', async (t) => {
  const server = await app({ mode: 'lock', lockTimeout: 2_000 });
  try {
    const owner = new Browser(server.url);
    const { id } = (await owner.post('/set?n=1')).body as { id: string };
    // Hold the session's lock the way a lock-mode request does, from another connection.
    const holder = await admin.connect();
    try {
      await holder.query('BEGIN');
      await holder.query(`SELECT pg_advisory_xact_lock(${0x7067736c}, hashtext($1))`, [id]);
      // Waiting for the lock would end in 503 SESSION_LOCK_TIMEOUT after lockTimeout.
      const forged = await new Browser(server.url).get('/get', bearer(generateToken(id)));
      t.is(forged.status, 200);
      t.deepEqual(forged.body, { id: null, data: {} });
    } finally {
      await holder.query('ROLLBACK');
      holder.release();
    }
  } finally {
    await server.close();
  }
});
