// HTTP throughput and latency of one Koa app process (bench/app-server.ts) under load
// from another process (bench/load.ts, autocannon): four session layers side by side,
// three mixes, the same handlers, the same machine, one run. Started by bench/run.ts.
import { readdirSync, readFileSync } from 'node:fs';
import type { TestDatabase } from '../src/testing/index.js';
import type { AppStats } from './app-server.js';
import { Child, type Message } from './child.js';
import { DbProbe } from './db-probe.js';
import type { LoadResult, LoadRun } from './load.js';
import { hasSessions, runsMix, type Variant } from './variants.js';

export const MIXES = [
  // Not one of issue 5's mixes: it shows the read path alone, without any commit.
  { name: 'read-only', writeShare: 0 },
  { name: 'read-mostly', writeShare: 0.1 },
  { name: 'write-heavy', writeShare: 0.5 },
] as const;
export type MixName = (typeof MIXES)[number]['name'];

export interface HttpSettings {
  /** Live sessions the load is spread over. */
  readonly sessions: number;
  readonly connections: number;
  readonly durationSeconds: number;
  /** Load before each measured run, not recorded (JIT, pools, caches). 0 for none. */
  readonly warmupSeconds: number;
  /** Extra node options for the app processes (say `--cpu-prof`). */
  readonly appNodeOptions: readonly string[];
  /** A fixed number of requests per cell instead of the duration (the smoke run). */
  readonly amount?: number;
  /** Times every variant runs every mix, one round after the other (ranges in the report). */
  readonly rounds: number;
  /** The variants and mixes to run (a narrowed run for a bisect or a profile: some of them). */
  readonly variants: readonly Variant[];
  readonly mixes: readonly MixName[];
}

/** One variant under one mix. */
export interface HttpCell {
  readonly variant: Variant;
  readonly mix: MixName;
  readonly round: number;
  readonly requests: number;
  readonly requestsPerSecond: number;
  readonly latencyMs: LoadResult['latencyMs'];
  readonly non2xx: number;
  readonly errors: number;
  readonly timeouts: number;
  /** Share of requests that were writes, as sent. */
  readonly writeShare: number;
  /** Different sessions the measured run's requests named. */
  readonly distinctSessions: number;
  /** Throughput over bare Koa's in the same mix and run. */
  ratioToBare: number;
  /** pg-sessions only: database round trips per request, from its own counters. */
  readonly roundTripsPerRequest?: number;
  /** pg-sessions with the cache only: hits over cache lookups. */
  readonly cacheHitRatio?: number;
  /** CPU cores busy on average during the run: the app, PostgreSQL (when local), autocannon. */
  readonly cpuCores: { readonly app: number; readonly postgres?: number; readonly load: number };
  /** App CPU time per request, in microseconds. */
  readonly appCpuMicrosPerRequest: number;
  /** pg-sessions only, from PostgreSQL's statistics: WAL fsyncs per session write (create or save). */
  readonly fsyncsPerWrite?: number;
  /** pg-sessions only: share of the database's sampled active backends waiting on Lock:object. */
  readonly lockObjectShare?: number;
}

/** Where the databases come from: a fresh migrated one per pg-sessions variant. */
export interface HttpDatabases {
  create(): Promise<TestDatabase>;
  /** The local postmaster's pid, for its CPU time (undefined for a remote server). */
  readonly postmasterPid: number | undefined;
}

