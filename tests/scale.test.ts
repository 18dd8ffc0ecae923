// What keeps a large session table cheap (issue 18): a lookup's planning does not read
// the dead index entries a collection leaves behind, and garbage collection reads the
// rows it deletes through their indexes. Checked by the plans and the buffers the
// server reports, never by timing.
import { randomBytes } from 'node:crypto';
import test from 'ava';
import type { Compilable, CompiledQuery } from 'kysely';
import pg from 'pg';
import { inlineParameters, type StatementResult, type StatementRunner } from '../src/db/runner.js';
import { collectGarbage } from '../src/jobs/garbage-collector.js';
import { SessionStore } from '../src/store/session-store.js';
import { createTestDatabase, type TestDatabase } from '../src/testing/index.js';

let db: TestDatabase;
let admin: pg.Pool;

test.before(async () => {
  db = await createTestDatabase();
  admin = new pg.Pool({ connectionString: db.url, max: 2 });
  admin.on('error', () => {});
  // Nothing may clean up behind the tests' backs: dead entries stay until they say so.
  await admin.query('ALTER TABLE sessions.session SET (autovacuum_enabled = off)');
});

test.after.always(async () => {
  await admin?.end();
  await db?.drop();
});

const POLICY = {
  idleTimeoutMs: 3_600_000,
  absoluteTimeoutMs: 86_400_000,
  touchIntervalMs: 60_000,
  rotationGraceMs: 60_000,
};

/**
 * Buffers a statement read while planned and run, as EXPLAIN (ANALYZE, BUFFERS, FORMAT
 * JSON) reports them. The lookup runs inside sessions.lookup_session, whose statements
 * are planned while the outer statement executes: their planning reads count among
 * the execution's buffers, so both are added up.
 */
interface Planning {
  readonly buffers: number;
  readonly plan: string;
}

function planningOf(explained: unknown): Planning {
  const [root] = explained as [
    { Plan: Record<string, unknown>; Planning?: Record<string, number> },
  ];
  const planning = root.Planning ?? {};
  const blocks = (counts: Record<string, unknown>) =>
    Number(counts['Shared Hit Blocks'] ?? 0) + Number(counts['Shared Read Blocks'] ?? 0);
  return {
    buffers: blocks(planning) + blocks(root.Plan),
    plan: JSON.stringify(root.Plan),
  };
}

/** Runs whatever statement the store sends under EXPLAIN ANALYZE, as superuser. */
class ExplainingRunner implements StatementRunner {
  readonly explained: Planning[] = [];

  constructor(private readonly client: pg.ClientBase) {}

  async read<Row>(query: Compilable<Row> | CompiledQuery<Row>): Promise<StatementResult<Row>> {
    const compiled = 'compile' in query ? query.compile() : query;
    const { rows } = await this.client.query(
      `EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) ${inlineParameters(compiled)}`,
    );
    this.explained.push(planningOf(rows[0]['QUERY PLAN']));
    return { rows: [] };
  }

  readPrimary<Row>(query: Compilable<Row> | CompiledQuery<Row>) {
    return this.read(query);
  }

  write<Row>(query: Compilable<Row> | CompiledQuery<Row>) {
    return this.read(query);
  }
}

/** Rows written straight into the table, without the triggers (no events, no NOTIFY). */
async function insertRows(
  tenant: string,
  count: number,
  expiry: 'live' | 'expired',
  revoked = false,
): Promise<void> {
  const client = await admin.connect();
  try {
    await client.query(`BEGIN; SET LOCAL session_replication_role = replica`);
    await client.query(
      `INSERT INTO sessions.session (tenant_id, token_hash, idle_expires_at, absolute_expires_at,
                                     revoked_at, revoked_reason)
       SELECT $1, sha256(convert_to($1 || gen_random_uuid()::text, 'UTF8')),
              CASE WHEN $3 THEN now() + interval '1 hour' + i * interval '1 ms'
                   ELSE now() - interval '1 hour' + i * interval '1 ms' END,
              now() + interval '1 day',
              CASE WHEN $4 THEN now() END, CASE WHEN $4 THEN 'test' END
         FROM generate_series(1, $2::int) AS i`,
      [tenant, count, expiry === 'live', revoked],
    );
    await client.query('COMMIT');
  } finally {
    client.release();
  }
}

