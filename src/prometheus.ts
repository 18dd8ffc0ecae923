import type { MetricObjectWithValues, MetricValueWithName, Registry } from 'prom-client';
import {
  type CounterName,
  type SessionMetrics,
  TIMING_BUCKETS,
  type TimingName,
} from './metrics.js';

const COUNTER_HELP: Readonly<Record<CounterName, string>> = {
  requests: 'Requests handled by the session middleware',
  roundTrips: 'Database round trips made by the session middleware',
  loads: 'Sessions read from the database',
  creates: 'Sessions created',
  saves: 'Session delta writes',
  destroys: 'Sessions destroyed',
  conflicts: 'Strict-mode conflicts (HTTP 409)',
  misses: 'Presented tokens that matched no live session',
  invalidTokens: 'Malformed or tampered tokens',
  stolenTokens:
    'Rotated-away tokens presented after their grace period: sessions revoked as stolen',
  csrfRefusals: 'State-changing requests refused for want of a CSRF token of their session (403)',
  rotations: 'Token rotations (regenerate, bindUser, periodic rotation)',
  unavailable: 'Requests answered 503 because the database was unavailable',
  cacheHits: 'Sessions served from the process cache',
  cacheMisses: 'Cache lookups that went to the database',
  cacheEvictions: 'Cache entries evicted by a notification',
  listenerReconnects: 'Reconnections of the LISTEN connection',
  notifyFailures: 'Writes that committed but whose deferred change notification could not be sent',
  touchFlushes: 'Batched touch statements written',
  touchedSessions: 'Sessions touched by batched statements',
  gcRuns: 'Garbage collection runs that held the lock',
  gcDeletions: 'Expired or revoked sessions deleted by garbage collection',
  shardMoveRetries: 'Statements sent again because their Citus shard was moving',
};

const TIMING_HELP: Readonly<Record<TimingName, string>> = {
  load: 'Session loads from the database',
  save: 'Session writes',
  touchFlush: 'Batched touch flushes',
  gc: 'Garbage collection runs',
};

/**
 * A prom-client `Registry`, described by the one method every registry has, so that the
 * published declarations do not import prom-client (an optional peer a TypeScript
 * consumer may not have installed).
 */
export interface PrometheusRegistry {
  registerMetric(metric: never): void;
}

/**
 * Publishes the middleware's metrics in a prom-client registry (prom-client is an
 * optional peer dependency: install it to use this). Values are read at scrape time:
 * counters as `<prefix><name>_total` counters, the load, save, touch flush and GC
 * timings as `<prefix><name>_seconds` histograms over `TIMING_BUCKETS` (100 µs to 10 s),
 * and the cache and listener gauges.
 *
 * @example
 * import { register } from 'prom-client';
 * await registerPrometheusMetrics(middleware.metrics, { registry: register });
 */
export async function registerPrometheusMetrics(
  metrics: SessionMetrics,
  options: { registry?: PrometheusRegistry; prefix?: string } = {},
): Promise<void> {
  const client = await import('prom-client');
  const registry = (options.registry as Registry | undefined) ?? client.register;
  const prefix = options.prefix ?? 'pg_sessions_';
  for (const [name, help] of Object.entries(COUNTER_HELP) as [CounterName, string][]) {
    new client.Counter({
      name: `${prefix}${snake(name)}_total`,
      help,
      registers: [registry],
      collect() {
        this.reset();
        this.inc(metrics.snapshot()[name]);
      },
    });
  }
  // The middleware counts durations into its own buckets (no prom-client on the hot
  // path); these histograms publish those counts at scrape time instead of observing.
  class TimingHistogram extends client.Histogram {
    readonly #timing: TimingName;
    readonly #name: string;
    readonly #help: string;

    constructor(timing: TimingName, help: string) {
      const name = `${prefix}${snake(timing)}_seconds`;
      super({ name, help, buckets: [...TIMING_BUCKETS], registers: [registry] });
      this.#timing = timing;
      this.#name = name;
      this.#help = help;
    }

    override async get(): Promise<MetricObjectWithValues<MetricValueWithName<string>>> {
      const { count, totalMs, buckets } = metrics.snapshot().timings[this.#timing];
      const bucket = `${this.#name}_bucket`;
      const values: MetricValueWithName<string>[] = TIMING_BUCKETS.map((le, index) => ({
        labels: { le },
        value: buckets[index] ?? 0,
        metricName: bucket,
      }));
      values.push(
        { labels: { le: '+Inf' }, value: count, metricName: bucket },
        { labels: {}, value: totalMs / 1000, metricName: `${this.#name}_sum` },
        { labels: {}, value: count, metricName: `${this.#name}_count` },
      );
      // The shape prom-client's own Histogram returns; its typings declare `type` as a
      // numeric enum that the JavaScript never uses, and a `collect` it never returns.
      return {
        name: this.#name,
        help: this.#help,
        type: 'histogram',
        aggregator: 'sum',
        values,
      } as unknown as MetricObjectWithValues<MetricValueWithName<string>>;
    }

    // The registry formats its text from this method when a metric has one.
    getForPromString(): Promise<MetricObjectWithValues<MetricValueWithName<string>>> {
      return this.get();
    }
  }
  for (const [name, help] of Object.entries(TIMING_HELP) as [TimingName, string][]) {
    new TimingHistogram(name, `${help}, in seconds`);
  }
  const gauges: [string, string, (snapshot: ReturnType<SessionMetrics['snapshot']>) => number][] = [
    ['cache_entries', 'Sessions in the process cache', (s) => s.cacheEntries],
    ['cache_bytes', 'Estimated bytes of the process cache', (s) => s.cacheBytes],
    [
      'listener_up',
      '1 while the LISTEN connection is up (the cache is trusted)',
      (s) => (s.listenerUp ? 1 : 0),
    ],
  ];
  for (const [name, help, read] of gauges) {
    new client.Gauge({
      name: `${prefix}${name}`,
      help,
      registers: [registry],
      collect() {
        this.set(read(metrics.snapshot()));
      },
    });
  }
}

function snake(name: string): string {
  return name.replace(/[A-Z]/g, (letter) => `_${letter.toLowerCase()}`);
}
