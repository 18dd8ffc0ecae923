// Read scaling over streaming replicas (issue 7): one app process (bench/app-server.ts,
// pg-sessions with the cache off, so every request loads its session from the database)
// under load from another (bench/load.ts), over a ReplicaRouter reading from 0, 1 and 2
// replicas of one primary; then a read-mostly mix with read-your-writes (the load keeps
// each session's version cookie, the fence) and a write-only mix on the primary; last,
// the time from a promotion to the first acknowledged write after a kill -9 of the
// primary. The runner starts the cluster (startCluster from src/testing) and creates
// the migrated database on its primary.
import pg from 'pg';
import type { RouterCounters } from '../src/db/replica-router.js';
import type { Cluster, PostgresServer, TestDatabase } from '../src/testing/index.js';
import type { AppStats, Topology } from './app-server.js';
import { Child, type Message } from './child.js';
import { type HttpCell, type HttpSettings, logIn, measureRun, postgresCpuMicros } from './http.js';
import type { LoadResult, LoadRun } from './load.js';

/** One measured cell: how many replicas the router reads from, and the write share. */
export const REPLICA_CELLS = [
  { name: 'read-only, primary only', replicas: 0, writeShare: 0 },
  { name: 'read-only, 1 replica', replicas: 1, writeShare: 0 },
  { name: 'read-only, 2 replicas', replicas: 2, writeShare: 0 },
  { name: 'read-mostly (10 % writes), 2 replicas', replicas: 2, writeShare: 0.1 },
  { name: 'write-only, primary', replicas: 0, writeShare: 1 },
] as const;

/** Replicas the cluster runs (all streaming in every cell; the router reads from some). */
export const CLUSTER_REPLICAS = 2;

export type ReplicaSettings = Omit<
  HttpSettings,
  'appNodeOptions' | 'rounds' | 'variants' | 'mixes'
>;

export interface ReplicaCell {
  readonly name: string;
  /** Replicas the router could read from. */
  readonly replicas: number;
  readonly writeShare: number;
  readonly requests: number;
  readonly requestsPerSecond: number;
  readonly latencyMs: LoadResult['latencyMs'];
  readonly non2xx: number;
  readonly errors: number;
  readonly timeouts: number;
  /** The router's counters over the run. */
  readonly reads: RouterCounters;
  /** Session loads a replica answered over all session loads (stale replica answers re-read on the primary excluded). */
  readonly replicaShare: number;
  readonly roundTripsPerRequest: number;
  /** CPU cores busy on average: the app, every PostgreSQL server of the cluster, autocannon. */
  readonly cpuCores: HttpCell['cpuCores'];
}

/** kill -9 of the primary under a light write load, then promotion of replica 1. */
export interface FailoverResult {
  /** `pg_ctl promote -w` of the replica, as an orchestrator would run it. */
  readonly promotionMs: number;
  /** From the promotion's start to the first write, begun after the kill, acknowledged (2xx). */
  readonly firstWriteMs: number;
  /** Writes sent, and how they ended: 2xx, 503 (the typed unavailable error), anything else. */
  readonly writes: number;
  readonly acknowledged: number;
  readonly unavailable: number;
  readonly failed: number;
  /** The slowest write of the window, in ms (bounded by failoverTimeout + connect + statement). */
  readonly longestWriteMs: number;
}

export interface ReplicaResult {
  readonly postgres: string;
  readonly synchronous: false;
  readonly cells: readonly ReplicaCell[];
  readonly failover: FailoverResult;
}

/**
 * Runs the cells on `cluster`, whose primary holds `database` (migrated, created by
 * createTestDatabase on that primary); the replicas have it by replication. `load` is
 * the load generator's process, ready.
 */
