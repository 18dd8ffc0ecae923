// The Citus test cluster of pg-sessions/testing: a coordinator and two workers of
// Debian's PostgreSQL 15 with Citus, started and stopped by the test; the schema's
// migrations applied on the coordinator reach every worker.
import test from 'ava';
import pg from 'pg';
import { migrate } from '../../src/index.js';
import { type CitusCluster, resolveBinaries, startCitusCluster } from '../../src/testing/index.js';

let cluster: CitusCluster;

test.before(async () => {
  cluster = await startCitusCluster();
});

test.after.always(async () => {
  await cluster?.stop();
});

async function query<Row extends pg.QueryResultRow>(url: string, text: string): Promise<Row[]> {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    return (await client.query<Row>(text)).rows;
  } finally {
    await client.end();
  }
}

test.serial('a coordinator and two workers, each with Citus, the workers registered', async (t) => {
  const active = await cluster.sql<{ node_port: number }>(
    'SELECT node_port FROM citus_get_active_worker_nodes() ORDER BY node_port',
  );
  t.deepEqual(
    active.map((node) => Number(node.node_port)),
    cluster.workers.map((worker) => worker.port).sort((a, b) => a - b),
  );
  for (const url of [cluster.url(), cluster.workerUrl(0), cluster.workerUrl(1)]) {
    const [row] = await query<{ version: string }>(url, 'SELECT citus_version() AS version');
    t.regex(row?.version ?? '', /^Citus 13\.2/);
  }
});

test.serial(
  'migrate up on the coordinator: the roles and the schema reach every worker',
  async (t) => {
    const result = await migrate(cluster.url(), 'up');
    t.true(result.applied.length >= 11);
    for (const index of [0, 1]) {
      const roles = await query<{ rolname: string }>(
        cluster.workerUrl(index),
        "SELECT rolname FROM pg_roles WHERE rolname LIKE 'sessions\\_%' ORDER BY 1",
      );
      t.deepEqual(
        roles.map((role) => role.rolname),
        ['sessions_admin', 'sessions_app', 'sessions_auditor'],
      );
      const [schema] = await query<{ count: string }>(
        cluster.workerUrl(index),
        "SELECT count(*) FROM pg_namespace WHERE nspname = 'sessions'",
      );
      t.is(schema?.count, '1');
    }
  },
);

test.serial(
  'a worker added takes shards when rebalanced; removed, its shards move back first',
  async (t) => {
    await cluster.sql('CREATE TABLE probe (id int PRIMARY KEY)');
    await cluster.sql("SELECT create_distributed_table('probe', 'id', shard_count => 8)");
    await cluster.sql('INSERT INTO probe SELECT generate_series(1, 100)');
    const placements = async (port: number) =>
      Number(
        (
          await cluster.sql<{ n: string }>(
            `SELECT count(*) AS n FROM pg_dist_shard_placement p JOIN pg_dist_shard s USING (shardid)
            WHERE s.logicalrelid = 'probe'::regclass AND p.nodeport = $1`,
            [port],
          )
        )[0]?.n,
      );
    const worker = await cluster.addWorker();
    t.is(await placements(worker.port), 0, 'a new worker holds nothing until rebalanced');
    await cluster.sql(
      "SELECT rebalance_table_shards('probe', shard_transfer_mode => 'block_writes')",
    );
    t.true((await placements(worker.port)) > 0);
    await cluster.removeWorker(cluster.workers.indexOf(worker));
    t.false(worker.running);
    const [count] = await cluster.sql<{ n: string }>('SELECT count(*) AS n FROM probe');
    t.is(count?.n, '100', 'every row still there');
    const [nodes] = await cluster.sql<{ n: string }>(
      'SELECT count(*) AS n FROM citus_get_active_worker_nodes()',
    );
    t.is(nodes?.n, '2');
  },
);

test('without Citus installed, the cluster refuses in one line that says how to build it', async (t) => {
  const embedded = await resolveBinaries(undefined);
  await t.throwsAsync(startCitusCluster({ binDir: embedded.binDir }), {
    message: /Citus is not installed for the PostgreSQL in .*: run npm run citus:build/,
  });
});
