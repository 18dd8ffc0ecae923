// A write retried after a failover is applied exactly once (issue 22): FailoverRunner
// first runs the write's applied-check, which the store writes beside the write's SQL.
// The retry only happens when a primary goes away mid-write, which the replica and
// Patroni tests reach by timing alone; here the connection's failure is injected right
// after (or right before) a real write to a real PostgreSQL, and the router's answer
// ("a new primary was found") is the same server, as after a promotion.
import test from 'ava';
import type pg from 'pg';
import { FailoverRunner } from '../src/db/failover.js';
import { SinglePoolDatabase } from '../src/db/router.js';
import {
  PoolRunner,
  type Statement,
  type StatementResult,
  type StatementRunner,
  type WriteOptions,
} from '../src/db/runner.js';
import { defaultLogger } from '../src/logger.js';
import { SessionMetrics } from '../src/metrics.js';
import type { ExpiryPolicy, SessionRecord } from '../src/store/records.js';
import { SessionStore } from '../src/store/session-store.js';
import type { TestDatabase } from '../src/testing/index.js';
import { generateToken, hashToken } from '../src/token.js';
import { setupDatabase } from './helpers/database.js';

const TENANT = 'failover';
const POLICY: ExpiryPolicy = {
  idleTimeoutMs: 3_600_000,
  absoluteTimeoutMs: 86_400_000,
  touchIntervalMs: 60_000,
  rotationGraceMs: 60_000,
};
const ORIGIN = { ip: '192.0.2.7', userAgent: 'failover test' };

let db: TestDatabase;
let admin: pg.Pool;
let database: SinglePoolDatabase;

test.before(async () => {
  ({ db, admin } = await setupDatabase());
  database = SinglePoolDatabase.create({ connectionString: db.appUrl, max: 2 });
});

test.after.always(async () => {
  await database?.close();
  await admin?.end();
  await db?.drop();
});

/** The connection dies once, either after its write committed or before it was sent. */
class DyingConnection implements StatementRunner {
  writes = 0;
  constructor(
    private readonly inner: StatementRunner,
    private readonly when: 'after-commit' | 'before-send',
  ) {}

  read<Row>(query: Statement<Row>): Promise<StatementResult<Row>> {
    return this.inner.read(query);
  }

  readPrimary<Row>(query: Statement<Row>, options?: { staleReplica?: boolean }) {
    return this.inner.readPrimary(query, options);
  }

  async write<Row>(query: Statement<Row>, options: WriteOptions): Promise<StatementResult<Row>> {
    this.writes++;
    if (this.writes > 1) return this.inner.write(query, options);
    if (this.when === 'after-commit') await this.inner.write(query, options);
    throw Object.assign(new Error('Connection terminated unexpectedly'), { code: '57P01' });
  }
}

/** A store whose first write meets a dying connection, and whose router then finds a primary. */
function storeDying(when: 'after-commit' | 'before-send') {
  const pool = new PoolRunner(database, TENANT, new SessionMetrics(), defaultLogger(), false);
  const dying = new DyingConnection(pool, when);
  const promoted = Object.assign(Object.create(database) as SinglePoolDatabase, {
    failover: async () => true,
  });
  const runner = new FailoverRunner(dying, promoted, defaultLogger());
  return { store: new SessionStore(runner, TENANT, POLICY), dying };
}

/** A session as the middleware would have loaded it. */
async function created(data: Record<string, unknown>): Promise<SessionRecord> {
  const pool = new PoolRunner(database, TENANT, new SessionMetrics(), defaultLogger(), false);
  const { record } = await new SessionStore(pool, TENANT, POLICY).create({
    tokenHash: hashToken(generateToken()),
    data,
    userId: null,
    origin: ORIGIN,
    actor: 'test',
  });
  return record;
}

