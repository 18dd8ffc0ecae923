import { EventEmitter } from 'node:events';
import pg from 'pg';
import { resolveConnectionConfig } from '../db/connection-config.js';
import type { Logger } from '../logger.js';
import type { SessionMetrics } from '../metrics.js';
import { NOTIFY_CHANNEL, parseNotification, type SessionNotification } from './notification.js';
import type { SessionCache } from './session-cache.js';

/** The LISTEN connection's application_name, by which operators (and `pg-sessions status`) find it. */
export const LISTENER_APPLICATION_NAME = 'pg-sessions-listener';

export interface ListenerOptions {
  /** How often the idle connection proves it is alive (ms). */
  readonly heartbeatInterval: number;
  /** First and largest reconnection delay (ms); each failure doubles it, with jitter. */
  readonly minBackoff: number;
  readonly maxBackoff: number;
}

/**
 * The one LISTEN connection of a process, straight to the primary. It keeps the cache
 * true: notifications evict older versions, and any gap — an error, the connection
 * ending, a failed heartbeat — clears the cache and marks it untrusted until LISTEN
 * works again. Emits 'up', 'down' and 'notification'.
 */
export class SessionListener extends EventEmitter {
  #client: pg.Client | undefined;
  #healthy = false;
  #stopped = true;
  #attempt = 0;
  #reconnectTimer: NodeJS.Timeout | undefined;
  #heartbeatTimer: NodeJS.Timeout | undefined;
  #connecting: Promise<void> | undefined;
  /** Bumped by {@link reconnect}: a connection begun before then may be to the old primary. */
  #generation = 0;

  constructor(
    private readonly config: () => pg.ClientConfig,
    private readonly cache: SessionCache,
    private readonly metrics: SessionMetrics,
    private readonly logger: Logger,
    private readonly options: ListenerOptions,
  ) {
    super();
  }

  /** True while LISTEN is in effect: only then may the cache be read or filled. */
  get healthy(): boolean {
    return this.#healthy;
  }

