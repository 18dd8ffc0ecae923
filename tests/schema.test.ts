import { randomBytes } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import test from 'ava';
import pg from 'pg';
import { createTestDatabase, type TestDatabase } from '../src/testing/index.js';
import { schemaSnapshot } from '../src/testing/schema-snapshot.js';

let db: TestDatabase;
let admin: pg.Pool;

test.before(async () => {
  db = await createTestDatabase();
  admin = new pg.Pool({ connectionString: db.url, max: 4 });
  // pool.end() resolves before its clients' connections are closed, so the drop WITH
  // (FORCE) below can still terminate one: an idle client's error then goes to the
  // pool, and an 'error' event without a listener is an uncaught exception.
  admin.on('error', () => {});
});

test.after.always(async () => {
  await admin?.end();
  await db?.drop();
});

/** Inserts a session as superuser; expiry in seconds from now (negative: already expired). */
async function insertSession(
  tenant: string,
  options: { expiresIn?: number; revoked?: boolean; userId?: string; data?: object } = {},
) {
  const result = await admin.query(
    `INSERT INTO sessions.session (tenant_id, token_hash, user_id, data, idle_expires_at, absolute_expires_at, revoked_at, revoked_reason)
     VALUES ($1, $2, $3, $4, now() + make_interval(secs => $5), now() + interval '1 day', $6, $7)
     RETURNING id, version::int AS version, encode(token_hash, 'hex') AS hash`,
    [
      tenant,
      randomBytes(32),
      options.userId ?? null,
      JSON.stringify(options.data ?? {}),
      options.expiresIn ?? 3600,
      options.revoked ? new Date() : null,
      options.revoked ? 'test' : null,
    ],
  );
  return result.rows[0] as { id: string; version: number; hash: string };
}

/** Runs `work` as sessions_app (through its login role) with the tenant set, or none. */
async function asApp<T>(
  tenant: string | null,
  work: (client: pg.Client) => Promise<T>,
): Promise<T> {
  const client = new pg.Client(db.appUrl);
  await client.connect();
  try {
    await client.query('BEGIN');
    if (tenant !== null)
      await client.query(`SELECT set_config('sessions.tenant', $1, true)`, [tenant]);
    const result = await work(client);
    await client.query('COMMIT');
    return result;
  } catch (error) {
    await client.query('ROLLBACK').catch(() => {});
    throw error;
  } finally {
    await client.end();
  }
}

test('the committed schema.sql matches the migrated schema (run `npm run schema:dump` after a migration)', async (t) => {
  const committed = await readFile(new URL('../schema.sql', import.meta.url), 'utf8');
  t.is(await schemaSnapshot(db.url), committed);
});

test('version bumps by one on every content change, never on a no-op or a touch', async (t) => {
  const { id } = await insertSession('v');
  const version = async () =>
    (
      await admin.query(
        'SELECT version::int AS v, updated_at FROM sessions.session WHERE id = $1',
        [id],
      )
    ).rows[0];
  const start = await version();
  t.is(start.v, 1);
  await admin.query(`UPDATE sessions.session SET data = data || '{"a":1}' WHERE id = $1`, [id]);
  t.is((await version()).v, 2);
  await admin.query('UPDATE sessions.session SET data = data WHERE id = $1', [id]);
  t.is((await version()).v, 2, 'no-op update');
  await admin.query(
    `UPDATE sessions.session SET last_seen_at = now(), idle_expires_at = idle_expires_at + interval '1 minute' WHERE id = $1`,
    [id],
  );
  t.is((await version()).v, 2, 'a touch is activity, not a change');
  await admin
    .query('UPDATE sessions.session SET version = 100 WHERE id = $1', [id])
    .catch(() => {});
  t.is((await version()).v, 2, 'the version cannot be set by hand');
  await admin.query(`UPDATE sessions.session SET user_id = 'u1' WHERE id = $1`, [id]);
  t.is((await version()).v, 3);
});

test('an update and a delete each deliver exactly one notification with the payload', async (t) => {
  const { id, hash } = await insertSession('n');
  const listener = new pg.Client(db.url);
  await listener.connect();
  const messages: string[] = [];
  listener.on('notification', (message) => messages.push(message.payload ?? ''));
  await listener.query('LISTEN sessions_changed');
  await admin.query(`UPDATE sessions.session SET data = '{"k":"v"}' WHERE id = $1`, [id]);
  await admin.query(`UPDATE sessions.session SET last_seen_at = now() WHERE id = $1`, [id]);
  await admin.query('DELETE FROM sessions.session WHERE id = $1', [id]);
  await new Promise((resolve) => setTimeout(resolve, 300));
  await listener.end();
  // Other tests of this file run meanwhile: keep the messages that name this session.
  const mine = messages
    .map((message) => JSON.parse(message) as { op: string; s?: unknown[][] })
    .filter((message) => message.s?.some((entry) => entry[1] === id));
  // Each entry: tenant, id, the hash before, the version after, what happened, the user,
  // the reason and the database's time (ms).
  const at = mine.map((message) => message.s?.[0]?.[7]);
  t.true(at.every((ms) => typeof ms === 'number' && Math.abs(Date.now() - ms) < 60_000));
  t.deepEqual(
    mine.map((message) => ({ op: message.op, s: message.s?.map((entry) => entry.slice(0, 7)) })),
    [
      { op: 'update', s: [['n', id, hash, 2, 'updated', null, null]] },
      { op: 'delete', s: [['n', id, hash, 2, 'destroyed', null, null]] },
    ],
  );
});

