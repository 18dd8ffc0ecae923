const COUNTERS = [
  'requests',
  'roundTrips',
  'loads',
  'creates',
  'saves',
  'destroys',
  'conflicts',
  'misses',
  'invalidTokens',
  'stolenTokens',
  'csrfRefusals',
  'rotations',
  'unavailable',
  'cacheHits',
  'cacheMisses',
  'cacheEvictions',
  'listenerReconnects',
  'notifyFailures',
  'touchFlushes',
  'touchedSessions',
  'gcRuns',
  'gcDeletions',
  'shardMoveRetries',
] as const;

const TIMINGS = ['load', 'save', 'touchFlush', 'gc'] as const;

/**
 * Upper bounds of the timing histograms, in seconds, shared by every timing so they
 * compare bucket for bucket. A 1-2.5-5 series from 100 µs to 10 s: a load or save on a
 * nearby primary takes 0.2-2 ms and needs resolution below a millisecond (Prometheus'
 * default buckets start at 5 ms and would put every healthy request in the first one);
 * a row-lock wait, a failover retry or a large touch flush lands in tens to hundreds of
 * milliseconds; a garbage collection pass over many batches takes seconds. Slower than
 * 10 s only counts towards `+Inf`.
 */
export const TIMING_BUCKETS: readonly number[] = Object.freeze([
  0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
]);

const BUCKET_BOUNDS_MS = Float64Array.from(TIMING_BUCKETS, (seconds) => seconds * 1000);

export type CounterName = (typeof COUNTERS)[number];
export type TimingName = (typeof TIMINGS)[number];

/** Count, total and largest duration of one kind of operation, in milliseconds. */
export interface TimingSnapshot {
  readonly count: number;
  readonly totalMs: number;
  readonly maxMs: number;
  /**
   * Operations that took at most each bound of `TIMING_BUCKETS`, cumulative as
   * Prometheus counts them (the last equals `count` unless some took longer than 10 s).
   */
  readonly buckets: readonly number[];
}

/** One timing's running totals; `perBucket[i]` counts durations in (bound i-1, bound i], the last slot the rest. */
interface TimingState {
  count: number;
  totalMs: number;
  maxMs: number;
  readonly perBucket: Float64Array;
}

/** Everything counted since start; read with `middleware.metrics.snapshot()`. */
export type MetricsSnapshot = Readonly<Record<CounterName, number>> & {
  /** Database round trips per request handled, on average. */
  readonly roundTripsPerRequest: number;
  /** Cache hits over cache lookups (0 when none). */
  readonly cacheHitRatio: number;
  readonly timings: Readonly<Record<TimingName, TimingSnapshot>>;
  /** Entries and estimated bytes in the cache now, and whether its listener is up. */
  readonly cacheEntries: number;
  readonly cacheBytes: number;
  readonly listenerUp: boolean;
};

/** Plain counters, cheap enough for the hot path; the Prometheus bridge reads them. */
export class SessionMetrics {
  readonly #counts = new Map<CounterName, number>();
  // Allocated once: recording a timing on the hot path allocates nothing.
  readonly #timings = new Map<TimingName, TimingState>(
    TIMINGS.map((name) => [
      name,
      { count: 0, totalMs: 0, maxMs: 0, perBucket: new Float64Array(BUCKET_BOUNDS_MS.length + 1) },
    ]),
  );
  /** Filled in by the middleware: live gauges of the cache and listener. */
  gauges: () => { cacheEntries: number; cacheBytes: number; listenerUp: boolean } = () => ({
    cacheEntries: 0,
    cacheBytes: 0,
    listenerUp: false,
  });

  increment(counter: CounterName, by = 1): void {
    this.#counts.set(counter, (this.#counts.get(counter) ?? 0) + by);
  }

  roundTrip(count = 1): void {
    this.increment('roundTrips', count);
  }

  /** Records how long an operation took, from a `performance.now()` start. */
  time(name: TimingName, startedAt: number): void {
    const elapsed = performance.now() - startedAt;
    const timing = this.#timings.get(name)!;
    timing.count++;
    timing.totalMs += elapsed;
    if (elapsed > timing.maxMs) timing.maxMs = elapsed;
    let bucket = 0;
    while (bucket < BUCKET_BOUNDS_MS.length && elapsed > BUCKET_BOUNDS_MS[bucket]!) bucket++;
    timing.perBucket[bucket]!++;
  }

  snapshot(): MetricsSnapshot {
    const counts = Object.fromEntries(
      COUNTERS.map((name) => [name, this.#counts.get(name) ?? 0]),
    ) as Record<CounterName, number>;
    const timings = Object.fromEntries(
      TIMINGS.map((name) => [name, timingSnapshot(this.#timings.get(name)!)]),
    ) as Record<TimingName, TimingSnapshot>;
    const lookups = counts.cacheHits + counts.cacheMisses;
    return {
      ...counts,
      roundTripsPerRequest: counts.requests === 0 ? 0 : counts.roundTrips / counts.requests,
      cacheHitRatio: lookups === 0 ? 0 : counts.cacheHits / lookups,
      timings,
      ...this.gauges(),
    };
  }
}

function timingSnapshot(timing: TimingState): TimingSnapshot {
  const buckets: number[] = [];
  let cumulative = 0;
  for (let bucket = 0; bucket < BUCKET_BOUNDS_MS.length; bucket++) {
    cumulative += timing.perBucket[bucket]!;
    buckets.push(cumulative);
  }
  return { count: timing.count, totalMs: timing.totalMs, maxMs: timing.maxMs, buckets };
}