/** The smallest planning cost of `times` runs (the first also loads catalog caches). */
async function lookupPlanning(
  client: pg.ClientBase,
  tenant: string,
  tokenHash: Buffer,
  times = 3,
): Promise<Planning> {
  const runner = new ExplainingRunner(client);
  const store = new SessionStore(runner, tenant, POLICY);
  for (let run = 0; run < times; run++) await store.load(tokenHash);
  const plans = runner.explained;
  return plans.reduce((best, plan) => (plan.buffers < best.buffers ? plan : best));
}

test.serial(
  "a lookup's planning reads no more pages after a mass deletion at the expiry index's end",
  async (t) => {
    const tenant = 'plan';
    await insertRows(tenant, 2_000, 'live');
    await insertRows(tenant, 100_000, 'expired');
    await admin.query('ANALYZE sessions.session');
    const { rows } = await admin.query<{ token_hash: Buffer }>(
      `SELECT token_hash FROM sessions.session
        WHERE tenant_id = $1 AND expires_at > now() LIMIT 1`,
      [tenant],
    );
    const tokenHash = rows[0]?.token_hash as Buffer;
    const client = await admin.connect();
    try {
      const before = await lookupPlanning(client, tenant, tokenHash);
      // What a collection leaves behind until VACUUM: 100,000 dead entries at the low
      // end of session_expires_at_idx, and a histogram that now starts after now().
      await client.query(`BEGIN; SET LOCAL session_replication_role = replica;
        DELETE FROM sessions.session WHERE tenant_id = 'plan' AND expires_at <= now(); COMMIT`);
      await client.query('ANALYZE sessions.session');
      const after = await lookupPlanning(client, tenant, tokenHash);
      // The condition as it used to be written: the planner reads the index's actual
      // end, through the dead entries. Shows that this setup reproduces the cliff.
      const spelledOut = async () => {
        const explained = await client.query(
          `EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) SELECT id FROM sessions.session
            WHERE tenant_id = 'plan' AND token_hash = $1 AND revoked_at IS NULL AND expires_at > now()`,
          [tokenHash],
        );
        return planningOf(explained.rows[0]['QUERY PLAN']).buffers;
      };
      await spelledOut();
      const cliff = await spelledOut();
      t.log(
        `buffers planning and running the lookup: ${before.buffers} before, ${after.buffers} after; with expires_at > now(): ${cliff}`,
      );
      t.true(cliff > 50, `the spelled-out condition read ${cliff} buffers`);
      t.true(
        after.buffers <= before.buffers + 2,
        `the lookup read ${after.buffers} buffers after the deletion, ${before.buffers} before`,
      );
      const inner = await lookupPlans(client, tenant, tokenHash);
      // A custom plan probes the key with an Index Scan, the cached generic one may take
      // it as a Bitmap Index Scan: the token's own index either way, never a scan.
      t.regex(inner.join('\n'), /Index Scan (using|on) session_token_hash_key/);
      t.notRegex(inner.join('\n'), /Seq Scan/);
    } finally {
      client.release();
    }
    await admin.query('VACUUM sessions.session');
  },
);

/** The plans of the statements inside the lookup function, from auto_explain. */
async function lookupPlans(
  client: pg.ClientBase,
  tenant: string,
  tokenHash: Buffer,
): Promise<string[]> {
  const notices: string[] = [];
  const onNotice = (notice: { message?: string }) => notices.push(notice.message ?? '');
  client.on('notice', onNotice);
  try {
    await client.query(`LOAD 'auto_explain';
      SET auto_explain.log_min_duration = 0;
      SET auto_explain.log_nested_statements = on;
      SET auto_explain.log_level = notice`);
    const runner: StatementRunner = {
      read: async (query) => {
        const compiled = 'compile' in query ? query.compile() : query;
        await client.query(inlineParameters(compiled));
        return { rows: [] };
      },
      readPrimary: (query) => runner.read(query),
      write: (query) => runner.read(query),
    };
    await new SessionStore(runner, tenant, POLICY).load(tokenHash);
    return notices.filter((notice) => /FROM sessions\.session AS s/.test(notice));
  } finally {
    client.off('notice', onNotice);
    await client.query(`SET auto_explain.log_min_duration = -1; RESET ALL`).catch(() => {});
  }
}