export async function runReplicaBench(
  settings: ReplicaSettings,
  cluster: Cluster,
  database: TestDatabase,
  load: Child,
  log: (line: string) => void,
): Promise<ReplicaResult> {
  let app: Child | undefined;
  let measuredAll: ReplicaResult;
  let exitCode: number | null | undefined;
  try {
    await cluster.waitForReplay();
    const [primary = '', ...replicas] = [cluster.primary, ...cluster.replicas].map((server) =>
      on(server, database.appUrl),
    );
    const postgres = `PostgreSQL ${await serverVersion(database)}`;
    log(`replica benchmark on ${postgres}: a primary and ${replicas.length} streaming replicas`);
    app = Child.start('./app-server.ts', {
      env: { BENCH_VARIANT: 'pg-sessions-nocache', DATABASE_URL: primary },
    });
    const { port } = await app.next<Message & { port: number }>('ready');
    const url = `http://127.0.0.1:${port}`;
    const cookies = await logIn(url, settings.sessions, true);
    const servers = [cluster.primary, ...cluster.replicas];
    const cells: ReplicaCell[] = [];
    for (const cell of REPLICA_CELLS) {
      // Every cell starts from replicas that have replayed every session written so far.
      await cluster.waitForReplay();
      await app.ask(
        {
          type: 'topology',
          primary,
          replicas: replicas.slice(0, cell.replicas),
        } satisfies Topology,
        'ready',
      );
      const run = (durationSeconds: number): LoadRun => ({
        type: 'run',
        url,
        cookies,
        writeShare: cell.writeShare,
        connections: settings.connections,
        durationSeconds,
        ...(settings.amount === undefined ? {} : { amount: settings.amount }),
      });
      if (settings.warmupSeconds > 0) await load.ask(run(settings.warmupSeconds), 'result');
      const measured = await measureRun(load, app, run(settings.durationSeconds), () =>
        clusterCpuMicros(servers),
      );
      const { result } = measured;
      const measuredCell: ReplicaCell = {
        name: cell.name,
        replicas: cell.replicas,
        writeShare: cell.writeShare,
        requests: result.requests,
        requestsPerSecond: result.requestsPerSecond,
        latencyMs: result.latencyMs,
        non2xx: result.non2xx,
        errors: result.errors,
        timeouts: result.timeouts,
        ...readsDuring(measured.before, measured.after),
        cpuCores: measured.cpuCores,
      };
      cells.push(measuredCell);
      log(
        `replicas ${cell.name}: ${Math.round(result.requestsPerSecond)} req/s, p99 ${result.latencyMs.p99} ms, ` +
          `${(measuredCell.replicaShare * 100).toFixed(1)} % of loads on replicas` +
          (result.non2xx + result.errors > 0
            ? `, ${result.non2xx} non-2xx, ${result.errors} errors`
            : ''),
      );
    }
    const failover = await measureFailover(cluster, app, url, cookies, [primary, ...replicas]);
    log(
      `failover: promotion ${failover.promotionMs.toFixed(0)} ms, first write acknowledged ${failover.firstWriteMs.toFixed(0)} ms after the promotion began; ` +
        `${failover.writes} writes, ${failover.unavailable} × 503, ${failover.failed} failed`,
    );
    measuredAll = { postgres, synchronous: false, cells, failover };
  } finally {
    exitCode = await app?.stop();
  }
  if (exitCode !== 0) {
    throw new Error(`the replica benchmark's app process exited with code ${exitCode}`);
  }
  return measuredAll;
}

interface WriteOutcome {
  readonly status: number;
  readonly startedAt: number;
  readonly endedAt: number;
}

/** How long an orchestrator takes to decide, as in the failover test. */
export const DECISION_MS = 200;
/** A write loop's pause after a failed write, so that it does not spin during the window. */
const RETRY_PAUSE_MS = 20;
/** Past this, writes did not come back: the run fails instead of waiting on. */
const RESUME_LIMIT_MS = 15_000;

/**
 * The router now discovers the roles among all hosts (the failover configuration); four
 * clients write in a loop while the primary is killed and replica 1 promoted. Measured as
 * issue 7 asks: from the promotion to the first successful write. Runs last: the cluster
 * has a new primary afterwards.
 */
