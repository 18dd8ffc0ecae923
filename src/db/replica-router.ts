import { EventEmitter } from 'node:events';
import { debuglog } from 'node:util';
import type pg from 'pg';
import { SessionOptionsError, SessionStoreUnavailableError } from '../errors.js';
import { duration, postgresUrl } from '../options/resolve.js';
import { createPool, poolConfig } from './connection-config.js';
import type { SessionDatabase } from './router.js';
import { isReadOnlyError, isUnavailableError } from './sqlstate.js';

const trace = debuglog('pg-sessions:router');

/** A server the router knows: a URL or a node-postgres config. */
export type HostConfig = string | pg.PoolConfig;

export interface ReplicaRouterOptions {
  /** The primary and its replicas, when the roles are known in advance. */
  readonly primary?: HostConfig;
  readonly replicas?: readonly HostConfig[];
  /** Or every server: roles are discovered with `pg_is_in_recovery()`, like libpq's target_session_attrs. */
  readonly hosts?: readonly HostConfig[];
  /** A replica further behind than this (ms) leaves rotation until it catches up. @default 1_000 */
  readonly maxReplicaLagMs?: number;
  /** How often each server's role, replay position and lag are checked (ms). @default 500 */
  readonly healthCheckInterval?: number;
  /** How long a write may wait for a new primary after the old one failed (ms). @default 5_000 */
  readonly failoverTimeout?: number;
  /** Connections per server. @default 10 */
  readonly poolSize?: number;
  /** Wait at most this long for a connection (ms). @default 2_000 */
  readonly connectTimeout?: number;
  /** statement_timeout on every connection (ms). @default 5_000 */
  readonly statementTimeout?: number;
}

/** What the router knows about one server. */
export interface HostState {
  readonly name: string;
  readonly role: 'primary' | 'replica' | 'down' | 'unknown';
  /** Replayed (replica) or current (primary) WAL position, e.g. '0/3000148'. */
  readonly lsn: string | undefined;
  /** Replication lag estimate in ms (0 when caught up). */
  readonly lagMs: number | undefined;
  /** The server's timeline (a replica's is known only to a role with pg_read_all_stats). */
  readonly timeline: number | undefined;
  /**
   * A replica that follows the current primary: it has a WAL receiver, is on the
   * primary's timeline (when visible), and its replay keeps up with the primary's WAL.
   */
  readonly following: boolean;
  /** In the read rotation now. */
  readonly inRotation: boolean;
}

interface Host {
  readonly name: string;
  readonly config: pg.PoolConfig;
  readonly pool: pg.Pool;
  role: HostState['role'];
  lsn: bigint | undefined;
  lagMs: number | undefined;
  timeline: number | undefined;
  /** A WAL receiver runs (and streams, where its status is visible). */
  receiving: boolean;
  following: boolean;
}

/** The primary's WAL position at one health check: a replica's progress is measured against these. */
interface PositionSample {
  readonly at: number;
  readonly lsn: bigint;
}

/**
 * Counters of where reads went, for tests, benchmarks and dashboards. A load whose
 * replica copy was older than the client's fence counts once in `replicaReads`, once in
 * `staleReplicaReads` and once in `primaryReads` (the primary answered it again): the
 * loads the replicas served are `replicaReads - staleReplicaReads`.
 */
export interface RouterCounters {
  /** Reads sent to a replica. */
  replicaReads: number;
  /** Reads the primary answered: no replica qualified, or a replica's copy was stale. */
  primaryReads: number;
  /** Replica answers older than the client's fence (missing row, lower version): read again on the primary. */
  staleReplicaReads: number;
  failovers: number;
}

/**
 * The database router behind the store: `writer()` is the primary, `reader(fence)` a
 * replica that has replayed at least `fence` (a WAL position) and is within
 * `maxReplicaLagMs`, or the primary when none is. Health checks take failing or lagging
 * replicas out of rotation and bring them back. When a write finds the primary gone or
 * read-only, {@link failover} rediscovers it among the hosts (`pg_is_in_recovery()`).
 * Emits 'primary:changed' with the new primary's name.
 *
 * @example
 * const database = new ReplicaRouter({ hosts: [urlA, urlB, urlC] });
 * app.use(sessions({ database }));
 */
export class ReplicaRouter extends EventEmitter implements SessionDatabase {
  readonly counters: RouterCounters = {
    replicaReads: 0,
    primaryReads: 0,
    staleReplicaReads: 0,
    failovers: 0,
  };
  readonly #hosts: Host[];
  readonly #options: Required<Omit<ReplicaRouterOptions, 'primary' | 'replicas' | 'hosts'>>;
  #primary: Host | undefined;
  /** The current primary's positions over the last few checks, oldest first. */
  #positions: PositionSample[] = [];
  #next = 0;
  #timer: NodeJS.Timeout | undefined;
  #failingOver: Promise<boolean> | undefined;
  #closed = false;
  #ready: Promise<void>;

