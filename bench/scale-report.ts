// What `npm run bench:scale` measured (bench/scale.ts), as Markdown for RESULTS.md,
// and the checks that fail a run that did not measure what it claims. Speed is never
// checked: the issue's bounds are reported as met or not.
import type { LookupRate } from './scale-lookups.js';

export type GcPhase = 'before' | 'during' | 'after GC and ANALYZE' | 'after VACUUM';

/** One load run: a benchmark cell, or a window around the collection. */
export interface HttpWindow {
  /** `cache off` / `cache on` for the cells; the GC phase for the windows. */
  readonly phase: string;
  readonly requestsPerSecond: number;
  readonly p50Ms: number;
  readonly p99Ms: number;
  readonly requests: number;
  readonly non2xx: number;
  readonly errors: number;
  /** The machine's 1-minute load average when the run began (other work shows here). */
  readonly loadAverage: number;
}

export interface SizeResult {
  readonly liveSessions: number;
  readonly seedSeconds: number;
  readonly bytes: {
    /** Rows in sessions.session when measured (live, plus the backlog at --gc-at). */
    readonly rows: number;
    readonly heapBytes: number;
    readonly indexBytes: Readonly<Record<string, number>>;
    readonly events: number;
    /** sessions.event with its indexes. */
    readonly eventBytes: number;
  };
  readonly http: readonly HttpWindow[];
  readonly lookups: readonly LookupRate[];
  readonly gc?: {
    readonly expired: number;
    readonly batchSize: number;
    readonly deleted: number;
    readonly batches: number;
    readonly seconds: number;
    /** Mean time per batch (round trip included) over the first and the last tenth of the run, and the longest. */
    readonly batchMs: {
      readonly firstTenth: number;
      readonly lastTenth: number;
      readonly max: number;
    };
    readonly expiredEvents: number;
    readonly expiredSessions: number;
    readonly windows: readonly HttpWindow[];
    readonly lookups: readonly { readonly phase: string; readonly rates: readonly LookupRate[] }[];
  };
}

export interface ScaleReport {
  readonly smoke: boolean;
  readonly command: string;
  readonly at: string;
  readonly elapsedSeconds: number;
  readonly machine: {
    readonly cpus: number;
    readonly cpuModel: string;
    readonly os: string;
    readonly node: string;
    readonly postgres: string;
  };
  readonly settings: {
    readonly sizes: readonly number[];
    readonly gcAt: number;
    readonly gcExpired: number;
    readonly gcBatchSize: number;
    readonly durationSeconds: number;
    readonly warmupSeconds: number;
    readonly windowSeconds: number;
    readonly repeat: number;
    readonly connections: number;
    readonly presented: number;
  };
  readonly sizes: readonly SizeResult[];
}

export function scaleFailures(report: ScaleReport): string[] {
  const failed: string[] = [];
  for (const size of report.sizes) {
    const runs = [...size.http, ...(size.gc?.windows ?? [])];
    for (const run of runs) {
      if (run.requests === 0) failed.push(`${size.liveSessions}: ${run.phase} sent no request`);
      if (run.non2xx + run.errors > 0) {
        failed.push(
          `${size.liveSessions}: ${run.phase} had ${run.non2xx} non-2xx answers and ${run.errors} errors`,
        );
      }
    }
    const rates = [...size.lookups, ...(size.gc?.lookups.flatMap((phase) => phase.rates) ?? [])];
    for (const rate of rates) {
      if (rate.lookups === 0) failed.push(`${size.liveSessions}: no lookup (${rate.statement})`);
      if (rate.misses > 0) {
        failed.push(
          `${size.liveSessions}: ${rate.misses} lookups found no live row (${rate.statement})`,
        );
      }
    }
    const gc = size.gc;
    if (gc) {
      if (gc.deleted < gc.expired)
        failed.push(`GC deleted ${gc.deleted} of ${gc.expired} expired rows`);
      if (gc.expiredEvents !== gc.deleted || gc.expiredSessions !== gc.deleted) {
        failed.push(
          `GC deleted ${gc.deleted} rows but logged ${gc.expiredEvents} expired events for ${gc.expiredSessions} sessions`,
        );
      }
      if (!gc.windows.some((window) => window.phase === 'during') && !report.smoke) {
        failed.push('no request window ran during the collection');
      }
    }
  }
  return failed;
}