test('sessions_app sees, changes and deletes only the tenant it set, and nothing without one', async (t) => {
  const a = await insertSession('tenant-a');
  const b = await insertSession('tenant-b');
  const seen = await asApp('tenant-a', async (client) => {
    const rows = await client.query('SELECT id FROM sessions.session');
    const updated = await client.query(
      `UPDATE sessions.session SET data = '{"x":1}' WHERE id = $1`,
      [b.id],
    );
    const deleted = await client.query('DELETE FROM sessions.session WHERE id = $1', [b.id]);
    return {
      ids: rows.rows.map((row) => row.id),
      updated: updated.rowCount,
      deleted: deleted.rowCount,
    };
  });
  t.true(seen.ids.includes(a.id));
  t.false(seen.ids.includes(b.id));
  t.is(seen.updated, 0);
  t.is(seen.deleted, 0);
  const stillThere = await admin.query(
    'SELECT version::int AS v FROM sessions.session WHERE id = $1',
    [b.id],
  );
  t.is(stillThere.rows[0].v, 1);

  await t.throwsAsync(
    asApp('tenant-a', (client) =>
      client.query(
        `INSERT INTO sessions.session (tenant_id, token_hash, idle_expires_at, absolute_expires_at)
         VALUES ('tenant-b', $1, now() + interval '1 hour', now() + interval '1 day')`,
        [randomBytes(32)],
      ),
    ),
    { message: /row-level security/ },
  );
  const none = await asApp(
    null,
    async (client) =>
      (await client.query('SELECT count(*)::int AS n FROM sessions.session')).rows[0].n,
  );
  t.is(none, 0, 'fails closed with no tenant set');
  const empty = await asApp(
    '',
    async (client) =>
      (await client.query('SELECT count(*)::int AS n FROM sessions.session')).rows[0].n,
  );
  t.is(empty, 0, 'fails closed with an empty tenant');
});

test('the app role cannot read, insert, update or delete events, yet its changes are logged', async (t) => {
  const { id } = await asApp('ev', async (client) => {
    const inserted = await client.query(
      `INSERT INTO sessions.session (tenant_id, token_hash, idle_expires_at, absolute_expires_at)
       VALUES ('ev', $1, now() + interval '1 hour', now() + interval '1 day') RETURNING id`,
      [randomBytes(32)],
    );
    return inserted.rows[0];
  });
  for (const statement of [
    'SELECT * FROM sessions.event',
    `INSERT INTO sessions.event (tenant_id, session_id, kind, actor) VALUES ('ev', gen_random_uuid(), 'created', 'x')`,
    `UPDATE sessions.event SET actor = 'forged'`,
    'DELETE FROM sessions.event',
  ]) {
    await t.throwsAsync(
      asApp('ev', (client) => client.query(statement)),
      { message: /permission denied/ },
      statement,
    );
  }
  const events = await admin.query('SELECT kind FROM sessions.event WHERE session_id = $1', [id]);
  t.deepEqual(events.rows, [{ kind: 'created' }]);
});

test('the auditor reads events and views across tenants but never token_hash or data, and writes nothing', async (t) => {
  await insertSession('aud-1', { userId: 'u' });
  await insertSession('aud-2', { userId: 'u' });
  const client = new pg.Client(db.auditorUrl);
  await client.connect();
  t.teardown(() => client.end());
  const visible = await client.query(
    `SELECT count(DISTINCT tenant_id)::int AS n FROM sessions.session WHERE tenant_id LIKE 'aud-%'`,
  );
  t.is(visible.rows[0].n, 2);
  await client.query('SELECT * FROM sessions.event LIMIT 1');
  const perTenant = await client.query(
    `SELECT tenant_id, active_sessions::int AS n FROM sessions.active_sessions_per_tenant WHERE tenant_id LIKE 'aud-%' ORDER BY 1`,
  );
  t.deepEqual(perTenant.rows, [
    { tenant_id: 'aud-1', n: 1 },
    { tenant_id: 'aud-2', n: 1 },
  ]);
  await client.query(`SELECT * FROM sessions.sessions_per_user WHERE tenant_id LIKE 'aud-%'`);
  for (const statement of [
    'SELECT token_hash FROM sessions.session',
    'SELECT data FROM sessions.session',
    'SELECT * FROM sessions.session',
    `UPDATE sessions.session SET user_id = 'x'`,
    'DELETE FROM sessions.session',
    'DELETE FROM sessions.event',
    `INSERT INTO sessions.event (tenant_id, session_id, kind, actor) VALUES ('a', gen_random_uuid(), 'created', 'x')`,
  ]) {
    await t.throwsAsync(client.query(statement), { message: /permission denied/ }, statement);
  }
});

