import type { Logger } from '../logger.js';
import type { SessionMetrics } from '../metrics.js';

/** Writes the collected touches of one tenant in one statement. */
export type TouchFlusher = (tenantId: string, sessionIds: readonly string[]) => Promise<void>;

/**
 * Collects sliding-expiry touches of unchanged sessions and writes them once per
 * interval: one UPDATE per tenant (row-level security scopes a statement to one
 * tenant), however many requests came. A crash loses at most one interval of
 * touches; the statement only matches live rows, so it never extends a revoked or
 * expired session.
 */
export class TouchBatcher {
  #pending = new Map<string, Set<string>>();
  #timer: NodeJS.Timeout | undefined;
  #flushing: Promise<void> = Promise.resolve();

  constructor(
    private readonly flusher: TouchFlusher,
    private readonly intervalMs: number,
    private readonly metrics: SessionMetrics,
    private readonly logger: Logger,
  ) {}

  start(): void {
    if (this.#timer) return;
    this.#timer = setInterval(() => {
      void this.flush();
    }, this.intervalMs);
    this.#timer.unref();
  }

  add(tenantId: string, sessionId: string): void {
    let ids = this.#pending.get(tenantId);
    if (!ids) {
      ids = new Set();
      this.#pending.set(tenantId, ids);
    }
    ids.add(sessionId);
  }

  get pendingCount(): number {
    let count = 0;
    for (const ids of this.#pending.values()) count += ids.size;
    return count;
  }

  /** Writes what is pending now (also called at stop). Flushes never overlap. */
  flush(): Promise<void> {
    this.#flushing = this.#flushing.then(() => this.flushPending());
    return this.#flushing;
  }

  async stop(): Promise<void> {
    clearInterval(this.#timer);
    this.#timer = undefined;
    await this.flush();
  }

  private async flushPending(): Promise<void> {
    if (this.#pending.size === 0) return;
    const batch = this.#pending;
    this.#pending = new Map();
    for (const [tenantId, ids] of batch) {
      const startedAt = performance.now();
      try {
        await this.flusher(tenantId, [...ids]);
        this.metrics.increment('touchFlushes');
        this.metrics.increment('touchedSessions', ids.size);
        this.metrics.time('touchFlush', startedAt);
      } catch (error) {
        // Touches are best effort: a lost batch only shortens idle expiry a little.
        this.logger.warn(
          { err: error, tenantId, sessions: ids.size },
          'pg-sessions touch flush failed',
        );
      }
    }
  }
}