async function rowOf(id: string) {
  const { rows } = await admin.query(
    `SELECT data, version::int AS version, user_id, token_hash,
            (SELECT count(*)::int FROM sessions.previous_token p WHERE p.session_id = s.id) AS previous,
            (SELECT count(*)::int FROM sessions.event e WHERE e.session_id = s.id) AS events
       FROM sessions.session s WHERE id = $1`,
    [id],
  );
  return rows[0] as {
    data: unknown;
    version: number;
    user_id: string | null;
    token_hash: Buffer;
    previous: number;
    events: number;
  };
}

test('a creation that committed before the connection died is found, not inserted twice', async (t) => {
  const { store, dying } = storeDying('after-commit');
  const tokenHash = hashToken(generateToken());
  const { record } = await store.create({
    tokenHash,
    data: { cart: ['tea'] },
    userId: null,
    origin: ORIGIN,
    actor: 'test',
  });
  t.is(dying.writes, 1, 'the applied-check found it: no second INSERT');
  const { rows } = await admin.query(
    'SELECT id, version::int AS version FROM sessions.session WHERE token_hash = $1',
    [tokenHash],
  );
  t.deepEqual(rows, [{ id: record.id, version: 1 }]);
  t.true(record.idleExpiresAt.getTime() > Date.now());
});

test('a save with a rotation and a binding that committed before the connection died is applied once', async (t) => {
  const loaded = await created({ a: 1, gone: true });
  const before = await rowOf(loaded.id);
  const { store, dying } = storeDying('after-commit');
  const newTokenHash = hashToken(generateToken());
  const { saved } = await store.save({
    loaded,
    patch: { a: 2, b: [1, 2] },
    removed: ['gone'],
    rotation: { newTokenHash, onlyIfCurrent: false, origin: ORIGIN },
    userId: 'ada',
    actor: 'test',
  });
  t.is(dying.writes, 1, 'the applied-check found it: no second statement');
  t.truthy(saved);
  t.is(saved!.version, loaded.version + 1);
  t.deepEqual(saved!.tokenHash, newTokenHash);
  const after = await rowOf(loaded.id);
  t.deepEqual(after.data, { a: 2, b: [1, 2] });
  t.is(after.version, loaded.version + 1);
  t.is(after.user_id, 'ada');
  t.is(after.previous, 1, 'one previous token, the replaced one');
  // One statement's events: updated, rotated and user_bound, once each.
  t.is(after.events - before.events, 3);
});

test('strict mode: a save that committed before the connection died is no conflict on retry', async (t) => {
  const loaded = await created({ a: 1 });
  const { store, dying } = storeDying('after-commit');
  const { saved } = await store.save({
    loaded,
    patch: { a: 2 },
    removed: [],
    expected: new Map([['a', '1']]),
    actor: 'test',
  });
  t.is(dying.writes, 1);
  t.is(saved?.version, loaded.version + 1);
  t.deepEqual((await rowOf(loaded.id)).data, { a: 2 });
});

test('a save that never reached the old primary is written once on the new one', async (t) => {
  const loaded = await created({ a: 1 });
  const { store, dying } = storeDying('before-send');
  const { saved } = await store.save({ loaded, patch: { a: 3 }, removed: [], actor: 'test' });
  t.is(dying.writes, 2, 'checked, found nothing, written');
  t.is(saved?.version, loaded.version + 1);
  t.deepEqual((await rowOf(loaded.id)).data, { a: 3 });
});

test('a creation that never reached the old primary is inserted once on the new one', async (t) => {
  const { store, dying } = storeDying('before-send');
  const tokenHash = hashToken(generateToken());
  const { record } = await store.create({
    tokenHash,
    data: {},
    userId: null,
    origin: ORIGIN,
    actor: 'test',
  });
  t.is(dying.writes, 2);
  const { rows } = await admin.query('SELECT id FROM sessions.session WHERE token_hash = $1', [
    tokenHash,
  ]);
  t.deepEqual(rows, [{ id: record.id }]);
});
