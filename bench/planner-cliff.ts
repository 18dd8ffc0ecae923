// `npm run bench:cliff` (PG_BIN_DIR=… for other binaries): issue 18's planner cliff,
// deterministically and in about four minutes. 1M live and 1M expired rows written with
// SQL (no events), autovacuum off for the table; the lookup statement alone (store's,
// and the old spelling `expires_at > now()`), measured in alternation three times each:
// before, after deleting the expired rows at the expiry index's low end and ANALYZE
// (what autoanalyze does when it finishes before autovacuum), and after VACUUM.
// Prints one tab-separated line per measurement: version, phase, statement, lookups/s,
// p99 ms, planning buffers, planning ms. bench:scale measures the same around a real
// garbage collection under HTTP load; this one leaves out everything but the planner.
import pg from 'pg';
import { createTestDatabase, PostgresServer, stopTestServer } from '../src/testing/index.js';
import { measureLookups } from './scale-lookups.js';

const server = await PostgresServer.start({
  settings: { fsync: 'on', synchronous_commit: 'on', max_wal_size: '4GB' },
});
process.env.PG_TEST_URL = server.url('postgres');
const db = await createTestDatabase();
const q = async (text: string) => {
  const c = new pg.Client(db.url);
  await c.connect();
  try {
    return (await c.query(text)) as pg.QueryResult;
  } finally {
    await c.end();
  }
};
try {
  const v = await q(`SHOW server_version`);
  await q(`ALTER TABLE sessions.session SET (autovacuum_enabled = off)`);
  await q(`BEGIN; SET LOCAL session_replication_role = replica;
    INSERT INTO sessions.session (tenant_id, token_hash, idle_expires_at, absolute_expires_at)
    SELECT 't' || (i % 6), sha256(convert_to('r' || i, 'UTF8')),
           CASE WHEN i % 2 = 0 THEN now() + interval '2 hours' + i * interval '40 ms' ELSE now() - interval '23 hours' + i * interval '40 ms' END,
           now() + interval '7 days'
      FROM generate_series(1, 2000000) i ORDER BY i; COMMIT`);
  await q(`VACUUM ANALYZE sessions.session`);
  await q('CHECKPOINT');
  const rows = (
    await q(
      `SELECT tenant_id, token_hash FROM sessions.session WHERE expires_at > now() ORDER BY random() LIMIT 2000`,
    )
  ).rows;
  const tokens = rows.map((r: { tenant_id: string; token_hash: Buffer }) => ({
    tenant: r.tenant_id,
    tokenHash: r.token_hash,
  }));
  const round = async (phase: string) => {
    for (let i = 0; i < 3; i++)
      for (const st of ['store', 'expires_at > now()'] as const) {
        const r = await measureLookups(db.appUrl, db.url, tokens, st, {
          connections: 10,
          seconds: 4,
        });
        console.log(
          `${v.rows[0].server_version}\t${phase}\t${st}\t${Math.round(r.perSecond)}\t${r.p99Ms.toFixed(2)}\t${r.planningBuffers}\t${r.planningMs.toFixed(3)}`,
        );
      }
  };
  await round('before');
  await q(
    `BEGIN; SET LOCAL session_replication_role = replica; DELETE FROM sessions.session WHERE expires_at <= now(); COMMIT`,
  );
  await q(`ANALYZE sessions.session`);
  await round('after DELETE+ANALYZE');
  await q(`VACUUM sessions.session`);
  await round('after VACUUM');
} finally {
  await db.drop();
  await stopTestServer();
  await server.destroy();
}
