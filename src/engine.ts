import { EventEmitter } from 'node:events';
import { Kysely, PostgresAdapter, PostgresIntrospector, PostgresQueryCompiler } from 'kysely';
import pg from 'pg';
import { ClusterListener } from './cache/cluster-listener.js';
import { SessionListener } from './cache/listener.js';
import { SessionCache } from './cache/session-cache.js';
import {
  isDistributed,
  NODE_POLL_INTERVAL,
  nodeConfig,
  type Topology,
  workerNodes,
} from './citus/topology.js';
import { poolConfig } from './db/connection-config.js';
import { FailoverRunner } from './db/failover.js';
import { RequestTransactionDriver } from './db/request-driver.js';
import { isSessionDatabase, type SessionDatabase, SinglePoolDatabase } from './db/router.js';
import { PoolRunner } from './db/runner.js';
import type { SessionsDatabase } from './db/schema.js';
import { checkSchema } from './db/schema-guard.js';
import { GarbageCollector } from './jobs/garbage-collector.js';
import { TouchBatcher } from './jobs/touch-batcher.js';
import { SessionMetrics } from './metrics.js';
import type { ResolvedOptions } from './options/types.js';
import type { RequestServices } from './request/services.js';
import { KeyTransport } from './request/transport.js';
import type { ExpiryPolicy } from './store/records.js';
import { SessionStore } from './store/session-store.js';

/**
 * The per-process parts behind the middleware: the database router, the cache and its
 * listener, the touch batcher and the garbage collector, wired together once. What a
 * request uses of them is {@link services}. Start and stop are idempotent and share
 * one in-flight promise.
 */
export class SessionEngine {
  readonly metrics = new SessionMetrics();
  readonly database: SessionDatabase;
  /** Request transactions, always on the current primary's pool (also after a failover). */
  readonly kysely: Kysely<SessionsDatabase>;
  readonly cache: SessionCache | undefined;
  /** The primary's LISTEN connection; on Citus also one per node, once `follow()` is called. */
  readonly listener: ClusterListener | undefined;
  readonly touches: TouchBatcher;
  readonly gc: GarbageCollector | undefined;
  readonly services: RequestServices;
  readonly policy: ExpiryPolicy;
  /** Learnt at start: whether the tables are distributed by Citus. */
  readonly topology: Topology = { citus: false };
  #starting: Promise<void> | undefined;
  /** True once start() has finished: the request path skips it. */
  started = false;
  #closing: Promise<void> | undefined;
  #unfollow: (() => void) | undefined;

  constructor(readonly options: ResolvedOptions) {
    const { logger } = options;
    const policy: ExpiryPolicy = Object.freeze({
      idleTimeoutMs: options.idleTimeout,
      absoluteTimeoutMs: options.absoluteTimeout,
      touchIntervalMs: options.touchInterval,
      rotateIntervalMs: options.rotateInterval === false ? undefined : options.rotateInterval,
      rotationGraceMs: options.rotationGrace,
      relaxed: options.durability === 'relaxed',
      batchWrites: options.batchWrites,
    });
    const database = openDatabase(options);
    this.database = database;
    const metrics = this.metrics;
    this.kysely = new Kysely<SessionsDatabase>({
      dialect: {
        createAdapter: () => new PostgresAdapter(),
        createDriver: () => new RequestTransactionDriver(database, metrics, logger),
        createIntrospector: (db) => new PostgresIntrospector(db),
        createQueryCompiler: () => new PostgresQueryCompiler(),
      },
    });
    if (options.cache) {
      this.cache = new SessionCache(options.cache);
      this.listener = this.#listen(options.cache);
    }
    const replicas = typeof (database as { isPrimary?: unknown }).isPrimary === 'function';
    this.policy = policy;
    this.touches = new TouchBatcher(
      async (tenantId, ids) => {
        await this.store(tenantId).touchMany(ids, 'pg-sessions:touch');
      },
      options.touchFlushInterval,
      metrics,
      logger,
    );
    if (options.gc) this.gc = this.#collector(options.gc);
    metrics.gauges = () => ({
      cacheEntries: this.cache?.size ?? 0,
      cacheBytes: this.cache?.bytes ?? 0,
      listenerUp: this.listener?.healthy ?? false,
    });
    this.services = Object.freeze({
      options,
      // With replicas, a client's writes travel with their version (the fence cookie), so
      // that no replica serves it an older copy than its own last write.
      transport: new KeyTransport(options, replicas),
      database,
      policy,
      cache: this.cache,
      cacheTrust: this.listener,
      touches: this.touches,
      metrics,
      logger,
      replicas,
      failover: typeof (database as { failover?: unknown }).failover === 'function',
      topology: this.topology,
    });
  }