const int = (value: number) => Math.round(value).toLocaleString('en-US');
const ms = (value: number) => (value >= 10 ? value.toFixed(0) : value.toFixed(1));
const sizeName = (n: number) =>
  n >= 1_000_000 ? `${n / 1_000_000}M` : n >= 1000 ? `${n / 1000}k` : String(n);

function median(values: readonly number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  if (sorted.length === 0) return Number.NaN;
  const middle = Math.floor(sorted.length / 2);
  return sorted.length % 2
    ? (sorted[middle] as number)
    : ((sorted[middle - 1] as number) + (sorted[middle] as number)) / 2;
}

/** `a–b` of the runs, or the one value. */
function range(values: readonly number[], format: (value: number) => string): string {
  if (values.length === 0) return '—';
  const low = Math.min(...values);
  const high = Math.max(...values);
  return format(low) === format(high) ? format(low) : `${format(low)}–${format(high)}`;
}

const ratio = (value: number, base: number) => `${(value / base).toFixed(2)}×`;

export function renderScale(report: ScaleReport): string {
  const { settings } = report;
  const base = report.sizes[0];
  const lines: string[] = [];
  lines.push(
    `### Millions of sessions: lookups, garbage collection, bytes (${report.machine.postgres.split(' (')[0]})`,
  );
  lines.push('');
  lines.push(
    `\`${report.command}\` — ${report.at.slice(0, 16).replace('T', ' ')} UTC, ${Math.round(report.elapsedSeconds / 60)} min in all. ` +
      `Machine: ${report.machine.cpus} CPUs (${report.machine.cpuModel}), ${report.machine.os}, Node ${report.machine.node}; ` +
      `${report.machine.postgres}, on the same machine as the app and the load generator.`,
  );
  lines.push('');
  lines.push(
    `Each table holds the live sessions the seed generator writes (\`--live\`), with their events; ` +
      `the load (read-only: every request loads its session) names ${int(settings.presented)} sessions logged in over HTTP, ` +
      `at random, over ${settings.connections} connections, ${settings.durationSeconds} s per cell after ${settings.warmupSeconds} s of warm-up, ` +
      `each cell ${settings.repeat} times (ranges are over the repeats). The direct lookups send the store's statement ` +
      `(and the old spelling) from ${settings.connections} connections for ${settings.windowSeconds} s, on a random sample of the whole table's live rows.`,
  );
  lines.push('');
  lines.push(
    '| live sessions | cache off req/s | p99 ms | vs baseline | cache on req/s | p99 ms | direct lookups/s | buffers to plan and run | seed s | load average |',
  );
  lines.push('| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |');
  const baseOff = base
    ? median(base.http.filter((c) => c.phase === 'cache off').map((c) => c.requestsPerSecond))
    : Number.NaN;
  for (const size of report.sizes) {
    const off = size.http.filter((cell) => cell.phase === 'cache off');
    const on = size.http.filter((cell) => cell.phase === 'cache on');
    const direct = size.lookups.find((rate) => rate.statement === 'store');
    lines.push(
      `| ${sizeName(size.liveSessions)} | ${range(
        off.map((c) => c.requestsPerSecond),
        int,
      )} | ${range(
        off.map((c) => c.p99Ms),
        ms,
      )} | ` +
        `${ratio(median(off.map((c) => c.requestsPerSecond)), baseOff)} | ${range(
          on.map((c) => c.requestsPerSecond),
          int,
        )} | ${range(
          on.map((c) => c.p99Ms),
          ms,
        )} | ` +
        `${direct ? int(direct.perSecond) : '—'} | ${direct?.planningBuffers ?? '—'} | ${size.seedSeconds.toFixed(0)} | ${range(
          size.http.map((c) => c.loadAverage),
          (v) => v.toFixed(1),
        )} |`,
    );
  }
  lines.push('');
  lines.push('#### Bytes per session');
  lines.push('');
  lines.push(
    '| live sessions | rows | heap B/row | indexes B/row | of which token hash | expiry | primary key | events/session | event log B/session | total B/session |',
  );
  lines.push('| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |');
  for (const size of report.sizes) {
    const { bytes } = size;
    const indexes = Object.values(bytes.indexBytes).reduce((sum, value) => sum + value, 0);
    const per = (value: number | undefined) =>
      value === undefined ? '—' : int(value / bytes.rows);
    lines.push(
      `| ${sizeName(size.liveSessions)} | ${int(bytes.rows)} | ${per(bytes.heapBytes)} | ${per(indexes)} | ${per(bytes.indexBytes.session_token_hash_key)} | ` +
        `${per(bytes.indexBytes.session_expires_at_idx)} | ${per(bytes.indexBytes.session_pkey)} | ${(bytes.events / bytes.rows).toFixed(1)} | ${per(bytes.eventBytes)} | ` +
        `${per(bytes.heapBytes + indexes + bytes.eventBytes)} |`,
    );
  }
  const gcSize = report.sizes.find((size) => size.gc);
  const gc = gcSize?.gc;
  if (gcSize && gc) {
    lines.push('');
    lines.push(
      `#### Garbage collection of ${int(gc.expired)} expired rows under load, ${sizeName(gcSize.liveSessions)} live sessions`,
    );
    lines.push('');
    lines.push(
      `One \`collectGarbage()\` run (the library's collector, batches of ${gc.batchSize}, each its own transaction) while the app serves the ` +
        `read-only load with the cache off, in ${settings.windowSeconds} s windows. Autovacuum is off for the table during this part, so ` +
        `that the order is fixed: ANALYZE first (what autoanalyze does when it finishes first), then VACUUM.`,
    );
    lines.push('');
    lines.push(
      `Collected ${int(gc.deleted)} rows in ${int(gc.batches)} batches, one run, ${gc.seconds.toFixed(1)} s ` +
        `(${int(gc.deleted / gc.seconds)} rows/s); a batch took ${ms(gc.batchMs.firstTenth)} ms on average in the first tenth of the run, ` +
        `${ms(gc.batchMs.lastTenth)} ms in the last, ${ms(gc.batchMs.max)} ms at most; ${int(gc.expiredEvents)} \`expired\` events for ${int(gc.expiredSessions)} distinct sessions.`,
    );
    lines.push('');
    lines.push(
      '| phase | windows | req/s | p50 ms | p99 ms | req/s vs before | p99 vs before | load average |',
    );
    lines.push('| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |');
    const phases: GcPhase[] = ['before', 'during', 'after GC and ANALYZE', 'after VACUUM'];
    // 'before' runs on the table with the backlog still in it (live and expired rows).
    const before = gc.windows.filter((w) => w.phase === 'before');
    const beforeRps = median(before.map((w) => w.requestsPerSecond));
    const beforeP99 = median(before.map((w) => w.p99Ms));
    for (const phase of phases) {
      const windows = gc.windows.filter((w) => w.phase === phase);
      if (windows.length === 0) continue;
      lines.push(
        `| ${phase} | ${windows.length} | ${range(
          windows.map((w) => w.requestsPerSecond),
          int,
        )} | ${range(
          windows.map((w) => w.p50Ms),
          ms,
        )} | ` +
          `${range(
            windows.map((w) => w.p99Ms),
            ms,
          )} | ${ratio(median(windows.map((w) => w.requestsPerSecond)), beforeRps)} | ` +
          `${ratio(median(windows.map((w) => w.p99Ms)), beforeP99)} | ${range(
            windows.map((w) => w.loadAverage),
            (v) => v.toFixed(1),
          )} |`,
      );
    }
    lines.push('');
    lines.push(
      'The lookup statement alone, before and after the collection (the planner cliff of issue 18):',
    );
    lines.push('');
    lines.push(
      '| when | statement | lookups/s | p99 ms | buffers to plan and run | ms to plan and run | lookups/s vs before |',
    );
    lines.push('| --- | --- | ---: | ---: | ---: | ---: | ---: |');
    const first = gc.lookups[0]?.rates ?? [];
    for (const { phase, rates } of gc.lookups) {
      for (const rate of rates) {
        const was = first.find((r) => r.statement === rate.statement);
        lines.push(
          `| ${phase} | ${rate.statement === 'store' ? "the store's (`sessions.lookup_session()`)" : 'old spelling (`expires_at > now()`)'} | ` +
            `${int(rate.perSecond)} | ${rate.p99Ms.toFixed(2)} | ${rate.planningBuffers} | ${rate.planningMs.toFixed(3)} | ${was ? ratio(rate.perSecond, was.perSecond) : '—'} |`,
        );
      }
    }
  }
  return lines.join('\n');
}
