import { EventEmitter } from 'node:events';
import { Kysely, PostgresAdapter, PostgresIntrospector, PostgresQueryCompiler } from 'kysely';
import pg from 'pg';
import { SessionListener } from './cache/listener.js';
import { SessionCache } from './cache/session-cache.js';
import { withFailover } from './db/failover.js';
import { RequestTransactionDriver } from './db/request-driver.js';
import { isSessionDatabase, type SessionDatabase, SinglePoolDatabase } from './db/router.js';
import { PoolRunner, type Scope } from './db/runner.js';
import type { SessionsDatabase } from './db/schema.js';
import { checkSchema } from './db/schema-guard.js';
import { GarbageCollector } from './jobs/garbage-collector.js';
import { TouchBatcher } from './jobs/touch-batcher.js';
import { SessionMetrics } from './metrics.js';
import type { ResolvedOptions } from './options.js';
import { type EndedSession, SessionStore } from './store.js';

/**
 * The per-process parts behind the middleware: the database router, the store, the
 * cache and its listener, the touch batcher and the garbage collector. Start and
 * stop are idempotent and share one in-flight promise.
 */
export class SessionEngine {
  readonly metrics = new SessionMetrics();
  readonly store: SessionStore;
  readonly database: SessionDatabase;
  readonly kysely: Kysely<SessionsDatabase>;
  readonly cache: SessionCache | undefined;
  readonly listener: SessionListener | undefined;
  readonly touches: TouchBatcher;
  readonly gc: GarbageCollector | undefined;
  #starting: Promise<void> | undefined;
  #started = false;
  #closing: Promise<void> | undefined;
  #unfollow: (() => void) | undefined;

  constructor(readonly options: ResolvedOptions) {
    this.store = new SessionStore({
      idleTimeoutMs: options.idleTimeout,
      absoluteTimeoutMs: options.absoluteTimeout,
      touchIntervalMs: options.touchInterval,
      rotateIntervalMs: options.rotateInterval === false ? undefined : options.rotateInterval,
      rotationGraceMs: options.rotationGrace,
    });
    this.database = openDatabase(options);
    // Request transactions, always on the current primary's pool (also after a failover).
    this.kysely = new Kysely<SessionsDatabase>({
      dialect: {
        createAdapter: () => new PostgresAdapter(),
        createDriver: () =>
          new RequestTransactionDriver(() => this.database.writer(), this.notifyFailed),
        createIntrospector: (db) => new PostgresIntrospector(db),
        createQueryCompiler: () => new PostgresQueryCompiler(),
      },
    });
    if (options.cache) {
      this.cache = new SessionCache(options.cache);
      const { listenUrl } = options.cache;
      this.listener = new SessionListener(
        () => (listenUrl ? { connectionString: listenUrl } : this.database.listenerConfig()),
        this.cache,
        this.metrics,
        options.logger,
        {
          heartbeatInterval: options.cache.heartbeatInterval,
          minBackoff: options.cache.reconnectMinDelay,
          maxBackoff: options.cache.reconnectMaxDelay,
        },
      );
      // After a failover the LISTEN connection belongs on the new primary at once: an old
      // primary that is still reachable would otherwise keep it, and hear nothing.
      const router = this.database;
      if (router instanceof EventEmitter) {
        const follow = () => this.listener?.reconnect();
        router.on('primary:changed', follow);
        this.#unfollow = () => router.off('primary:changed', follow);
      }
    }
    this.touches = new TouchBatcher(
      async (tenantId, ids) => {
        await this.store.touchMany(
          this.runner({ tenant: tenantId, actor: 'pg-sessions:touch' }),
          tenantId,
          ids,
        );
      },
      options.touchFlushInterval,
      this.metrics,
      options.logger,
    );
    if (options.gc) {
      this.gc = new GarbageCollector(
        () => this.database.writer(),
        {
          intervalMs: options.gc.interval,
          batchSize: options.gc.batchSize,
          maxBatches: options.gc.maxBatches,
        },
        this.metrics,
        options.logger,
      );
    }
    this.metrics.gauges = () => ({
      cacheEntries: this.cache?.size ?? 0,
      cacheBytes: this.cache?.bytes ?? 0,
      listenerUp: this.listener?.healthy ?? false,
    });
  }

  /** True when a cached row may be served (cache on and its listener up). */
  get cacheTrusted(): boolean {
    return this.listener?.healthy === true;
  }

  /** Runs `work`, once more on the new primary when the router found one (see db/failover.ts). */
  withFailover<T>(work: (retry: boolean) => Promise<T>): Promise<T> {
    return withFailover(this.database, this.options.logger, work);
  }

  /** True when reads may come from replicas (the client then carries a version fence). */
  get hasReplicas(): boolean {
    return typeof (this.database as { isPrimary?: unknown }).isPrimary === 'function';
  }

  /** Sessions ended by this process: never serve them from its cache again. */
  forgetEnded(tenantId: string, ended: readonly EndedSession[]): void {
    this.cache?.forgetEnded(tenantId, ended);
  }

  /** A pool runner for one scope; reads go to `reader(fence)`. */
  runner(
    scope: Scope | (() => Scope),
    fence: () => string | undefined = () => undefined,
  ): PoolRunner {
    const database = this.database;
    return new PoolRunner(
      () => database.reader(fence()),
      () => database.writer(),
      scope,
      this.metrics,
      () => database.staleReader?.() ?? database.writer(),
      this.notifyFailed,
    );
  }

  /**
   * A write committed but its deferred notification failed: the write stands (it is
   * acknowledged); other nodes may serve their cached copy until it is evicted otherwise.
   */
  readonly notifyFailed = (error: unknown): void => {
    this.metrics.increment('notifyFailures');
    this.options.logger.warn(
      { err: error },
      'pg-sessions: session write committed, change notification failed',
    );
  };

  /** True once start() has finished: the request path skips it. */
  get started(): boolean {
    return this.#started;
  }

  start(): Promise<void> {
    this.#starting ??= (async () => {
      // A router given `hosts` knows the primary only after its first health check.
      await this.database.ready?.();
      if (this.options.checkSchema) await checkSchema(this.database.writer());
      await this.listener?.start();
      this.touches.start();
      this.gc?.start();
      this.#started = true;
    })().catch((error: unknown) => {
      this.#starting = undefined;
      throw error;
    });
    return this.#starting;
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
  return SinglePoolDatabase.create({
    max: options.poolSize,
    connectionTimeoutMillis: options.connectTimeout,
    statement_timeout: options.statementTimeout,
    // Give up on a query the server never answers (a dead host) a little after the server would.
    query_timeout: options.statementTimeout + options.connectTimeout,
    ...base,
  });
}