/** Runs every variant under every mix; `load` is the load generator's process, ready. */
export async function runHttpBench(
  settings: HttpSettings,
  databases: HttpDatabases,
  load: Child,
  log: (line: string) => void,
): Promise<HttpCell[]> {
  const cells: HttpCell[] = [];
  const crashed: string[] = [];
  for (let round = 1; round <= settings.rounds; round++) {
    for (const variant of settings.variants) {
      await runVariant(round, variant);
    }
  }
  async function runVariant(round: number, variant: Variant): Promise<void> {
    const database = variant.startsWith('pg-sessions') ? await databases.create() : undefined;
    const probe = database
      ? await DbProbe.open(database.url, settings.amount === undefined)
      : undefined;
    const app = Child.start('./app-server.ts', {
      env: { BENCH_VARIANT: variant, ...(database ? { DATABASE_URL: database.appUrl } : {}) },
      nodeOptions: settings.appNodeOptions,
    });
    try {
      const { port } = await app.next<Message & { port: number }>('ready');
      const url = `http://127.0.0.1:${port}`;
      const cookies = await logIn(url, settings.sessions, hasSessions(variant));
      for (const mix of MIXES.filter(
        (candidate) => settings.mixes.includes(candidate.name) && runsMix(variant, candidate.name),
      )) {
        const run = (durationSeconds: number): LoadRun => ({
          type: 'run',
          url,
          cookies,
          writeShare: mix.writeShare,
          connections: settings.connections,
          durationSeconds,
          ...(settings.amount === undefined ? {} : { amount: settings.amount }),
        });
        if (settings.warmupSeconds > 0) {
          await load.ask(run(settings.warmupSeconds), 'result');
        }
        await probe?.begin();
        const measured = await measureRun(load, app, run(settings.durationSeconds), () =>
          postgresCpuMicros(databases.postmasterPid),
        );
        const activity = await probe?.end();
        const { result } = measured;
        const cell = measure(variant, mix.name, result, measured.before, measured.after);
        const { before, after } = measured;
        const writes =
          before.metrics && after.metrics
            ? after.metrics.saves -
              before.metrics.saves +
              after.metrics.creates -
              before.metrics.creates
            : 0;
        cells.push({
          ...cell,
          round,
          cpuCores: measured.cpuCores,
          ...(activity
            ? {
                fsyncsPerWrite: writes > 0 ? activity.walFsyncs / writes : Number.NaN,
                lockObjectShare: activity.lockObjectShare,
              }
            : {}),
        });
        log(
          `round ${round}, ${variant} ${mix.name}: ${Math.round(result.requestsPerSecond)} req/s, p99 ${result.latencyMs.p99} ms` +
            (activity && writes > 0
              ? `, ${(activity.walFsyncs / writes).toFixed(2)} fsyncs/write, Lock:object ${(activity.lockObjectShare * 100).toFixed(0)} %`
              : '') +
            (result.non2xx + result.errors > 0
              ? `, ${result.non2xx} non-2xx, ${result.errors} errors`
              : ''),
        );
      }
    } finally {
      const code = await app.stop();
      if (code !== 0) crashed.push(`${variant}: the app process exited with code ${code}`);
      await probe?.close();
      await database?.drop();
    }
  }
  if (crashed.length > 0) throw new Error(crashed.join('; '));
  for (const cell of cells) {
    const bare = cells.find(
      (other) => other.variant === 'bare' && other.mix === cell.mix && other.round === cell.round,
    );
    cell.ratioToBare = bare ? cell.requestsPerSecond / bare.requestsPerSecond : Number.NaN;
  }
  return cells;
}

/** One measured load run, with the app's counters and everyone's CPU time around it. */
export interface MeasuredRun {
  readonly result: LoadResult;
  readonly before: AppStats;
  readonly after: AppStats;
  /** CPU cores busy on average during the run: the app, PostgreSQL (when local), autocannon. */
  readonly cpuCores: HttpCell['cpuCores'];
}

export async function measureRun(
  load: Child,
  app: Child,
  run: LoadRun,
  /** CPU time so far of the PostgreSQL servers involved, when they are local. */
  postgresCpu: () => number | undefined,
): Promise<MeasuredRun> {
  const before = await app.ask<AppStats>({ type: 'stats' }, 'stats');
  const postgresBefore = postgresCpu();
  const startedAt = performance.now();
  const result = await load.ask<LoadResult>(run, 'result');
  const elapsedMicros = (performance.now() - startedAt) * 1000;
  const postgresAfter = postgresCpu();
  const after = await app.ask<AppStats>({ type: 'stats' }, 'stats');
  return {
    result,
    before,
    after,
    cpuCores: {
      app: (after.cpuMicros - before.cpuMicros) / elapsedMicros,
      load: result.cpuMicros / elapsedMicros,
      ...(postgresBefore !== undefined && postgresAfter !== undefined
        ? { postgres: (postgresAfter - postgresBefore) / elapsedMicros }
        : {}),
    },
  };
}

