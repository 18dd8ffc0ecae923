import test from 'ava';
import type pg from 'pg';
import type { TestDatabase } from '../src/testing/index.js';
import { setupDatabase } from './helpers/database.js';
import { Browser, startApp, type TestApp } from './helpers/http.js';

// Every middleware action, over real HTTP, leaves exactly its events in sessions.event.
// Serial: a GC run collects across tenants and would add events to another test's.

let db: TestDatabase;
let admin: pg.Pool;
let app: TestApp;

test.before(async () => {
  ({ db, admin } = await setupDatabase());
  app = await startApp(
    {
      database: db.appUrl,
      touchInterval: 0,
      // Each test its own tenant, so its log holds only its own events.
      tenant: (ctx) => ctx.get('x-tenant') || 'default',
      // An operator console names itself; everyone else is the default actor.
      actor: (ctx, userId) =>
        ctx.get('x-actor') || (userId === null ? 'anonymous' : `user:${userId}`),
      transaction: (ctx) => (ctx.get('x-transaction') === 'request' ? 'request' : 'none'),
      gc: { interval: 3_600_000 },
    },
    (router) => {
      router.post('/set', (ctx) => {
        Object.assign(ctx.session!, ctx.request.query);
        ctx.body = { id: ctx.sessions.id };
      });
      router.post('/delete-key', (ctx) => {
        delete (ctx.session as Record<string, unknown>)[String(ctx.query.key)];
        ctx.body = 'ok';
      });
      router.get('/read', (ctx) => {
        ctx.body = { data: ctx.session?.toJSON() ?? null, id: ctx.sessions.id };
      });
      router.post('/regenerate', (ctx) => {
        ctx.sessions.regenerate();
        ctx.body = 'ok';
      });
      router.post('/login', (ctx) => {
        ctx.sessions.bindUser(String(ctx.query.user));
        if (ctx.query.remember) ctx.session!.remember = ctx.query.remember;
        ctx.body = { id: ctx.sessions.id };
      });
      router.post('/logout', (ctx) => {
        ctx.session = null;
        ctx.body = 'bye';
      });
      router.post('/revoke', async (ctx) => {
        ctx.body = await ctx.sessions.revoke(String(ctx.query.id), String(ctx.query.reason));
      });
      router.post('/revoke-user', async (ctx) => {
        ctx.body = await ctx.sessions.revokeUser(String(ctx.query.user), {
          reason: String(ctx.query.reason),
        });
      });
    },
  );
});

test.after.always(async () => {
  await app?.close();
  await admin?.end();
  await db?.drop();
});

interface EventRow {
  kind: string;
  session_id: string;
  user_id: string | null;
  version: number;
  changed_keys: string[] | null;
  reason: string | null;
  actor: string;
}

async function events(tenant: string): Promise<EventRow[]> {
  const result = await admin.query<EventRow>(
    `SELECT kind, session_id, user_id, version::int AS version, changed_keys, reason, actor
       FROM sessions.event WHERE tenant_id = $1 ORDER BY id`,
    [tenant],
  );
  return result.rows;
}

function browserFor(tenant: string, headers: Record<string, string> = {}) {
  const browser = new Browser(app.url);
  const request = browser.request.bind(browser);
  browser.request = (path, init = {}) =>
    request(path, { ...init, headers: { 'x-tenant': tenant, ...headers, ...init.headers } });
  return browser;
}

/** The public id of the browser's session (known once a request has saved it). */
async function idOf(browser: Browser): Promise<string> {
  const { body } = await browser.get('/read');
  const id = (body as { id: string | null }).id;
  if (!id) throw new Error('the browser has no session');
  return id;
}

const event = (
  kind: string,
  session_id: string,
  version: number,
  fields: Partial<EventRow> = {},
): EventRow => ({
  kind,
  session_id,
  user_id: null,
  version,
  changed_keys: null,
  reason: null,
  actor: 'anonymous',
  ...fields,
});

test.serial(
  'creating a session logs created, with the address and the agent, never the data',
  async (t) => {
    const browser = browserFor('ev-create');
    await browser.request('/set?secret=hunter2', {
      method: 'POST',
      headers: { 'user-agent': 'audit-test/1.0' },
    });
    const id = await idOf(browser);
    t.deepEqual(await events('ev-create'), [event('created', id, 1)]);
    const created = await admin.query(
      `SELECT host(ip) AS ip, user_agent FROM sessions.event WHERE tenant_id = 'ev-create'`,
    );
    t.true(['127.0.0.1', '::ffff:127.0.0.1'].includes(created.rows[0].ip));
    t.is(created.rows[0].user_agent, 'audit-test/1.0');
    await browser.post('/set?secret=swordfish');
    const leaked = await admin.query(
      `SELECT count(*)::int AS n FROM sessions.event e
      WHERE row_to_json(e)::text LIKE '%hunter2%' OR row_to_json(e)::text LIKE '%swordfish%'`,
    );
    t.is(leaked.rows[0].n, 0, 'no event holds a value');
  },
);