  /** @throws {SessionOptionsError} naming the option, for a missing or wrong one. */
  constructor(options: ReplicaRouterOptions) {
    super();
    const configs = hostConfigs(options);
    this.#options = {
      maxReplicaLagMs: duration('maxReplicaLagMs', options.maxReplicaLagMs, 1_000, true),
      healthCheckInterval: duration('healthCheckInterval', options.healthCheckInterval, 500),
      failoverTimeout: duration('failoverTimeout', options.failoverTimeout, 5_000, true),
      poolSize: count('poolSize', options.poolSize, 10),
      connectTimeout: duration('connectTimeout', options.connectTimeout, 2_000),
      statementTimeout: duration('statementTimeout', options.statementTimeout, 5_000),
    };
    this.#hosts = configs.map((config, index) => this.#openHost(config, index));
    if (options.primary && !options.hosts) {
      this.#primary = this.#hosts[0];
      this.#hosts[0]!.role = 'primary';
      for (const host of this.#hosts.slice(1)) host.role = 'replica';
    }
    this.#ready = this.checkAll();
    this.#timer = setInterval(() => void this.checkAll(), this.#options.healthCheckInterval);
    this.#timer.unref();
  }

  #openHost(config: HostConfig, index: number): Host {
    const base: pg.PoolConfig = typeof config === 'string' ? { connectionString: config } : config;
    const full = poolConfig(this.#options, base);
    const pool = createPool(full);
    pool.on('error', () => {});
    const name = describe(base, index);
    return {
      name,
      config: full,
      pool,
      role: 'unknown',
      lsn: undefined,
      lagMs: undefined,
      timeline: undefined,
      receiving: false,
      following: false,
    };
  }

  /** Resolves once every host was checked once (the primary is known if reachable). */
  ready(): Promise<void> {
    return this.#ready;
  }

  writer(): pg.Pool {
    if (!this.#primary) {
      throw new SessionStoreUnavailableError('no primary is known among the configured hosts');
    }
    return this.#primary.pool;
  }

  reader(fence: string | undefined): pg.Pool {
    const wanted = fence ? parseLsn(fence) : undefined;
    const candidates = this.#hosts.filter(
      (host) =>
        this.#inRotation(host) &&
        (wanted === undefined || (host.lsn !== undefined && host.lsn >= wanted)),
    );
    if (candidates.length === 0) {
      this.counters.primaryReads++;
      return this.writer();
    }
    this.counters.replicaReads++;
    this.#next = (this.#next + 1) % candidates.length;
    return candidates[this.#next]!.pool;
  }

  /**
   * The primary, for a read that a replica answered with a copy older than the client's
   * fence (the store reads it again there): counted in `staleReplicaReads`.
   */
  staleReader(): pg.Pool {
    this.counters.staleReplicaReads++;
    this.counters.primaryReads++;
    return this.writer();
  }

  /** True when `pool` is the current primary's (reads from it need no verification). */
  isPrimary(pool: pg.Pool): boolean {
    return this.#primary?.pool === pool;
  }

