import { execFile } from 'node:child_process';
import { access } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import pg from 'pg';
import { type PostgresBinaries, resolveBinaries } from './binaries.js';
import { PostgresServer } from './postgres-server.js';

const execFileAsync = promisify(execFile);

/** Debian's PostgreSQL 15, the release Citus 13.2 is built for here (`npm run citus:build`). */
const DEBIAN_PG15_BIN = '/usr/lib/postgresql/15/bin';

export interface CitusClusterOptions {
  /** Workers started with the coordinator. @default 2 */
  readonly workers?: number;
  /**
   * The PostgreSQL installation Citus is installed into.
   * @default CITUS_BIN_DIR, else Debian's PostgreSQL 15 (/usr/lib/postgresql/15/bin)
   */
  readonly binDir?: string;
  /** Extra `-c` settings for every node. */
  readonly settings?: Readonly<Record<string, string | number | boolean>>;
}

/**
 * Settings every node needs: Citus loaded, and the two-phase commits it uses for
 * transactions that write on several workers. The nodes talk over loopback without TLS
 * (Citus' default asks for it, and the server's libpq would look for client
 * certificates in the home folder of whoever started the test).
 */
const CITUS_SETTINGS: Readonly<Record<string, string>> = {
  shared_preload_libraries: 'citus',
  'citus.node_conninfo': 'sslmode=disable',
  max_prepared_transactions: '100',
  wal_level: 'logical',
};

/**
 * A Citus cluster for tests: a coordinator and its workers, each a real PostgreSQL
 * server on 127.0.0.1 with the citus extension in its `postgres` database, the workers
 * registered with the coordinator. Applications and migrations connect to the
 * coordinator ({@link url}); {@link workerUrl} reaches a worker directly (to check what
 * it holds, as the app role or as the superuser).
 *
 * @example
 * const cluster = await startCitusCluster();
 * await migrate({ databaseUrl: cluster.url(), action: 'up' });
 * // …
 * await cluster.stop();
 */
export class CitusCluster {
  private constructor(
    readonly coordinator: PostgresServer,
    readonly workers: PostgresServer[],
    private readonly binaries: PostgresBinaries,
    private readonly settings: Readonly<Record<string, string | number | boolean>>,
  ) {}

  static async start(options: CitusClusterOptions = {}): Promise<CitusCluster> {
    const binaries = await citusBinaries(options.binDir);
    const settings = { ...CITUS_SETTINGS, ...options.settings };
    const count = options.workers ?? 2;
    const servers: PostgresServer[] = [];
    try {
      // One at a time: initdb and the first start are the CPU-heavy part on two cores.
      for (let index = 0; index <= count; index++) {
        servers.push(await PostgresServer.start({ binaries, settings }));
      }
      const [coordinator, ...workers] = servers as [PostgresServer, ...PostgresServer[]];
      const cluster = new CitusCluster(coordinator, workers, binaries, settings);
      for (const server of servers) await createExtension(server);
      await cluster.sql(`SELECT citus_set_coordinator_host('127.0.0.1', ${coordinator.port})`);
      for (const worker of workers) await cluster.registerWorker(worker);
      return cluster;
    } catch (error) {
      await Promise.allSettled(servers.map((server) => server.destroy()));
      throw error;
    }
  }

  /** The coordinator's URL for `database` as the superuser. */
  url(database = 'postgres'): string {
    return this.coordinator.url(database);
  }

  /** A worker's own URL (index in {@link workers}). */
  workerUrl(index: number, database = 'postgres'): string {
    const worker = this.workers[index];
    if (!worker) throw new Error(`this cluster has no worker ${index}`);
    return worker.url(database);
  }

  /** Runs SQL on the coordinator as the superuser. */
  async sql<Row extends pg.QueryResultRow = pg.QueryResultRow>(
    text: string,
    values: unknown[] = [],
  ): Promise<Row[]> {
    return runSql<Row>(this.coordinator.url(), text, values);
  }

  /** Starts one more worker and registers it (`citus_add_node`); shards move only when rebalanced. */
  async addWorker(): Promise<PostgresServer> {
    const worker = await PostgresServer.start({ binaries: this.binaries, settings: this.settings });
    try {
      await createExtension(worker);
      await this.registerWorker(worker);
    } catch (error) {
      await worker.destroy();
      throw error;
    }
    this.workers.push(worker);
    return worker;
  }

  /**
   * Moves every shard off a worker (`citus_drain_node`), unregisters it
   * (`citus_remove_node`) and stops it.
   */
  async removeWorker(index: number): Promise<void> {
    const worker = this.workers[index];
    if (!worker) throw new Error(`this cluster has no worker ${index}`);
    // block_writes: a logical transfer cannot apply into tables that force row-level
    // security (PostgreSQL refuses it to Citus' replication role), and would never end.
    await this.sql(
      `SELECT citus_drain_node('127.0.0.1', $1, shard_transfer_mode := 'block_writes')`,
      [worker.port],
    );
    await this.sql(`SELECT citus_remove_node('127.0.0.1', $1)`, [worker.port]);
    this.workers.splice(index, 1);
    await worker.destroy();
  }

  /** Stops every node and removes their data folders. */
  async stop(): Promise<void> {
    await Promise.allSettled([this.coordinator, ...this.workers].map((server) => server.destroy()));
  }

  private async registerWorker(worker: PostgresServer): Promise<void> {
    await this.sql(`SELECT citus_add_node('127.0.0.1', $1)`, [worker.port]);
  }
}

/** Starts a Citus cluster: see {@link CitusCluster}. */
export function startCitusCluster(options: CitusClusterOptions = {}): Promise<CitusCluster> {
  return CitusCluster.start(options);
}

/**
 * The installation's binaries, once it is known to hold Citus: else an error that says
 * how to build it.
 */
async function citusBinaries(binDir = process.env.CITUS_BIN_DIR ?? DEBIAN_PG15_BIN) {
  const binaries = await resolveBinaries(binDir);
  const pgConfig = join(binDir, 'pg_config');
  const installed = await execFileAsync(pgConfig, ['--sharedir', '--pkglibdir']).then(
    async ({ stdout }) => {
      const [sharedir = '', pkglibdir = ''] = stdout.trim().split('\n');
      return Promise.all([
        access(join(sharedir, 'extension', 'citus.control')),
        access(join(pkglibdir, 'citus.so')),
      ]).then(
        () => true,
        () => false,
      );
    },
    () => false,
  );
  if (!installed) {
    throw new Error(
      `Citus is not installed for the PostgreSQL in ${binDir}: run npm run citus:build (scripts/build-citus.sh), or set CITUS_BIN_DIR`,
    );
  }
  return binaries;
}

async function createExtension(server: PostgresServer): Promise<void> {
  await runSql(server.url(), 'CREATE EXTENSION IF NOT EXISTS citus');
}

async function runSql<Row extends pg.QueryResultRow>(
  url: string,
  text: string,
  values: unknown[] = [],
): Promise<Row[]> {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    return (await client.query<Row>(text, values)).rows;
  } finally {
    await client.end();
  }
}