test.serial(
  'updates log the changed key names and the new version; reads and touches log nothing',
  async (t) => {
    const browser = browserFor('ev-update');
    await browser.post('/set?a=1&b=2');
    const id = await idOf(browser);
    await browser.post('/set?c=3');
    await browser.post('/set?b=20&d=4&a=1');
    await browser.post('/delete-key?key=c');
    await browser.get('/read');
    await browser.post('/set?a=1');
    await app.middleware.flushTouches();
    t.deepEqual(await events('ev-update'), [
      event('created', id, 1),
      event('updated', id, 2, { changed_keys: ['c'] }),
      event('updated', id, 3, { changed_keys: ['b', 'd'] }),
      event('updated', id, 4, { changed_keys: ['c'] }),
    ]);
  },
);

test.serial('regenerate logs rotated with the new version', async (t) => {
  const browser = browserFor('ev-rotate');
  await browser.post('/set?a=1');
  const id = await idOf(browser);
  await browser.post('/regenerate');
  t.deepEqual(await events('ev-rotate'), [event('created', id, 1), event('rotated', id, 2)]);
});

test.serial(
  'bindUser logs rotated and user_bound (and updated for data) as the user',
  async (t) => {
    const browser = browserFor('ev-login');
    await browser.post('/set?cart=1');
    const id = await idOf(browser);
    await browser.post('/login?user=alice');
    await browser.post('/login?user=bob&remember=yes');
    const alice = { user_id: 'alice', actor: 'user:alice' };
    const bob = { user_id: 'bob', actor: 'user:bob' };
    t.deepEqual(await events('ev-login'), [
      event('created', id, 1),
      event('rotated', id, 2, alice),
      event('user_bound', id, 2, alice),
      event('rotated', id, 3, bob),
      event('user_bound', id, 3, bob),
      event('updated', id, 3, { ...bob, changed_keys: ['remember'] }),
    ]);
  },
);

test.serial('a login inside a request transaction is logged with the same actor', async (t) => {
  const browser = browserFor('ev-trx', { 'x-transaction': 'request' });
  await browser.post('/login?user=carol');
  const id = await idOf(browser);
  await browser.post('/set?step=2');
  const carol = { user_id: 'carol', actor: 'user:carol' };
  t.deepEqual(await events('ev-trx'), [
    event('created', id, 1, carol),
    event('updated', id, 2, { ...carol, changed_keys: ['step'] }),
  ]);
});

test.serial('revoke logs revoked with the reason and the actor who revoked', async (t) => {
  const user = browserFor('ev-revoke');
  await user.post('/login?user=dave');
  const id = await idOf(user);
  const operator = browserFor('ev-revoke', { 'x-actor': 'admin:alice' });
  const revoked = await operator.post(`/revoke?id=${id}&reason=device_lost`);
  t.is(revoked.body, true);
  const dave = { user_id: 'dave', actor: 'user:dave' };
  t.deepEqual(await events('ev-revoke'), [
    event('created', id, 1, dave),
    event('revoked', id, 2, { user_id: 'dave', actor: 'admin:alice', reason: 'device_lost' }),
  ]);
  // The revoked session is no longer accepted: the next request starts afresh.
  const after = await user.get('/read');
  t.is((after.body as { id: string | null }).id, null);
});

test.serial('revokeUser logs one revoked event per live session of the user', async (t) => {
  const phone = browserFor('ev-revoke-user');
  const laptop = browserFor('ev-revoke-user');
  const other = browserFor('ev-revoke-user');
  await phone.post('/login?user=erin');
  const a = await idOf(phone);
  await laptop.post('/login?user=erin');
  const b = await idOf(laptop);
  await other.post('/login?user=frank');
  const c = await idOf(other);
  const operator = browserFor('ev-revoke-user', { 'x-actor': 'admin:security' });
  t.is((await operator.post('/revoke-user?user=erin&reason=password_changed')).body, 2);
  const log = await events('ev-revoke-user');
  const erin = { user_id: 'erin', actor: 'user:erin' };
  const revokedBy = { user_id: 'erin', actor: 'admin:security', reason: 'password_changed' };
  t.deepEqual(log.slice(0, 3), [
    event('created', a, 1, erin),
    event('created', b, 1, erin),
    event('created', c, 1, { user_id: 'frank', actor: 'user:frank' }),
  ]);
  const revokedEvents = log.slice(3).sort((x, y) => (x.session_id < y.session_id ? -1 : 1));
  t.deepEqual(
    revokedEvents,
    [event('revoked', a, 2, revokedBy), event('revoked', b, 2, revokedBy)].sort((x, y) =>
      x.session_id < y.session_id ? -1 : 1,
    ),
  );
});