  /** Background garbage collection on the primary (one process at a time, by its lock). */
  #collector(gc: Exclude<ResolvedOptions['gc'], false>): GarbageCollector {
    const { database } = this;
    return new GarbageCollector(
      () => database.writer(),
      { intervalMs: gc.interval, batchSize: gc.batchSize, maxBatches: gc.maxBatches },
      this.metrics,
      this.options.logger,
    );
  }

  /** The LISTEN connections, the primary's following it across failovers. */
  #listen(cache: Exclude<ResolvedOptions['cache'], false>): ClusterListener {
    const { listenUrl } = cache;
    const database = this.database;
    const { logger } = this.options;
    const listenerOptions = {
      heartbeatInterval: cache.heartbeatInterval,
      minBackoff: cache.reconnectMinDelay,
      maxBackoff: cache.reconnectMaxDelay,
    };
    const primary = new SessionListener(
      () => (listenUrl ? { connectionString: listenUrl } : database.listenerConfig()),
      this.cache!,
      this.metrics,
      logger,
      listenerOptions,
    );
    const listener = new ClusterListener(
      primary,
      this.cache!,
      this.metrics,
      logger,
      listenerOptions,
    );
    // After a failover the LISTEN connection belongs on the new primary at once: an old
    // primary that is still reachable would otherwise keep it, and hear nothing.
    if (database instanceof EventEmitter) {
      const follow = () => listener.reconnect();
      database.on('primary:changed', follow);
      this.#unfollow = () => database.off('primary:changed', follow);
    }
    return listener;
  }

  /** The session statements of one tenant on the pool, following failovers (jobs, benchmarks). */
  store(tenantId: string): SessionStore {
    const { database, metrics } = this;
    const { logger } = this.options;
    const runner = new PoolRunner(database, tenantId, metrics, logger, false, this.topology.citus);
    return new SessionStore(FailoverRunner.around(runner, database, logger), tenantId, this.policy);
  }

  start(): Promise<void> {
    this.#starting ??= (async () => {
      // A router given `hosts` knows the primary only after its first health check.
      await this.database.ready?.();
      if (this.options.checkSchema) await checkSchema(this.database.writer());
      await this.#learnTopology();
      await this.listener?.start();
      this.touches.start();
      this.gc?.start();
      this.started = true;
    })().catch((error: unknown) => {
      this.#starting = undefined;
      throw error;
    });
    return this.#starting;
  }

  /**
   * On Citus (`pg-sessions citus distribute` ran), each worker's triggers notify there:
   * the cache listens on every worker, following pg_dist_node as nodes come and go.
   */
  async #learnTopology(): Promise<void> {
    const writer = this.database.writer();
    this.topology.citus = await isDistributed(writer);
    if (!this.topology.citus || !this.listener) return;
    const { listenUrl } = this.options.cache || {};
    const base = () =>
      listenUrl ? { connectionString: listenUrl } : this.database.listenerConfig();
    await this.listener.follow(
      () => workerNodes(this.database.writer()),
      (node) => nodeConfig(base(), node),
      NODE_POLL_INTERVAL,
    );
  }

  close(): Promise<void> {
    this.#closing ??= (async () => {
      await this.#starting?.catch(() => {});
      await this.gc?.stop();
      await this.touches.stop();
      this.#unfollow?.();
      await this.listener?.stop();
      // Kysely shares the database's pool: closing the database closes everything. A
      // database (a router) the app passed in is the app's to close.
      if (!isSessionDatabase(this.options.database)) await this.database.close();
    })();
    return this.#closing;
  }
}

function openDatabase(options: ResolvedOptions): SessionDatabase {
  const { database } = options;
  if (isSessionDatabase(database)) return database;
  if (database instanceof pg.Pool) return SinglePoolDatabase.wrap(database);
  const base: pg.PoolConfig =
    typeof database === 'string' ? { connectionString: database } : database;
  return SinglePoolDatabase.create(poolConfig(options, base));
}
