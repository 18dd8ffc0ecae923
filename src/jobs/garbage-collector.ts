import type pg from 'pg';
import type { Logger } from '../logger.js';
import type { SessionMetrics } from '../metrics.js';

/** Advisory lock key pair held by the process that collects: 'pgse' and 2. */
export const GC_LOCK: readonly [number, number] = [0x70677365, 2];

/** What one run did. */
export interface GcRunResult {
  readonly startedAt: Date;
  /** False when another process held the lock, so this one did nothing. */
  readonly ran: boolean;
  readonly deleted: number;
  readonly batches: number;
  readonly durationMs: number;
}

/**
 * Deletes expired and revoked rows through `sessions.gc_batch`, in small batches of
 * their own transactions (never blocking requests: it skips locked rows). Every app
 * process may run it; a session-level advisory lock lets one collect at a time.
 */
export async function collectGarbage(
  pool: pg.Pool,
  options: { batchSize: number; maxBatches: number },
): Promise<GcRunResult> {
  const startedAt = new Date();
  const began = performance.now();
  const client = await pool.connect();
  // Held across batches: a server that dies between them must not crash the process.
  client.on('error', ignoreError);
  let deleted = 0;
  let batches = 0;
  let broken: Error | undefined;
  try {
    const lock = await client.query<{ locked: boolean }>(
      'SELECT pg_try_advisory_lock($1, $2) AS locked',
      [...GC_LOCK],
    );
    if (!lock.rows[0]?.locked) {
      return {
        startedAt,
        ran: false,
        deleted: 0,
        batches: 0,
        durationMs: performance.now() - began,
      };
    }
    try {
      while (batches < options.maxBatches) {
        const count = await collectBatch(client, options.batchSize);
        batches++;
        deleted += count;
        if (count < options.batchSize) break;
      }
    } finally {
      await client.query('SELECT pg_advisory_unlock($1, $2)', [...GC_LOCK]);
    }
    return { startedAt, ran: true, deleted, batches, durationMs: performance.now() - began };
  } catch (error) {
    broken = error as Error;
    throw error;
  } finally {
    client.off('error', ignoreError);
    // A client whose connection failed goes, not back to the pool.
    client.release(broken);
  }
}

function ignoreError(): void {}

/** The actor the event log names for what the in-process collector deletes. */
export const GC_ACTOR = 'pg-sessions:gc';

/** One batch in its own transaction, logged with {@link GC_ACTOR}: one round trip. */
async function collectBatch(client: pg.PoolClient, batchSize: number): Promise<number> {
  try {
    const results = (await client.query(
      `BEGIN; SELECT set_config('sessions.actor', '${GC_ACTOR}', true); SELECT sessions.gc_batch(${Math.trunc(batchSize)}) AS n; COMMIT`,
    )) as unknown as pg.QueryResult<{ n: number }>[];
    return Number(results[2]?.rows[0]?.n ?? 0);
  } catch (error) {
    await client.query('ROLLBACK').catch(() => {});
    throw error;
  }
}

/** Runs {@link collectGarbage} on a jittered interval, so nodes do not stampede. */
export class GarbageCollector {
  #timer: NodeJS.Timeout | undefined;
  #running: Promise<GcRunResult | undefined> | undefined;
  /** The last run's result, for the application to expose. */
  lastRun: GcRunResult | undefined;

  constructor(
    private readonly pool: () => pg.Pool,
    private readonly options: { intervalMs: number; batchSize: number; maxBatches: number },
    private readonly metrics: SessionMetrics,
    private readonly logger: Logger,
  ) {}

  start(): void {
    if (this.#timer) return;
    this.schedule();
  }

  private schedule(): void {
    const jitter = 0.8 + Math.random() * 0.4;
    this.#timer = setTimeout(() => {
      void this.runOnce().finally(() => {
        if (this.#timer) this.schedule();
      });
    }, this.options.intervalMs * jitter);
    this.#timer.unref();
  }

  /** One collection now (shared if one is under way). */
  runOnce(): Promise<GcRunResult | undefined> {
    this.#running ??= (async () => {
      const startedAt = performance.now();
      try {
        const result = await collectGarbage(this.pool(), this.options);
        this.lastRun = result;
        if (result.ran) {
          this.metrics.increment('gcRuns');
          this.metrics.increment('gcDeletions', result.deleted);
          this.metrics.time('gc', startedAt);
          if (result.deleted > 0)
            this.logger.info({ ...result }, 'pg-sessions collected expired sessions');
        }
        return result;
      } catch (error) {
        this.logger.warn({ err: error }, 'pg-sessions garbage collection failed');
        return undefined;
      } finally {
        this.#running = undefined;
      }
    })();
    return this.#running;
  }

  async stop(): Promise<void> {
    clearTimeout(this.#timer);
    this.#timer = undefined;
    await this.#running;
  }
}