test.serial('destroy logs destroyed with the last version', async (t) => {
  const browser = browserFor('ev-destroy');
  await browser.post('/set?a=1');
  const id = await idOf(browser);
  await browser.post('/set?a=2');
  await browser.post('/logout');
  t.deepEqual(await events('ev-destroy'), [
    event('created', id, 1),
    event('updated', id, 2, { changed_keys: ['a'] }),
    event('destroyed', id, 2),
  ]);
});

test.serial(
  'garbage collection logs expired (and purged for a revoked row) as pg-sessions:gc',
  async (t) => {
    const expiring = browserFor('ev-gc');
    await expiring.post('/set?a=1');
    const expiredId = await idOf(expiring);
    const revokedUser = browserFor('ev-gc');
    await revokedUser.post('/login?user=gina');
    const revokedId = await idOf(revokedUser);
    await browserFor('ev-gc', { 'x-actor': 'admin:alice' }).post(
      `/revoke?id=${revokedId}&reason=admin`,
    );
    const live = browserFor('ev-gc');
    await live.post('/set?b=1');
    const liveId = await idOf(live);
    // Expiry is activity, not content: moving it logs nothing and keeps the version.
    await admin.query(
      `UPDATE sessions.session SET idle_expires_at = now() - interval '1 second' WHERE id = $1`,
      [expiredId],
    );
    const run = await app.middleware.collectGarbage();
    t.true(run?.ran);
    // The collector names itself; the login role would be the fallback.
    const role = 'pg-sessions:gc';
    const log = await events('ev-gc');
    t.deepEqual(log.slice(0, 4), [
      event('created', expiredId, 1),
      event('created', revokedId, 1, { user_id: 'gina', actor: 'user:gina' }),
      event('revoked', revokedId, 2, { user_id: 'gina', actor: 'admin:alice', reason: 'admin' }),
      event('created', liveId, 1),
    ]);
    // One GC batch deletes both rows in one statement, in no particular order.
    t.deepEqual(
      log.slice(4).sort((a, b) => a.kind.localeCompare(b.kind)),
      [
        event('expired', expiredId, 1, { reason: 'gc', actor: role }),
        event('purged', revokedId, 2, { user_id: 'gina', reason: 'gc', actor: role }),
      ],
    );
    // The expired session counts as ended once, the purge of a revoked one not again.
    const daily = await admin.query(
      `SELECT created::int, ended::int, revoked::int, expired::int, destroyed::int
       FROM sessions.daily_session_counts WHERE tenant_id = 'ev-gc'`,
    );
    t.deepEqual(daily.rows, [{ created: 3, ended: 2, revoked: 1, expired: 1, destroyed: 0 }]);
  },
);

test.serial(
  "an operator's hand-written UPDATE of columns no operation changes logs altered, naming them",
  async (t) => {
    const browser = browserFor('ev-altered');
    await browser.post('/login?user=hal');
    const id = await idOf(browser);
    const hal = { user_id: 'hal', actor: 'user:hal' };
    const operator = async (statement: string) => {
      const client = await admin.connect();
      try {
        await client.query('BEGIN');
        await client.query(`SELECT set_config('sessions.actor', 'dba:olga', true)`);
        await client.query(statement, [id]);
        await client.query('COMMIT');
      } catch (error) {
        await client.query('ROLLBACK');
        throw error;
      } finally {
        client.release();
      }
    };
    await operator(
      `UPDATE sessions.session SET user_agent = 'forged', ip = '10.0.0.1' WHERE id = $1`,
    );
    await operator(
      `UPDATE sessions.session SET revoked_at = now(), revoked_reason = 'incident' WHERE id = $1`,
    );
    await operator(`UPDATE sessions.session SET revoked_reason = 'incident-42' WHERE id = $1`);
    // Undoing a revocation is refused outright; back-dating one is logged.
    await t.throwsAsync(operator(`UPDATE sessions.session SET revoked_at = NULL WHERE id = $1`), {
      message: /cannot be un-revoked/,
    });
    await operator(
      `UPDATE sessions.session SET revoked_at = revoked_at - interval '1 hour' WHERE id = $1`,
    );
    const olga = { user_id: 'hal', actor: 'dba:olga' };
    t.deepEqual(await events('ev-altered'), [
      event('created', id, 1, hal),
      event('altered', id, 2, { ...olga, changed_keys: ['ip', 'user_agent'] }),
      event('revoked', id, 3, { ...olga, reason: 'incident' }),
      event('altered', id, 4, { ...olga, changed_keys: ['revoked_reason'] }),
      event('altered', id, 5, { ...olga, changed_keys: ['revoked_at'] }),
    ]);
  },
);
