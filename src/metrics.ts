import type { RoundTripCounter } from './db/runner.js';

/** Counters an application can read (`middleware.metrics.snapshot()`), all since start. */
export interface MetricsSnapshot {
  readonly roundTrips: number;
  readonly loads: number;
  readonly creates: number;
  readonly saves: number;
  readonly touches: number;
  readonly destroys: number;
  readonly conflicts: number;
  readonly misses: number;
  readonly invalidTokens: number;
  readonly unavailable: number;
}

type Counter = keyof MetricsSnapshot;

/** Plain counters: cheap enough for the hot path, read by the app or an exporter. */
export class SessionMetrics implements RoundTripCounter {
  readonly #counts = new Map<Counter, number>();

  increment(counter: Counter, by = 1): void {
    this.#counts.set(counter, (this.#counts.get(counter) ?? 0) + by);
  }

  roundTrip(): void {
    this.increment('roundTrips');
  }

  snapshot(): MetricsSnapshot {
    const get = (counter: Counter) => this.#counts.get(counter) ?? 0;
    return {
      roundTrips: get('roundTrips'),
      loads: get('loads'),
      creates: get('creates'),
      saves: get('saves'),
      touches: get('touches'),
      destroys: get('destroys'),
      conflicts: get('conflicts'),
      misses: get('misses'),
      invalidTokens: get('invalidTokens'),
      unavailable: get('unavailable'),
    };
  }
}