test('garbage collection deletes exactly the expired and revoked rows, in batches, with one event each', async (t) => {
  const expired = await Promise.all(
    Array.from({ length: 5 }, () => insertSession('gc', { expiresIn: -10 })),
  );
  const revoked = await insertSession('gc', { revoked: true });
  const live = await Promise.all(Array.from({ length: 3 }, () => insertSession('gc')));
  const batches: number[] = [];
  for (;;) {
    const result = await admin.query('SELECT sessions.gc_batch(2) AS n');
    batches.push(result.rows[0].n);
    if (result.rows[0].n < 2) break;
  }
  t.deepEqual(batches, [2, 2, 2, 0]);
  const remaining = await admin.query(`SELECT id FROM sessions.session WHERE tenant_id = 'gc'`);
  t.deepEqual(remaining.rows.map((row) => row.id).sort(), live.map((row) => row.id).sort());
  const events = await admin.query(
    `SELECT session_id, kind FROM sessions.event WHERE tenant_id = 'gc' AND kind IN ('expired', 'purged', 'destroyed')`,
  );
  t.is(events.rows.filter((row) => row.kind === 'expired').length, 5);
  t.deepEqual(
    events.rows
      .filter((row) => row.kind === 'expired')
      .map((row) => row.session_id)
      .sort(),
    expired.map((row) => row.id).sort(),
  );
  t.deepEqual(
    events.rows.filter((row) => row.kind === 'purged').map((row) => row.session_id),
    [revoked.id],
  );
  t.is(events.rows.filter((row) => row.kind === 'destroyed').length, 0);
});

/** A previous token of a session, as a rotation records it (superuser). */
async function insertPreviousToken(tenant: string, sessionId: string) {
  const hash = randomBytes(32);
  await admin.query(
    `INSERT INTO sessions.previous_token (tenant_id, token_hash, session_id, grace_expires_at)
     VALUES ($1, $2, $3, now() + interval '1 minute')`,
    [tenant, hash, sessionId],
  );
  return hash.toString('hex');
}

test('sessions_app sees and marks only the previous tokens of the tenant it set, and cannot delete them', async (t) => {
  const a = await insertSession('prev-a');
  const b = await insertSession('prev-b');
  const hashA = await insertPreviousToken('prev-a', a.id);
  const hashB = await insertPreviousToken('prev-b', b.id);
  const seen = await asApp('prev-a', async (client) => {
    const rows = await client.query(
      `SELECT encode(token_hash, 'hex') AS hash FROM sessions.previous_token`,
    );
    const marked = await client.query(
      `UPDATE sessions.previous_token SET reused_at = now() WHERE session_id = $1`,
      [b.id],
    );
    return { hashes: rows.rows.map((row) => row.hash), marked: marked.rowCount };
  });
  t.deepEqual(seen.hashes, [hashA]);
  t.false(seen.hashes.includes(hashB));
  t.is(seen.marked, 0);
  for (const statement of [
    'DELETE FROM sessions.previous_token',
    `UPDATE sessions.previous_token SET grace_expires_at = now() + interval '1 year'`,
    `UPDATE sessions.previous_token SET session_id = gen_random_uuid()`,
  ]) {
    await t.throwsAsync(
      asApp('prev-a', (client) => client.query(statement)),
      { message: /permission denied/ },
      statement,
    );
  }
  await t.throwsAsync(
    asApp('prev-a', (client) =>
      client.query(
        `INSERT INTO sessions.previous_token (tenant_id, token_hash, session_id, grace_expires_at)
         VALUES ('prev-b', $1, $2, now())`,
        [randomBytes(32), b.id],
      ),
    ),
    { message: /row-level security/ },
  );
  const none = await asApp(
    null,
    async (client) =>
      (await client.query('SELECT count(*)::int AS n FROM sessions.previous_token')).rows[0].n,
  );
  t.is(none, 0, 'fails closed with no tenant set');
});

test('the auditor reads previous tokens across tenants but never their hash', async (t) => {
  const session = await insertSession('prev-aud');
  await insertPreviousToken('prev-aud', session.id);
  const client = new pg.Client(db.auditorUrl);
  await client.connect();
  t.teardown(() => client.end());
  const { rows } = await client.query(
    `SELECT session_id FROM sessions.previous_token WHERE tenant_id = 'prev-aud'`,
  );
  t.deepEqual(rows, [{ session_id: session.id }]);
  await t.throwsAsync(client.query('SELECT token_hash FROM sessions.previous_token'), {
    message: /permission denied/,
  });
});

test('deleting a session deletes its previous tokens (row-level security forced notwithstanding)', async (t) => {
  const session = await insertSession('prev-del');
  await insertPreviousToken('prev-del', session.id);
  await asApp('prev-del', (client) =>
    client.query('DELETE FROM sessions.session WHERE id = $1', [session.id]),
  );
  const { rows } = await admin.query(
    'SELECT count(*)::int AS n FROM sessions.previous_token WHERE session_id = $1',
    [session.id],
  );
  t.is(rows[0].n, 0);
});