async function measureFailover(
  cluster: Cluster,
  app: Child,
  url: string,
  cookies: readonly string[],
  hosts: readonly string[],
): Promise<FailoverResult> {
  const promoted = cluster.replicas[0];
  if (!promoted) throw new Error('the failover measurement needs a replica');
  await cluster.waitForReplay();
  await app.ask({ type: 'topology', hosts } satisfies Topology, 'ready');
  const outcomes: WriteOutcome[] = [];
  let running = true;
  const write = async (cookie: string) => {
    while (running) {
      const startedAt = performance.now();
      let status = 0;
      try {
        const response = await fetch(`${url}/write`, {
          method: 'POST',
          headers: { cookie },
          signal: AbortSignal.timeout(RESUME_LIMIT_MS),
        });
        await response.arrayBuffer();
        status = response.status;
      } catch {
        status = 0;
      }
      outcomes.push({ status, startedAt, endedAt: performance.now() });
      if (status !== 200) await sleep(RETRY_PAUSE_MS);
    }
  };
  const writers = cookies.slice(0, 4).map(write);
  let killedAt = Number.NaN;
  let promotionStartedAt = Number.NaN;
  let promotedAt = Number.NaN;
  try {
    await sleep(300);
    await cluster.killPrimary();
    killedAt = performance.now();
    await sleep(DECISION_MS);
    promotionStartedAt = performance.now();
    await cluster.promote(promoted);
    promotedAt = performance.now();
    const deadline = promotedAt + RESUME_LIMIT_MS;
    while (
      performance.now() < deadline &&
      !outcomes.some((outcome) => outcome.status === 200 && outcome.startedAt > killedAt)
    ) {
      await sleep(25);
    }
  } finally {
    running = false;
    await Promise.all(writers);
  }
  const resumed = outcomes
    .filter((outcome) => outcome.status === 200 && outcome.startedAt > killedAt)
    .map((outcome) => outcome.endedAt);
  return {
    promotionMs: promotedAt - promotionStartedAt,
    firstWriteMs: resumed.length > 0 ? Math.min(...resumed) - promotionStartedAt : Number.NaN,
    writes: outcomes.length,
    acknowledged: outcomes.filter((outcome) => outcome.status === 200).length,
    unavailable: outcomes.filter((outcome) => outcome.status === 503).length,
    failed: outcomes.filter((outcome) => outcome.status !== 200 && outcome.status !== 503).length,
    longestWriteMs: Math.max(...outcomes.map((outcome) => outcome.endedAt - outcome.startedAt)),
  };
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function readsDuring(
  before: AppStats,
  after: AppStats,
): Pick<ReplicaCell, 'reads' | 'replicaShare' | 'roundTripsPerRequest'> {
  const counter = (name: keyof RouterCounters) =>
    (after.router?.[name] ?? Number.NaN) - (before.router?.[name] ?? 0);
  const reads: RouterCounters = {
    replicaReads: counter('replicaReads'),
    primaryReads: counter('primaryReads'),
    staleReplicaReads: counter('staleReplicaReads'),
    failovers: counter('failovers'),
  };
  // A stale replica answer is counted both as a replica read and as the primary's re-read.
  const answeredByReplica = reads.replicaReads - reads.staleReplicaReads;
  const loads = answeredByReplica + reads.primaryReads;
  const requests = (after.metrics?.requests ?? 0) - (before.metrics?.requests ?? 0);
  const roundTrips = (after.metrics?.roundTrips ?? 0) - (before.metrics?.roundTrips ?? 0);
  return {
    reads,
    replicaShare: loads > 0 ? answeredByReplica / loads : Number.NaN,
    roundTripsPerRequest: requests > 0 ? roundTrips / requests : Number.NaN,
  };
}

/** The same database and role on another server of the cluster. */
function on(server: PostgresServer, url: string): string {
  const parsed = new URL(url);
  parsed.hostname = server.host;
  parsed.port = String(server.port);
  return parsed.toString();
}

async function serverVersion(database: TestDatabase): Promise<string> {
  const client = new pg.Client({ connectionString: database.url });
  await client.connect();
  try {
    const { rows } = await client.query<{ version: string }>(
      `SELECT current_setting('server_version') AS version`,
    );
    return rows[0]?.version ?? '?';
  } finally {
    await client.end();
  }
}

function clusterCpuMicros(servers: readonly PostgresServer[]): number | undefined {
  let total = 0;
  for (const server of servers) {
    const micros = postgresCpuMicros(server.pid);
    if (micros === undefined) return undefined;
    total += micros;
  }
  return total;
}
