import type { Registry } from 'prom-client';
import type { CounterName, SessionMetrics, TimingName } from './metrics.js';

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
  unavailable: 'Requests answered 503 because the database was unavailable',
  cacheHits: 'Sessions served from the process cache',
  cacheMisses: 'Cache lookups that went to the database',
  cacheEvictions: 'Cache entries evicted by a notification',
  listenerReconnects: 'Reconnections of the LISTEN connection',
  touchFlushes: 'Batched touch statements written',
  touchedSessions: 'Sessions touched by batched statements',
  gcRuns: 'Garbage collection runs that held the lock',
  gcDeletions: 'Expired or revoked sessions deleted by garbage collection',
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
 * optional peer dependency: install it to use this). Values are read at scrape time.
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
  for (const [name, help] of Object.entries(TIMING_HELP) as [TimingName, string][]) {
    new client.Gauge({
      name: `${prefix}${snake(name)}_seconds`,
      help: `${help}: total time (stat=sum), operations (stat=count), slowest (stat=max)`,
      labelNames: ['stat'],
      registers: [registry],
      collect() {
        const timing = metrics.snapshot().timings[name];
        this.set({ stat: 'sum' }, timing.totalMs / 1000);
        this.set({ stat: 'count' }, timing.count);
        this.set({ stat: 'max' }, timing.maxMs / 1000);
      },
    });
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
