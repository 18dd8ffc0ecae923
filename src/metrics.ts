import type { RoundTripCounter } from './db/runner.js';

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
  'unavailable',
  'cacheHits',
  'cacheMisses',
  'cacheEvictions',
  'listenerReconnects',
  'touchFlushes',
  'touchedSessions',
  'gcRuns',
  'gcDeletions',
] as const;

const TIMINGS = ['load', 'save', 'touchFlush', 'gc'] as const;

export type CounterName = (typeof COUNTERS)[number];
export type TimingName = (typeof TIMINGS)[number];

/** Count, total and largest duration of one kind of operation, in milliseconds. */
export interface TimingSnapshot {
  readonly count: number;
  readonly totalMs: number;
  readonly maxMs: number;
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
export class SessionMetrics implements RoundTripCounter {
  readonly #counts = new Map<CounterName, number>();
  readonly #timings = new Map<TimingName, { count: number; totalMs: number; maxMs: number }>();
  /** Filled in by the middleware: live gauges of the cache and listener. */
  gauges: () => { cacheEntries: number; cacheBytes: number; listenerUp: boolean } = () => ({
    cacheEntries: 0,
    cacheBytes: 0,
    listenerUp: false,
  });

  increment(counter: CounterName, by = 1): void {
    this.#counts.set(counter, (this.#counts.get(counter) ?? 0) + by);
  }

  roundTrip(): void {
    this.increment('roundTrips');
  }

  /** Records how long an operation took, from a `performance.now()` start. */
  time(name: TimingName, startedAt: number): void {
    const elapsed = performance.now() - startedAt;
    const timing = this.#timings.get(name) ?? { count: 0, totalMs: 0, maxMs: 0 };
    timing.count++;
    timing.totalMs += elapsed;
    timing.maxMs = Math.max(timing.maxMs, elapsed);
    this.#timings.set(name, timing);
  }

  snapshot(): MetricsSnapshot {
    const counts = Object.fromEntries(
      COUNTERS.map((name) => [name, this.#counts.get(name) ?? 0]),
    ) as Record<CounterName, number>;
    const timings = Object.fromEntries(
      TIMINGS.map((name) => [
        name,
        { ...(this.#timings.get(name) ?? { count: 0, totalMs: 0, maxMs: 0 }) },
      ]),
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
