// What the engine learns of a Citus cluster at start: whether the sessions tables are
// distributed there, and the nodes whose triggers notify (each worker's LISTEN).
import type pg from 'pg';
import type { NodeAddress } from '../cache/cluster-listener.js';

/** How often the listener re-reads the cluster's nodes (ms): an added worker is heard within this. */
export const NODE_POLL_INTERVAL = 5_000;

/** Set once by the engine at start; read by each request's runner. */
export interface Topology {
  /** sessions.session is distributed by Citus (`pg-sessions citus distribute`). */
  citus: boolean;
}

/** Whether sessions.session is distributed on the server behind `client`. */
export async function isDistributed(client: pg.ClientBase | pg.Pool): Promise<boolean> {
  // Two statements: on a server without Citus the catalog table does not parse.
  const citus = await client.query<{ table: string | null }>(
    "SELECT to_regclass('pg_catalog.pg_dist_partition')::text AS table",
  );
  if (!citus.rows[0]?.table) return false;
  const { rows } = await client.query<{ distributed: boolean }>(
    `SELECT EXISTS (SELECT FROM pg_catalog.pg_dist_partition
                     WHERE logicalrelid = 'sessions.session'::regclass) AS distributed`,
  );
  return rows[0]?.distributed === true;
}

/**
 * The active primary nodes other than the coordinator (group 0), which its own LISTEN
 * connection hears: each holds shards, or may after a rebalance.
 */
export async function workerNodes(pool: pg.Pool): Promise<NodeAddress[]> {
  const { rows } = await pool.query<{ host: string; port: number }>(
    `SELECT nodename AS host, nodeport AS port FROM pg_catalog.pg_dist_node
      WHERE isactive AND noderole = 'primary' AND groupid <> 0 ORDER BY nodeid`,
  );
  return rows;
}

/** `base` (the coordinator's connection) pointed at `node`: same user, database and TLS. */
export function nodeConfig(base: pg.ClientConfig, node: NodeAddress): pg.ClientConfig {
  if (base.connectionString) {
    const url = new URL(base.connectionString);
    url.hostname = node.host.includes(':') ? `[${node.host}]` : node.host;
    url.port = String(node.port);
    // A host list or hostaddr in the query would point elsewhere.
    url.searchParams.delete('host');
    url.searchParams.delete('hostaddr');
    url.searchParams.delete('port');
    return { ...base, connectionString: url.toString() };
  }
  return { ...base, host: node.host, port: node.port };
}

/**
 * The error of a statement Citus sent to a worker whose shard had just moved away (a
 * shard move or rebalance in progress): the delegated call found no local shard there.
 * Nothing was changed; sent again, it reaches the shard's new worker.
 */
export function isShardInMotion(error: unknown): boolean {
  return (
    error instanceof Error &&
    error.message.includes('cannot execute a distributed query from a query on a shard')
  );
}
