import pg from 'pg';
import { checkout } from '../db/checkout.js';
import { SqlState, sqlStateOf } from '../db/sqlstate.js';
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

/** How a run collects. */
export interface CollectOptions {
  /** Rows per batch, each batch its own transaction. */
  readonly batchSize: number;
  /** Batches per run at most. @default unlimited */
  readonly maxBatches?: number;
  /** Who the event log names. @default GC_ACTOR */
  readonly actor?: string;
  /** Wait this long for another collector's lock, ms; 0 gives up at once. @default 0 */
  readonly lockWaitMs?: number;
  /** Called after each batch with the rows deleted so far (progress). */
  readonly onBatch?: (deleted: number) => void;
}

/** The actor the event log names for what the in-process collector deletes. */
export const GC_ACTOR = 'pg-sessions:gc';

/**
 * Deletes expired and revoked rows through `sessions.gc_batch`, in small batches of
 * their own transactions (never blocking requests: it skips locked rows). Every app
 * process may run it; a session-level advisory lock lets one collect at a time.
 */
export async function collectGarbage(pool: pg.Pool, options: CollectOptions): Promise<GcRunResult> {
  // Held across batches: a server that dies between them must not crash the process.
  const client = await checkout(pool);
  let broken: Error | undefined;
  try {
    return await collectOn(client, options);
  } catch (error) {
    broken = error as Error;
    throw error;
  } finally {
    // A client whose connection failed goes, not back to the pool.
    client.release(broken);
  }
}

/** {@link collectGarbage} on a connection the caller holds (the CLI's). */
export async function collectOn(
  client: pg.ClientBase,
  options: CollectOptions,
): Promise<GcRunResult> {
  const startedAt = new Date();
  const began = performance.now();
  if (!(await takeLock(client, options.lockWaitMs ?? 0))) {
    return { startedAt, ran: false, deleted: 0, batches: 0, durationMs: performance.now() - began };
  }
  let deleted = 0;
  let batches = 0;
  try {
    while (batches < (options.maxBatches ?? Number.POSITIVE_INFINITY)) {
      const count = await collectBatch(client, options.batchSize, options.actor ?? GC_ACTOR);
      batches++;
      deleted += count;
      options.onBatch?.(deleted);
      // A short batch: nothing left but rows that requests hold right now (skipped).
      if (count < options.batchSize) break;
    }
  } finally {
    await client.query('SELECT pg_advisory_unlock($1, $2)', [...GC_LOCK]);
  }
  return { startedAt, ran: true, deleted, batches, durationMs: performance.now() - began };
}

/** The collectors' lock: taken at once when free, else waited for up to `waitMs`. */
async function takeLock(client: pg.ClientBase, waitMs: number): Promise<boolean> {
  const free = await client.query<{ locked: boolean }>(
    'SELECT pg_try_advisory_lock($1, $2) AS locked',
    [...GC_LOCK],
  );
  if (free.rows[0]?.locked) return true;
  if (waitMs <= 0) return false;
  try {
    await client.query(`SET lock_timeout = ${Math.trunc(waitMs)}`);
    await client.query('SELECT pg_advisory_lock($1, $2)', [...GC_LOCK]);
    return true;
  } catch (error) {
    if (sqlStateOf(error) === SqlState.lockNotAvailable) return false;
    throw error;
  } finally {
    await client.query('RESET lock_timeout').catch(() => {});
  }
}

/** One batch in its own transaction, logged with `actor`: one round trip. */
async function collectBatch(
  client: pg.ClientBase,
  batchSize: number,
  actor: string,
): Promise<number> {
  try {
    const results = (await client.query(
      `BEGIN; SELECT set_config('sessions.actor', ${pg.escapeLiteral(actor)}, true); SELECT sessions.gc_batch(${Math.trunc(batchSize)}) AS n; COMMIT`,
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
