// createTestDatabase() with PG_SESSIONS_TEST_CITUS=1: each database lives on a Citus
// cluster (a coordinator and two workers) started once per process, migrated and
// distributed the way `pg-sessions citus distribute` leaves a production schema.
import { randomBytes } from 'node:crypto';
import pg from 'pg';
import { distributeOnCitus } from '../citus/distribute.js';
import { migrate } from '../db/migrator.js';
import { type CitusCluster, startCitusCluster } from './citus-cluster.js';
import type { TestDatabase, TestDatabaseOptions } from './test-database.js';
import { createLoginRoles, quote, testDatabase } from './test-database.js';
import type { TestServer } from './test-server.js';

let current: Promise<CitusTestServer> | undefined;

interface CitusTestServer {
  readonly cluster: CitusCluster;
  readonly server: TestServer;
}

/**
 * This process's cluster, started on first use. Its nodes are PostgresServer processes
 * below the process's scratch folder, so the reaper stops them when the process exits,
 * however it exits (src/testing/reaper.ts).
 */
function citusTestServer(): Promise<CitusTestServer> {
  current ??= startCitusTestServer().catch((error: unknown) => {
    current = undefined;
    throw error;
  });
  return current;
}

async function startCitusTestServer(): Promise<CitusTestServer> {
  const cluster = await startCitusCluster();
  const [row] = await cluster.sql<{ v: string }>(
    `SELECT current_setting('server_version_num') AS v`,
  );
  const server: TestServer = {
    // TestBackend has no Citus value: the nodes run binaries from a folder (CITUS_BIN_DIR,
    // else Debian's PostgreSQL 15), which is what PG_BIN_DIR stands for.
    backend: 'PG_BIN_DIR',
    adminUrl: cluster.url(),
    majorVersion: Math.floor(Number(row?.v) / 10_000),
    process: cluster.coordinator,
    stop: async () => {
      current = undefined;
      await cluster.stop();
    },
  };
  return { cluster, server };
}

/**
 * A fresh database on every node of the cluster, with Citus and the workers registered
 * in it (Citus' metadata is per database); unless `migrated: false`, the package's
 * migrations applied on the coordinator and the schema distributed. No template: a
 * distributed schema is metadata on the coordinator plus shards on the workers, which
 * CREATE DATABASE … TEMPLATE on each node would copy without Citus knowing.
 */
export async function createCitusTestDatabase(
  options: TestDatabaseOptions = {},
): Promise<TestDatabase> {
  const { cluster, server } = await citusTestServer();
  const name = `pgs_test_${process.pid}_${randomBytes(4).toString('hex')}`;
  const nodes = [cluster.coordinator, ...cluster.workers];
  const drop = async () => {
    // Each node holds its own database of this name (and Citus' connections to it: FORCE).
    for (const node of nodes) {
      await superuser(node.url(), (client) =>
        client.query(`DROP DATABASE IF EXISTS ${quote(name)} WITH (FORCE)`),
      );
    }
  };
  try {
    // Node by node, not by Citus' propagation (citus.enable_create_database_propagation):
    // each node needs the extension in the new database before the workers are added.
    for (const node of nodes) {
      await superuser(node.url(), (client) => client.query(`CREATE DATABASE ${quote(name)}`));
      await superuser(node.url(name), (client) => client.query('CREATE EXTENSION citus'));
    }
    const url = cluster.url(name);
    await superuser(url, async (client) => {
      await client.query('SELECT citus_set_coordinator_host($1, $2)', [
        cluster.coordinator.host,
        cluster.coordinator.port,
      ]);
      for (const worker of cluster.workers) {
        await client.query('SELECT citus_add_node($1, $2)', [worker.host, worker.port]);
      }
    });
    if (options.migrated !== false) {
      const result = await migrate(url, 'up');
      if (result.exitCode !== 0)
        throw new Error(`migrating the Citus test database failed:\n${result.output}`);
      await superuser(url, async (client) => {
        // Cluster-wide, made once: the coordinator propagates CREATE ROLE to the workers.
        await createLoginRoles(client);
        await distributeOnCitus(client);
      });
    }
  } catch (error) {
    await drop().catch(() => {});
    throw error;
  }
  return testDatabase(server, name, drop);
}

async function superuser<T>(url: string, work: (client: pg.Client) => Promise<T>): Promise<T> {
  // The nodes listen on loopback without TLS (PostgresServer), as the cluster's own SQL does.
  const client = new pg.Client({ connectionString: url });
  client.on('error', () => {});
  await client.connect();
  try {
    return await work(client);
  } finally {
    await client.end();
  }
}