function measure(
  variant: Variant,
  mix: MixName,
  result: LoadResult,
  before: AppStats,
  after: AppStats,
): Omit<HttpCell, 'cpuCores' | 'round'> {
  const cell = {
    variant,
    mix,
    requests: result.requests,
    requestsPerSecond: result.requestsPerSecond,
    latencyMs: result.latencyMs,
    non2xx: result.non2xx,
    errors: result.errors,
    timeouts: result.timeouts,
    writeShare: result.requests > 0 ? result.writes / result.requests : 0,
    distinctSessions: result.distinctSessions,
    ratioToBare: Number.NaN,
    appCpuMicrosPerRequest:
      result.requests > 0 ? (after.cpuMicros - before.cpuMicros) / result.requests : 0,
  };
  if (!before.metrics || !after.metrics) return cell;
  const requests = after.metrics.requests - before.metrics.requests;
  const hits = after.metrics.cacheHits - before.metrics.cacheHits;
  const lookups = hits + after.metrics.cacheMisses - before.metrics.cacheMisses;
  return {
    ...cell,
    roundTripsPerRequest:
      requests > 0 ? (after.metrics.roundTrips - before.metrics.roundTrips) / requests : Number.NaN,
    ...(variant === 'pg-sessions-cache' ||
    variant === 'pg-sessions-relaxed' ||
    variant === 'pg-sessions-lock'
      ? { cacheHitRatio: lookups > 0 ? hits / lookups : Number.NaN }
      : {}),
  };
}

/**
 * Creates the live sessions by logging each in once, and returns their `Cookie`
 * header values (bare Koa hands out none: its cookies are empty).
 */
export async function logIn(url: string, count: number, expectCookie: boolean): Promise<string[]> {
  const cookies: string[] = [];
  const parallel = 32;
  for (let start = 0; start < count; start += parallel) {
    const batch = await Promise.all(
      Array.from({ length: Math.min(parallel, count - start) }, async () => {
        const response = await fetch(`${url}/login`, { method: 'POST' });
        await response.text();
        if (!response.ok) throw new Error(`POST /login answered ${response.status}`);
        const cookie = response.headers
          .getSetCookie()
          .map((line) => line.split(';')[0])
          .join('; ');
        if (expectCookie && !cookie) throw new Error('POST /login set no cookie');
        return cookie;
      }),
    );
    cookies.push(...batch);
  }
  return cookies;
}

/** USER_HZ: /proc counts CPU time in these ticks; the kernel fixes it at 100 for user space. */
const clockTicksPerSecond = 100;

/**
 * CPU time so far of a local PostgreSQL: the postmaster and its children (backends,
 * walwriter, checkpointer…), from /proc. Backends that exited since are missed, which
 * pooled connections make rare. Undefined where /proc or the pid is not available.
 */
export function postgresCpuMicros(postmasterPid: number | undefined): number | undefined {
  if (postmasterPid === undefined || process.platform !== 'linux') return undefined;
  let ticks = 0;
  try {
    for (const entry of readdirSync('/proc')) {
      if (!/^\d+$/.test(entry)) continue;
      let stat: string;
      try {
        stat = readFileSync(`/proc/${entry}/stat`, 'utf8');
      } catch {
        continue;
      }
      // Fields after the parenthesised command: state, ppid, … utime (14th), stime (15th),
      // cutime (16th), cstime (17th): the CPU of children that have exited and been
      // reaped. Counting the postmaster's keeps a backend that ends mid-run from taking
      // its CPU time out of the sum.
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      const pid = Number(entry);
      if (pid === postmasterPid) {
        ticks += Number(fields[11]) + Number(fields[12]) + Number(fields[13]) + Number(fields[14]);
      } else if (Number(fields[1]) === postmasterPid) {
        ticks += Number(fields[11]) + Number(fields[12]);
      }
    }
  } catch {
    return undefined;
  }
  return (ticks / clockTicksPerSecond) * 1_000_000;
}
