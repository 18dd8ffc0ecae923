import { EventEmitter } from 'node:events';
import type pg from 'pg';
import type { Logger } from '../logger.js';
import type { SessionMetrics } from '../metrics.js';
import { type ListenerOptions, SessionListener } from './listener.js';
import type { SessionNotification } from './notification.js';
import type { SessionCache } from './session-cache.js';

/** A node of the cluster as discovery reports it (on Citus, a row of pg_dist_node). */
export interface NodeAddress {
  readonly host: string;
  readonly port: number;
}

/**
 * The cache's LISTEN connections: the primary's and, once {@link follow} is called, one
 * per node of a Citus cluster, where a trigger's NOTIFY is heard only on the worker that
 * holds the shard. The cache is trusted (`healthy`) only while every node is heard;
 * 'down' and 'up' mark the changes of that, and every member's 'notification' is
 * forwarded. Without follow() it is the primary's listener alone, as before.
 */
export class ClusterListener extends EventEmitter {
  readonly #primary: SessionListener;
  readonly #nodes = new Map<string, SessionListener>();
  readonly #logger: Logger;
  /** A node's listener shares the primary's cache, metrics, logger and options. */
  readonly #newMember: (config: () => pg.ClientConfig) => SessionListener;
  #reportedHealthy = false;
  #stopped = true;
  #pollTimer: NodeJS.Timeout | undefined;
  /** Bumped by follow() and stop(): a discovery begun before then changes nothing. */
  #following = 0;

  constructor(
    primary: SessionListener,
    cache: SessionCache,
    metrics: SessionMetrics,
    logger: Logger,
    options: ListenerOptions,
  ) {
    super();
    this.#primary = this.attach(primary);
    this.#logger = logger;
    this.#newMember = (config) => new SessionListener(config, cache, metrics, logger, options);
  }

  /** True while every node is heard: a row cached from one that is not may be stale. */
  get healthy(): boolean {
    if (this.#stopped || !this.#primary.healthy) return false;
    for (const node of this.#nodes.values()) if (!node.healthy) return false;
    return true;
  }

  /** The backend pid of the primary's LISTEN connection (for operators and tests). */
  get backendPid(): number | undefined {
    return this.#primary.backendPid;
  }

  /** Connects to the primary; resolves after the first attempt. */
  start(): Promise<void> {
    this.#stopped = false;
    return this.#primary.start();
  }

  /**
   * Listens on every node `discover` lists, now and again every `pollIntervalMs` (with
   * jitter, so processes do not poll in step): a new node gets a listener, one gone loses
   * it. A failed discovery is logged and retried at the next poll. Resolves once each
   * listener of the first round has made its first attempt. Starts this listener too.
   */
  async follow(
    discover: () => Promise<readonly NodeAddress[]>,
    nodeConfig: (node: NodeAddress) => pg.ClientConfig,
    pollIntervalMs: number,
  ): Promise<void> {
    if (!(pollIntervalMs > 0)) throw new RangeError('pollIntervalMs must be a positive number');
    const primaryStarted = this.start();
    clearTimeout(this.#pollTimer);
    const generation = ++this.#following;
    const poll = async (): Promise<Promise<void>[]> => {
      const started = await this.discoverNodes(generation, discover, nodeConfig);
      if (generation === this.#following) {
        this.#pollTimer = setTimeout(poll, pollIntervalMs * (0.75 + Math.random() / 2));
        this.#pollTimer.unref();
      }
      return started;
    };
    await Promise.all([primaryStarted, ...(await poll())]);
  }

  /** The primary changed (a failover): its listener moves; workers are found by discovery. */
  reconnect(): void {
    this.#primary.reconnect();
  }

  async stop(): Promise<void> {
    this.#stopped = true;
    this.#following++;
    clearTimeout(this.#pollTimer);
    this.#pollTimer = undefined;
    this.report(undefined);
    const nodes = [...this.#nodes.keys()].map((key) => this.drop(key));
    await Promise.all([this.#primary.stop(), ...nodes]);
  }

  /** One round of discovery; returns the new members' first attempts. Never throws. */
  private async discoverNodes(
    generation: number,
    discover: () => Promise<readonly NodeAddress[]>,
    nodeConfig: (node: NodeAddress) => pg.ClientConfig,
  ): Promise<Promise<void>[]> {
    const started: Promise<void>[] = [];
    try {
      const nodes = await discover();
      if (generation !== this.#following) return started;
      const wanted = new Map(nodes.map((node) => [`${node.host}:${node.port}`, node]));
      for (const key of this.#nodes.keys()) {
        if (wanted.has(key)) continue;
        this.#logger.info({ node: key }, 'pg-sessions listener: node left the cluster');
        void this.drop(key);
      }
      for (const [key, node] of wanted) {
        if (this.#nodes.has(key)) continue;
        const listener = this.attach(this.#newMember(() => nodeConfig(node)));
        this.#nodes.set(key, listener);
        this.#logger.info({ node: key }, 'pg-sessions listener: following a new node');
        started.push(listener.start());
      }
      // A node not heard yet makes the cache untrusted; one gone may make it trusted again.
      this.report(undefined);
    } catch (error) {
      this.#logger.warn({ err: error }, 'pg-sessions listener: node discovery failed, retrying');
    }
    return started;
  }

  private drop(key: string): Promise<void> {
    const listener = this.#nodes.get(key);
    this.#nodes.delete(key);
    // Only this object listens to a member: unhooked, its stop is not reported as a loss.
    listener?.removeAllListeners();
    return listener?.stop().catch(() => {}) ?? Promise.resolve();
  }

  private attach(listener: SessionListener): SessionListener {
    return listener
      .on('up', () => this.report(undefined))
      .on('down', (error: unknown) => this.report(error))
      .on('notification', (message: SessionNotification) => this.emit('notification', message));
  }

  /** Emits 'up' or 'down' when the trust in the cache as a whole changes. */
  private report(error: unknown): void {
    const healthy = this.healthy;
    if (healthy === this.#reportedHealthy) return;
    this.#reportedHealthy = healthy;
    if (healthy) this.emit('up');
    else this.emit('down', error);
  }
}