  listenerConfig(): pg.ClientConfig {
    if (!this.#primary)
      throw new SessionStoreUnavailableError('no primary is known among the configured hosts');
    const {
      max: _max,
      connectionTimeoutMillis: _timeout,
      query_timeout: _query,
      ...config
    } = this.#primary.config;
    return config;
  }

  /** What the router knows now, for `pg-sessions status` and dashboards. */
  state(): HostState[] {
    return this.#hosts.map((host) => ({
      name: host.name,
      role: host.role,
      lsn: host.lsn === undefined ? undefined : formatLsn(host.lsn),
      lagMs: host.lagMs,
      timeline: host.timeline,
      following: host.role === 'replica' && host.following,
      inRotation: this.#inRotation(host),
    }));
  }

  /**
   * A replica serves reads only while it follows the current primary, whatever its own
   * lag estimate says: one left behind by a failover has nothing more to replay and
   * reports itself caught up, while it misses every change since (revocations too).
   */
  #inRotation(host: Host): boolean {
    return (
      host.role === 'replica' &&
      host.following &&
      host.lagMs !== undefined &&
      host.lagMs <= this.#options.maxReplicaLagMs
    );
  }

  /**
   * Call with the error of a failed write: if it says the primary is gone or read-only,
   * wait (up to failoverTimeout) until a host reports it is a primary, and resolve true
   * when the writer changed (the caller retries once). Concurrent callers share one search.
   */
  failover(error: unknown): Promise<boolean> {
    if (!isUnavailableError(error) && !isReadOnlyError(error)) return Promise.resolve(false);
    this.#failingOver ??= this.#findPrimary(this.#primary).finally(() => {
      this.#failingOver = undefined;
    });
    return this.#failingOver;
  }

  async #findPrimary(failed: Host | undefined): Promise<boolean> {
    const deadline = Date.now() + this.#options.failoverTimeout;
    let delay = 25;
    while (!this.#closed && Date.now() < deadline) {
      await this.checkAll();
      if (this.#primary && this.#primary !== failed && this.#primary.role === 'primary') {
        this.counters.failovers++;
        return true;
      }
      // The old primary may simply be back (a restart, not a promotion).
      if (this.#primary === failed && failed?.role === 'primary' && (await this.#accepts(failed)))
        return true;
      await new Promise((resolve) => setTimeout(resolve, delay));
      delay = Math.min(delay * 2, 250);
    }
    return false;
  }

  async #accepts(host: Host): Promise<boolean> {
    try {
      await host.pool.query('SELECT 1');
      return true;
    } catch {
      return false;
    }
  }

  /** One health check of every host: role, timeline, WAL position, lag, whom it follows. */
  async checkAll(): Promise<void> {
    const checkedAt = Date.now();
    // Every host is updated at once, after all answered: a read never sees half a check.
    const results = await Promise.all(this.#hosts.map((host) => this.#check(host)));
    for (const apply of results) apply();
    const primaries = this.#hosts.filter((host) => host.role === 'primary');
    // Two servers claiming to be primary (an old one not yet fenced): keep the newest
    // timeline's, then the one furthest ahead.
    const chosen = primaries.sort(
      (a, b) => (b.timeline ?? 0) - (a.timeline ?? 0) || Number((b.lsn ?? 0n) - (a.lsn ?? 0n)),
    )[0];
    if (chosen && chosen !== this.#primary) {
      const previous = this.#primary?.name;
      this.#primary = chosen;
      this.#positions = [];
      trace('primary is now %s (was %s)', chosen.name, previous);
      this.emit('primary:changed', chosen.name, previous);
    }
    const primary = this.#primary;
    if (primary?.role === 'primary' && primary.lsn !== undefined) {
      this.#recordPosition({ at: checkedAt, lsn: primary.lsn });
    }
    for (const host of this.#hosts) {
      if (host.role === 'replica') this.#judgeReplica(host, primary, checkedAt);
    }
  }

  #recordPosition(sample: PositionSample): void {
    const last = this.#positions.at(-1);
    // A position seen before keeps its first time: that is when the primary reached it.
    if (last && last.lsn >= sample.lsn) return;
    this.#positions.push(sample);
    const horizon = sample.at - Math.max(10_000, 4 * this.#options.maxReplicaLagMs);
    while (this.#positions.length > 2 && this.#positions[0]!.at < horizon) this.#positions.shift();
  }

  /**
   * Whether a replica follows the current primary, and its lag measured against the
   * primary's own positions: the time since the primary was where the replica has
   * replayed to. A replica whose replay stands still while the primary moves falls
   * behind by that measure, however caught up it believes itself.
   */
  #judgeReplica(host: Host, primary: Host | undefined, checkedAt: number): void {
    const sameTimeline =
      primary?.timeline === undefined ||
      host.timeline === undefined ||
      host.timeline === primary.timeline;
    // Never yet seen where the current primary was: left behind at a failover (or not
    // streaming from it yet). A receiver that only keeps retrying must not count.
    const reached =
      host.lsn === undefined
        ? undefined
        : this.#positions.findLast((sample) => sample.lsn <= host.lsn!);
    host.following =
      host.receiving && sameTimeline && primary?.role === 'primary' && reached !== undefined;
    if (!host.following || reached === undefined) return;
    const latest = this.#positions.at(-1)!;
    const positionLag = host.lsn! >= latest.lsn ? 0 : checkedAt - reached.at;
    host.lagMs = Math.max(host.lagMs ?? 0, positionLag);
  }

  /** Asks one host; returns how to update it (applied with every other host's answer). */
  async #check(host: Host): Promise<() => void> {
    try {
      const { rows } = await host.pool.query<{
        standby: boolean;
        lsn: string | null;
        timeline: number | null;
        receiving: boolean;
        lag_ms: number | null;
      }>(
        // pg_stat_wal_receiver shows a role without pg_read_all_stats the receiver's pid
        // only: then its status and timeline are NULL, and progress alone must tell.
        `SELECT pg_is_in_recovery() AS standby,
                CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END::text AS lsn,
                CASE WHEN pg_is_in_recovery() THEN (SELECT received_tli FROM pg_stat_wal_receiver)
                     ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int
                END AS timeline,
                coalesce((SELECT pid IS NOT NULL AND coalesce(status = 'streaming', true)
                            FROM pg_stat_wal_receiver), false) AS receiving,
                CASE WHEN NOT pg_is_in_recovery() THEN NULL
                     -- Everything received is replayed: caught up, however long ago the
                     -- last transaction was (an idle primary still writes some WAL).
                     WHEN pg_last_wal_receive_lsn() IS NOT NULL
                          AND pg_last_wal_receive_lsn() <= pg_last_wal_replay_lsn() THEN 0
                     ELSE (extract(epoch FROM clock_timestamp() - pg_last_xact_replay_timestamp()) * 1000)::float8
                END AS lag_ms`,
      );
      const row = rows[0];
      if (!row) return () => {};
      return () => {
        host.role = row.standby ? 'replica' : 'primary';
        host.lsn = row.lsn ? parseLsn(row.lsn) : undefined;
        host.timeline = row.timeline ?? undefined;
        host.receiving = row.standby && row.receiving;
        host.lagMs = row.standby ? (row.lag_ms ?? 0) : 0;
      };
    } catch {
      return () => {
        host.role = 'down';
        host.lagMs = undefined;
        host.receiving = false;
        host.following = false;
      };
    }
  }

  async close(): Promise<void> {
    this.#closed = true;
    clearInterval(this.#timer);
    await this.#failingOver?.catch(() => {});
    await Promise.all(this.#hosts.map((host) => host.pool.end().catch(() => {})));
  }
}

const HOST_FIX = 'give a postgres:// URL or a pg.PoolConfig object';

/** The servers of the options, validated: `hosts`, or `primary` followed by `replicas`. */
function hostConfigs(options: ReplicaRouterOptions): HostConfig[] {
  if (typeof options !== 'object' || options === null) {
    throw new SessionOptionsError(
      'hosts',
      'missing: new ReplicaRouter({ hosts: [url, …] }) or ({ primary, replicas })',
    );
  }
  const { hosts, primary, replicas } = options;
  if (hosts !== undefined && (primary !== undefined || replicas !== undefined)) {
    throw new SessionOptionsError(
      'hosts',
      'give either hosts (roles discovered) or primary and replicas, not both',
    );
  }
  if (hosts !== undefined) {
    const list = hostList('hosts', hosts);
    if (list.length === 0) {
      throw new SessionOptionsError('hosts', `is empty: ${HOST_FIX} for each server`);
    }
    return list;
  }
  if (primary === undefined) {
    throw new SessionOptionsError(
      replicas === undefined ? 'hosts' : 'primary',
      replicas === undefined
        ? 'missing: give every server in hosts, or primary (and replicas)'
        : 'missing: replicas need their primary',
    );
  }
  return [hostConfig('primary', primary), ...hostList('replicas', replicas ?? [])];
}

function hostList(name: string, value: unknown): HostConfig[] {
  if (!Array.isArray(value)) {
    throw new SessionOptionsError(name, `must be an array: ${HOST_FIX} for each server`);
  }
  return value.map((config: unknown, index) => hostConfig(`${name}[${index}]`, config));
}

function hostConfig(name: string, value: unknown): HostConfig {
  if (typeof value === 'string') return postgresUrl(name, value) as string;
  if (typeof value === 'object' && value !== null && !Array.isArray(value)) {
    return value as pg.PoolConfig;
  }
  throw new SessionOptionsError(name, `is ${value === null ? 'null' : typeof value}: ${HOST_FIX}`);
}

function count(name: string, value: number | undefined, fallback: number): number {
  const resolved = duration(name, value, fallback);
  if (!Number.isInteger(resolved)) {
    throw new SessionOptionsError(name, `must be a whole number, got ${String(value)}`);
  }
  return resolved;
}

export function parseLsn(lsn: string): bigint {
  const [high, low] = lsn.split('/');
  if (high === undefined || low === undefined) throw new TypeError(`not a WAL position: ${lsn}`);
  return (BigInt(`0x${high}`) << 32n) + BigInt(`0x${low}`);
}

export function formatLsn(lsn: bigint): string {
  return `${(lsn >> 32n).toString(16).toUpperCase()}/${(lsn & 0xffffffffn).toString(16).toUpperCase()}`;
}

function describe(config: pg.PoolConfig, index: number): string {
  if (config.connectionString) {
    try {
      const url = new URL(config.connectionString);
      return `${url.hostname}:${url.port || 5432}`;
    } catch {
      return `host ${index}`;
    }
  }
  return `${config.host ?? 'localhost'}:${config.port ?? 5432}`;
}