  /** Connects (or keeps retrying in the background); resolves after the first attempt. */
  start(): Promise<void> {
    if (!this.#stopped) return this.#connecting ?? Promise.resolve();
    this.#stopped = false;
    this.#connecting = this.connect();
    return this.#connecting;
  }

  async stop(): Promise<void> {
    this.#stopped = true;
    clearTimeout(this.#reconnectTimer);
    clearInterval(this.#heartbeatTimer);
    await this.#connecting?.catch(() => {});
    const client = this.#client;
    this.#client = undefined;
    this.markDown(undefined, false);
    await client?.end().catch(() => {});
  }

  /**
   * The primary changed (a failover): leave the current LISTEN connection, whose server
   * may still be up but no longer the one that commits, clear the cache, and connect to
   * the new primary now rather than after the backoff.
   */
  reconnect(): void {
    if (this.#stopped) return;
    this.#generation++;
    this.#attempt = 0;
    const client = this.#client;
    if (client) {
      this.#client = undefined;
      clearInterval(this.#heartbeatTimer);
      this.markDown(new Error('the primary changed'), true);
      void discard(client);
    } else if (!this.#reconnectTimer) {
      // An attempt is under way: it sees the new generation when it completes.
      return;
    }
    clearTimeout(this.#reconnectTimer);
    this.#reconnectTimer = undefined;
    this.#connecting = this.connect();
  }

  /** The backend pid of the LISTEN connection (for operators and tests). */
  get backendPid(): number | undefined {
    return (this.#client as unknown as { processID?: number } | undefined)?.processID;
  }

  private async connect(): Promise<void> {
    const generation = this.#generation;
    let config: pg.ClientConfig;
    try {
      // After a failover the router may not know the new primary yet: retry later.
      // The TLS decision (sslmode) is cached per host:port, so a reconnect asks nothing new.
      config = await resolveConnectionConfig({
        application_name: LISTENER_APPLICATION_NAME,
        keepAlive: true,
        connectionTimeoutMillis: 5_000,
        ...this.config(),
      });
    } catch (error) {
      this.lost(undefined, error);
      return;
    }
    const client = new pg.Client(config);
    client.on('error', (error) => this.lost(client, error));
    client.on('end', () => this.lost(client, undefined));
    client.on('notification', (message) => {
      if (message.channel === NOTIFY_CHANNEL) this.apply(parseNotification(message.payload));
    });
    try {
      await client.connect();
      await client.query(`LISTEN ${NOTIFY_CHANNEL}`);
      if (this.#stopped) {
        await client.end();
        return;
      }
      if (generation !== this.#generation) {
        // The primary changed while this connected: it may be the old one; start over.
        await discard(client);
        return this.connect();
      }
      this.#client = client;
      // Whatever was cached before this moment may have missed notifications.
      this.cache.clear();
      this.#healthy = true;
      if (this.#attempt > 0) this.metrics.increment('listenerReconnects');
      this.#attempt = 0;
      this.startHeartbeat(client);
      this.logger.info({ pid: this.backendPid }, 'pg-sessions listener connected');
      this.emit('up');
    } catch (error) {
      await client.end().catch(() => {});
      this.lost(client, error);
    }
  }

  private startHeartbeat(client: pg.Client): void {
    clearInterval(this.#heartbeatTimer);
    this.#heartbeatTimer = setInterval(() => {
      if (this.#client !== client) return;
      const timeout = setTimeout(() => {
        this.lost(client, new Error('listener heartbeat timed out'));
        client.end().catch(() => {});
      }, this.options.heartbeatInterval);
      client.query('SELECT 1').then(
        () => clearTimeout(timeout),
        (error: unknown) => {
          clearTimeout(timeout);
          this.lost(client, error);
        },
      );
    }, this.options.heartbeatInterval);
    this.#heartbeatTimer.unref();
  }

  private apply(notification: SessionNotification | undefined): void {
    if (!notification) {
      // Something we cannot read may have invalidated anything: trust nothing.
      this.cache.clear();
      return;
    }
    if (notification.op === 'flush') {
      this.metrics.increment('cacheEvictions', this.cache.invalidateTenant(notification.tenantId));
    } else {
      for (const entry of notification.sessions) {
        const evicted = this.cache.invalidate(
          entry.tenantId,
          entry.tokenHashHex,
          entry.version,
          notification.op === 'delete',
        );
        if (evicted) this.metrics.increment('cacheEvictions');
      }
    }
    this.emit('notification', notification);
  }

  private lost(client: pg.Client | undefined, error: unknown): void {
    if (this.#client !== undefined && this.#client !== client) return;
    this.#client = undefined;
    clearInterval(this.#heartbeatTimer);
    this.markDown(error, true);
    if (this.#stopped || this.#reconnectTimer) return;
    const base = Math.min(this.options.maxBackoff, this.options.minBackoff * 2 ** this.#attempt);
    const delay = base / 2 + Math.random() * (base / 2);
    this.#attempt++;
    this.#reconnectTimer = setTimeout(() => {
      this.#reconnectTimer = undefined;
      if (!this.#stopped) this.#connecting = this.connect();
    }, delay);
    this.#reconnectTimer.unref();
  }

  private markDown(error: unknown, log: boolean): void {
    const wasHealthy = this.#healthy;
    this.#healthy = false;
    this.cache.clear();
    if (wasHealthy) {
      if (log)
        this.logger.warn(
          { err: error },
          'pg-sessions listener lost: cache bypassed until it is back',
        );
      this.emit('down', error);
    }
  }
}

/** Ends a connection this listener gave up on, without its events counting as a loss. */
async function discard(client: pg.Client): Promise<void> {
  client.removeAllListeners('end');
  client.removeAllListeners('error');
  client.on('error', () => {});
  await client.end().catch(() => {});
}