/** The plans of the statements inside one sessions.gc_batch call, from auto_explain. */
async function gcBatchPlans(batchSize: number): Promise<string[]> {
  const client = await admin.connect();
  const notices: string[] = [];
  const onNotice = (notice: { message?: string }) => notices.push(notice.message ?? '');
  client.on('notice', onNotice);
  try {
    // Each batch from the start of the table, as on a server where shared_buffers
    // exceeds a quarter of the table and scans do not resume where the last stopped.
    await client.query(`LOAD 'auto_explain';
      SET synchronize_seqscans = off;
      SET auto_explain.log_min_duration = 0;
      SET auto_explain.log_nested_statements = on;
      SET auto_explain.log_level = notice`);
    await client.query(`BEGIN; SELECT sessions.gc_batch(${batchSize}); COMMIT`);
    return notices.filter((notice) => /DELETE FROM sessions\.session/.test(notice));
  } finally {
    client.off('notice', onNotice);
    await client.query('RESET ALL').catch(() => {});
    client.release(true);
  }
}

for (const shape of [
  { name: 'a small backlog among many live rows', live: 20_000, expired: 2_000, revoked: 50 },
  { name: 'a backlog larger than the live rows', live: 5_000, expired: 30_000, revoked: 2_000 },
]) {
  test.serial(
    `each gc_batch reads expired and revoked rows through their indexes: ${shape.name}`,
    async (t) => {
      const tenant = `gc-${randomBytes(3).toString('hex')}`;
      await insertRows(tenant, shape.live, 'live');
      await insertRows(tenant, shape.expired, 'expired');
      await insertRows(tenant, shape.revoked, 'live', true);
      try {
        await admin.query('ANALYZE sessions.session');
        const plans = await gcBatchPlans(500);
        t.is(plans.length, 1, 'one DELETE statement per batch');
        const plan = plans[0] ?? '';
        t.notRegex(plan, /Seq Scan on session/);
        t.regex(plan, /Index Scan using session_revoked_at_idx on session/);
        t.regex(plan, /Index Scan using session_expires_at_idx on session/);
        t.regex(plan, /Tid Scan on session/);
      } finally {
        await admin.query(
          `BEGIN; SET LOCAL session_replication_role = replica;
           DELETE FROM sessions.session WHERE tenant_id = '${tenant}'; COMMIT`,
        );
        await admin.query('VACUUM ANALYZE sessions.session');
      }
    },
  );
}

test.serial(
  'one collection drains a backlog of many batches, each deletion logged once',
  async (t) => {
    const tenant = 'drain';
    await insertRows(tenant, 300, 'live');
    await insertRows(tenant, 2_450, 'expired');
    await insertRows(tenant, 40, 'live', true);
    const deletedPerBatch: number[] = [];
    const result = await collectGarbage(admin, {
      batchSize: 100,
      onBatch: (deleted) => deletedPerBatch.push(deleted),
    });
    t.true(result.ran);
    t.is(result.deleted, 2_490);
    t.is(result.batches, 25);
    t.deepEqual(deletedPerBatch.slice(0, 2), [100, 200]);
    const { rows } = await admin.query(
      `SELECT count(*)::int AS n,
              count(*) FILTER (WHERE revoked_at IS NULL AND expires_at > now())::int AS live
         FROM sessions.session WHERE tenant_id = $1`,
      [tenant],
    );
    t.deepEqual(rows[0], { n: 300, live: 300 });
    // No trigger ran for the inserts (no created events), but every deletion is logged.
    const events = await admin.query(
      `SELECT kind, count(*)::int AS n FROM sessions.event WHERE tenant_id = $1 GROUP BY kind ORDER BY kind`,
      [tenant],
    );
    t.deepEqual(events.rows, [
      { kind: 'expired', n: 2_450 },
      { kind: 'purged', n: 40 },
    ]);
  },
);
