// What one benchmark run wrote (bench/results/*.json), its Markdown for RESULTS.md,
// and the checks that make a run (the smoke run in CI above all) fail when something
// did not really run. Speed is never checked: the targets are reported, not asserted.

import { type HttpCell, type HttpSettings, MIXES, type MixName } from './http.js';
import type { NotifyResult, NotifySettings } from './notify-latency.js';
import {
  CLUSTER_REPLICAS,
  DECISION_MS,
  REPLICA_CELLS,
  type ReplicaResult,
  type ReplicaSettings,
} from './replicas.js';
import {
  PATH_OPS,
  PATH_VARIANTS,
  type PathCell,
  type PathSettings,
  type PathVariant,
  type RequestPathResult,
} from './request-path.js';
import { BUSY_MICROS, ROUTER_POOL_SIZE, runsMix, VARIANTS, type Variant } from './variants.js';
import { CEILING_KINDS, type CeilingKind, type WriteCeiling } from './write-ceiling.js';

export const PARTS = ['http', 'notify', 'replicas'] as const;
export type Part = (typeof PARTS)[number];

export interface Machine {
  readonly cpus: number;
  readonly cpuModel: string;
  readonly os: string;
  readonly node: string;
  /** `PostgreSQL 18.1`, from the server itself. */
  readonly postgres: string;
  readonly postgresSettings: string;
  /** Where the servers came from: embedded, PG_BIN_DIR, url, testcontainers. */
  readonly postgresBackend: string;
}

export interface BenchReport {
  readonly smoke: boolean;
  /** The command that reproduces this run. */
  readonly command: string;
  readonly at: string;
  readonly elapsedSeconds: number;
  readonly parts: readonly Part[];
  readonly machine: Machine;
  readonly settings: {
    readonly http?: HttpSettings;
    readonly requestPath?: PathSettings;
    readonly notify?: NotifySettings;
    readonly replicas?: ReplicaSettings;
  };
  readonly http?: readonly HttpCell[];
  /** The database's own ceiling for session writes (with the http part). */
  readonly writeCeiling?: WriteCeiling;
  /** Each layer's own CPU per request, without sockets (with the http part). */
  readonly requestPath?: RequestPathResult;
  readonly notify?: NotifyResult;
  readonly replicas?: ReplicaResult;
}

const LABELS: Record<Variant, string> = {
  bare: 'bare Koa (no sessions)',
  'bare-busy': `bare Koa + ${BUSY_MICROS} µs of busy work per request (calibration)`,
  'koa-session': 'koa-session, cookie store',
  'koa-session-redis': 'koa-session, Redis store (ioredis)',
  'pg-sessions-nocache': 'pg-sessions, `cache: false`',
  'pg-sessions-cache': 'pg-sessions, cache on',
  'pg-sessions-relaxed': "pg-sessions, cache on, `durability: 'relaxed'`",
  'pg-sessions-lock': "pg-sessions, `mode: 'lock'`",
};

/** Everything that means the run did not measure what it claims; empty when all is well. */
export function failures(report: BenchReport): string[] {
  const problems: string[] = [];
  const expect = (part: Part, present: boolean) => {
    if (report.parts.includes(part) && !present) problems.push(`${part}: no result`);
  };
  expect('http', report.http !== undefined);
  expect('notify', report.notify !== undefined);
  expect('replicas', report.replicas !== undefined);
  // A run narrowed to some variants or mixes (a probe) runs neither ceiling nor request path.
  const http = report.settings.http;
  const narrowed =
    http !== undefined &&
    (http.variants.length < VARIANTS.length || http.mixes.length < MIXES.length);
  if (report.http && http) problems.push(...httpFailures(report.http, http));
  if (report.http && !narrowed) {
    problems.push(...pathFailures(report.requestPath));
    const ceiling = report.writeCeiling;
    for (const kind of CEILING_KINDS) {
      const cells = ceiling?.cells.filter((cell) => cell.kind === kind) ?? [];
      if (cells.length === 0) problems.push(`write ceiling ${kind}: no result`);
      for (const cell of cells) {
        const name = `write ceiling ${kind}, round ${cell.round}`;
        if (!(cell.writes > 0 && cell.writesPerSecond > 0)) problems.push(`${name}: no writes`);
        if (cell.lost > 0) problems.push(`${name}: ${cell.lost} writes matched no session`);
        if (!Number.isFinite(cell.fsyncsPerWrite) || !Number.isFinite(cell.lockObjectShare)) {
          problems.push(`${name}: no statistics from PostgreSQL`);
        }
      }
    }
  }
  if (report.notify && report.settings.notify) {
    problems.push(...notifyFailures(report.notify, report.settings.notify));
  }
  if (report.replicas) problems.push(...replicaFailures(report.replicas));
  return problems;
}

/** The problems every load cell can have, whatever it measured. */
function loadFailures(
  name: string,
  cell: Pick<HttpCell, 'requests' | 'requestsPerSecond' | 'errors' | 'timeouts' | 'non2xx'> & {
    readonly latencyMs: { readonly p99: number };
  },
): string[] {
  const problems: string[] = [];
  if (!(cell.requests > 0 && cell.requestsPerSecond > 0)) problems.push(`${name}: no requests`);
  if (cell.errors > 0) problems.push(`${name}: ${cell.errors} connection errors`);
  if (cell.timeouts > 0) problems.push(`${name}: ${cell.timeouts} timeouts`);
  if (cell.non2xx > 0) problems.push(`${name}: ${cell.non2xx} non-2xx responses`);
  if (!Number.isFinite(cell.latencyMs.p99)) problems.push(`${name}: no latency`);
  return problems;
}

function pathFailures(result: RequestPathResult | undefined): string[] {
  if (!result) return ['request path: no result'];
  const problems: string[] = [];
  for (const variant of PATH_VARIANTS) {
    for (const op of PATH_OPS) {
      const cells = result.cells.filter((cell) => cell.variant === variant && cell.op === op);
      const name = `request path ${variant} ${op}`;
      if (cells.length === 0) problems.push(`${name}: no result`);
      for (const cell of cells) {
        if (!(cell.requests > 0 && cell.cpuMicrosPerRequest > 0)) {
          problems.push(`${name}, round ${cell.round}: no CPU time measured`);
        }
        if (cell.failed > 0) {
          problems.push(`${name}, round ${cell.round}: ${cell.failed} requests failed`);
        }
      }
    }
  }
  return problems;
}

function httpFailures(cells: readonly HttpCell[], settings: HttpSettings): string[] {
  const problems: string[] = [];
  for (const variant of settings.variants) {
    for (const mix of MIXES.filter(
      ({ name }) => settings.mixes.includes(name) && runsMix(variant, name),
    )) {
      const cell = find(cells, variant, mix.name);
      const name = `${variant} ${mix.name}`;
      if (!cell) {
        problems.push(`${name}: no result`);
        continue;
      }
      problems.push(...loadFailures(name, cell));
      if (variant.startsWith('pg-sessions') && !Number.isFinite(cell.roundTripsPerRequest)) {
        problems.push(`${name}: no round-trip count`);
      }
      if (
        variant.startsWith('pg-sessions') &&
        mix.writeShare > 0 &&
        !(Number.isFinite(cell.fsyncsPerWrite) && Number.isFinite(cell.lockObjectShare))
      ) {
        problems.push(`${name}: no statistics from PostgreSQL`);
      }
      if (
        variant === 'pg-sessions-cache' &&
        !(cell.cacheHitRatio !== undefined && cell.cacheHitRatio > 0)
      ) {
        problems.push(`${name}: the cache served nothing`);
      }
    }
  }
  return problems;
}

function notifyFailures(notify: NotifyResult, settings: NotifySettings): string[] {
  const problems: string[] = [];
  if (notify.samples < settings.samples) {
    problems.push(`notification latency: ${notify.samples} of ${settings.samples} samples`);
  }
  if (!Number.isFinite(notify.latencyMs.p99)) problems.push('notification latency: no numbers');
  if (notify.notEvicted > 0) {
    problems.push(`notification latency: ${notify.notEvicted} notifications evicted nothing`);
  }
  if (notify.staleReads > 0) {
    problems.push(`notification latency: ${notify.staleReads} stale reads after eviction`);
  }
  return problems;
}

function replicaFailures(result: ReplicaResult): string[] {
  const problems: string[] = [];
  for (const expected of REPLICA_CELLS) {
    const cell = result.cells.find((candidate) => candidate.name === expected.name);
    const name = `replicas ${expected.name}`;
    if (!cell) {
      problems.push(`${name}: no result`);
      continue;
    }
    problems.push(...loadFailures(name, cell));
    if (!Number.isFinite(cell.roundTripsPerRequest)) problems.push(`${name}: no round-trip count`);
    if (!Number.isFinite(cell.reads.replicaReads)) problems.push(`${name}: no router counters`);
    if (cell.reads.failovers > 0) problems.push(`${name}: ${cell.reads.failovers} failovers`);
    // Routing, not speed: with replicas to read from, some reads must have gone there.
    if (cell.replicas > 0 && !(cell.replicaShare > 0)) {
      problems.push(`${name}: no session load was answered by a replica`);
    }
    if (cell.replicas === 0 && cell.reads.replicaReads > 0) {
      problems.push(`${name}: ${cell.reads.replicaReads} reads went to a replica not configured`);
    }
  }
  const { failover } = result;
  if (!Number.isFinite(failover.firstWriteMs)) {
    problems.push('failover: no write begun after the kill was acknowledged');
  }
  if (failover.failed > 0) {
    problems.push(`failover: ${failover.failed} writes ended other than 2xx or 503`);
  }
  return problems;
}

function find(cells: readonly HttpCell[], variant: Variant, mix: MixName): HttpCell | undefined {
  return cells.find((cell) => cell.variant === variant && cell.mix === mix);
}

function cellsOf(cells: readonly HttpCell[], variant: Variant, mix: MixName): HttpCell[] {
  return cells.filter((cell) => cell.variant === variant && cell.mix === mix);
}

/** The mean of the finite values (NaN when none is). */
function meanOf<T>(items: readonly T[], value: (item: T) => number | undefined): number {
  const values = items.map(value).filter((item): item is number => Number.isFinite(item));
  return values.length === 0
    ? Number.NaN
    : values.reduce((sum, item) => sum + item, 0) / values.length;
}

/** `mean [lowest–highest]` (just the value for one). */
function spread(values: readonly number[], digits = 0): string {
  const finite = values.filter((value) => Number.isFinite(value));
  if (finite.length === 0) return '—';
  const mean = finite.reduce((sum, value) => sum + value, 0) / finite.length;
  if (finite.length === 1) return fixed(mean, digits);
  return `${fixed(mean, digits)} [${fixed(Math.min(...finite), digits)}–${fixed(Math.max(...finite), digits)}]`;
}

const fixed = (value: number | undefined, digits: number) =>
  value === undefined || !Number.isFinite(value) ? '—' : value.toFixed(digits);
const percent = (value: number | undefined) =>
  value === undefined || !Number.isFinite(value) ? '—' : `${(value * 100).toFixed(1)} %`;
const cores = (busy: HttpCell['cpuCores']) =>
  `${fixed(busy.app, 2)} / ${fixed(busy.postgres, 2)} / ${fixed(busy.load, 2)}`;
const totalCores = (busy: HttpCell['cpuCores']) => busy.app + (busy.postgres ?? 0) + busy.load;

/** The generated blocks of RESULTS.md, by name: `run`, then one per part that ran. */
export function renderResults(report: BenchReport): Map<string, string> {
  const blocks = new Map<string, string>();
  blocks.set('run', renderRun(report));
  const stamp = `Measured by \`${report.command}\` at ${report.at.slice(0, 16).replace('T', ' ')} UTC.`;
  if (report.http && report.settings.http) {
    blocks.set(
      'http',
      renderHttp(report.http, report.settings.http, report.machine, stamp, report.writeCeiling),
    );
  }
  if (report.requestPath && report.settings.requestPath) {
    blocks.set('path', renderPath(report.requestPath, report.settings.requestPath, stamp));
  }
  if (report.notify) blocks.set('notify', renderNotify(report.notify, stamp));
  if (report.replicas && report.settings.replicas) {
    blocks.set('replicas', renderReplicas(report.replicas, report.settings.replicas, stamp));
  }
  return blocks;
}

function renderRun(report: BenchReport): string {
  const { machine } = report;
  return `## Latest run

\`${report.command}\` — ${report.at.slice(0, 16).replace('T', ' ')} UTC, ${report.elapsedSeconds} s in all (${report.parts.join(', ')}).

Machine: ${machine.cpus} CPUs (${machine.cpuModel}), ${machine.os}, Node ${machine.node}.
PostgreSQL: ${machine.postgres} (${machine.postgresBackend}; ${machine.postgresSettings}), on the same machine,
started and stopped by the benchmark. The app, the load generator and every PostgreSQL server share the CPUs.`;
}

function renderHttp(
  cells: readonly HttpCell[],
  settings: HttpSettings,
  machine: Machine,
  stamp: string,
  ceiling: WriteCeiling | undefined,
): string {
  const rows: string[] = [];
  for (const mix of MIXES) {
    for (const variant of VARIANTS) {
      const all = cellsOf(cells, variant, mix.name);
      if (all.length === 0) continue;
      const mean = (value: (cell: HttpCell) => number | undefined) => meanOf(all, value);
      const busy = {
        app: mean((cell) => cell.cpuCores.app),
        postgres: mean((cell) => cell.cpuCores.postgres),
        load: mean((cell) => cell.cpuCores.load),
      };
      rows.push(
        `| ${mix.name} | ${LABELS[variant]} | ${spread(all.map((cell) => cell.requestsPerSecond))} | **${fixed(
          mean((cell) => cell.ratioToBare),
          2,
        )}×** | ${fixed(
          mean((cell) => cell.latencyMs.p50),
          0,
        )} | ${fixed(
          mean((cell) => cell.latencyMs.p99),
          0,
        )} | ${fixed(
          mean((cell) => cell.roundTripsPerRequest),
          2,
        )} | ${percent(mean((cell) => cell.cacheHitRatio))} | ${fixed(
          mean((cell) => cell.fsyncsPerWrite),
          2,
        )} | ${percent(mean((cell) => cell.lockObjectShare))} | ${cores(busy)} | ${Math.round(mean((cell) => cell.appCpuMicrosPerRequest))} |`,
      );
    }
  }
  const length =
    settings.amount === undefined
      ? `${settings.durationSeconds} s per cell after a ${settings.warmupSeconds} s warm-up`
      : `${settings.amount} requests per cell`;
  return `### HTTP throughput of one app process

${stamp} ${settings.sessions} live sessions, ${settings.connections} connections, ${length}, ${settings.rounds} round${settings.rounds > 1 ? 's' : ''} (every variant and mix once per round, in order).
read-only: every request only reads the session (GET); read-mostly: 90 % of requests only
read it, 10 % change one key (POST); write-heavy: 50/50. Every request names one of the live sessions at random; the load
generator keeps each session's cookies as a browser would. req/s: the mean of the rounds, with the lowest and highest in
brackets; the other columns are means. WAL fsyncs per write and the share of the database's active backends seen waiting
on \`Lock:object\` (sampled every 20 ms from \`pg_stat_activity\`) are PostgreSQL's own statistics.

| mix | variant | req/s | vs bare Koa | p50 ms | p99 ms | DB round trips / request | cache hit ratio | WAL fsyncs / write | Lock:object waits | CPU cores busy: app / PostgreSQL / autocannon | app CPU µs / request |
| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |
${rows.join('\n')}

#### Ratios against this run's baselines

${ratios(cells)
  .map((line) => `- ${line}`)
  .join('\n')}

${ceiling ? `\n${renderCeiling(cells, ceiling, settings)}\n` : ''}
#### Where the CPU went

${saturation(cells, machine.cpus)}`;
}

const PATH_LABELS: Record<PathVariant, string> = {
  bare: 'bare Koa (the context and handler alone)',
  'koa-session': LABELS['koa-session'],
  'koa-session-redis': LABELS['koa-session-redis'],
  'koa-session-pg': 'koa-session, connect-pg-simple store',
  'pg-sessions': 'pg-sessions, cache on (the defaults)',
};

/** Each layer's own CPU per request, from bench/request-path.ts. */
function renderPath(result: RequestPathResult, settings: PathSettings, stamp: string): string {
  const cellsFor = (variant: PathVariant, op: string): PathCell[] =>
    result.cells.filter((cell) => cell.variant === variant && cell.op === op);
  const rows = PATH_OPS.flatMap((op) =>
    PATH_VARIANTS.map(
      (variant) =>
        `| ${op} | ${PATH_LABELS[variant]} | ${spread(
          cellsFor(variant, op).map((cell) => cell.cpuMicrosPerRequest),
          1,
        )} | ${spread(
          cellsFor(variant, op).flatMap((cell) => cell.serverMicrosPerRequest ?? []),
          0,
        )} |`,
    ),
  );
  // Paired by round: ours against koa-session's cookie store in the same round.
  const paired = cellsFor('pg-sessions', 'read').map((cell) => {
    const cookie = cellsFor('koa-session', 'read').find((other) => other.round === cell.round);
    return { ours: cell.cpuMicrosPerRequest, theirs: cookie?.cpuMicrosPerRequest ?? Number.NaN };
  });
  const met = paired.length > 0 && paired.every(({ ours, theirs }) => ours < theirs);
  const byRound = paired
    .map(({ ours, theirs }) => `${fixed(ours, 1)} vs ${fixed(theirs, 1)}`)
    .join(', ');
  return `### App CPU per request, the session layer alone

${stamp} The same handlers as the HTTP cells, called in the benchmark's own process on Koa contexts
built from unconnected sockets: no HTTP parsing, no response written, no load generator. ${settings.connections} requests in flight,
${settings.requests} reads and ${Math.ceil(settings.requests / 10)} writes per cell after a quarter as many unrecorded, over ${settings.sessions} sessions,
${settings.rounds} round${settings.rounds > 1 ? 's' : ''} interleaved. Process CPU time (user + system) per request, µs: mean [lowest–highest] over the rounds;
round trips to Redis and PostgreSQL are in it, the servers' own CPU is not: PostgreSQL's (all
its processes, from /proc, when the benchmark started the server) is the last column.

| request | layer | app CPU µs / request | PostgreSQL CPU µs / request |
| --- | --- | ---: | ---: |
${rows.join('\n')}

- target: a cached read costs the app fewer µs than koa-session spends on its cookie, by round (pg-sessions vs koa-session): ${byRound} — ${met ? '**met**' : '**not met**'}`;
}

/** The mixes with writes: issue 5's targets and the write ceiling's bounds are about these. */
const WRITING_MIXES = MIXES.filter(({ writeShare }) => writeShare > 0);

/** What the database alone can commit, and what that allows each mix at most. */
function renderCeiling(
  cells: readonly HttpCell[],
  ceiling: WriteCeiling,
  settings: HttpSettings,
): string {
  const of = (kind: CeilingKind) => ceiling.cells.filter((cell) => cell.kind === kind);
  const rows = CEILING_KINDS.map((kind) => {
    const all = of(kind);
    return `| ${kind} | ${CEILING_LABELS[kind]} | ${spread(all.map((cell) => cell.writesPerSecond))} | ${fixed(
      meanOf(all, (cell) => cell.latencyMs.p50),
      1,
    )} | ${fixed(
      meanOf(all, (cell) => cell.latencyMs.p99),
      1,
    )} | ${spread(
      all.map((cell) => cell.fsyncsPerWrite),
      2,
    )} | ${spread(
      all.map((cell) => cell.lockObjectShare * 100),
      0,
    )} % |`;
  });
  // Paired: each round's deferred cell against the same round's no-notify cell.
  const paired = of('deferred').map((cell) => {
    const base = of('no-notify').find((other) => other.round === cell.round);
    return base ? cell.writesPerSecond / base.writesPerSecond : Number.NaN;
  });
  const deferredFsyncs = of('deferred').map((cell) => cell.fsyncsPerWrite);
  const verdict = (met: boolean) => (met ? '**met**' : '**not met**');
  const deferred = meanOf(of('deferred'), (cell) => cell.writesPerSecond);
  const lines = WRITING_MIXES.map(({ name, writeShare }) => {
    const bound = deferred / writeShare;
    const redis = meanOf(
      cellsOf(cells, 'koa-session-redis', name),
      (cell) => cell.requestsPerSecond,
    );
    const bare = meanOf(cellsOf(cells, 'bare', name), (cell) => cell.requestsPerSecond);
    const ours = meanOf(
      cellsOf(cells, 'pg-sessions-cache', name),
      (cell) => cell.requestsPerSecond,
    );
    return `- ${name} (${Math.round(writeShare * 100)} % writes): at most ${Math.round(bound)} req/s for any layer that commits each change here, ${fixed(bound / bare, 2)}× bare Koa and ${fixed(bound / redis, 2)}× koa-session with Redis; pg-sessions with the cache reached ${fixed(ours / bound, 2)} of that bound.`;
  });
  return `#### The database's ceiling for session writes

The same PostgreSQL, with no HTTP and no Koa: ${settings.connections} concurrent writers (one pool connection each) changing one key of one of ${settings.sessions} sessions through the middleware's own store, three kinds of the same UPDATE interleaved round after round (writes/s: mean [lowest–highest]; fsyncs and \`Lock:object\` waits: [lowest–highest] over the rounds):

| kind | what | writes/s | p50 ms | p99 ms | WAL fsyncs / write | Lock:object waits |
| --- | --- | ---: | ---: | ---: | ---: | ---: |
${rows.join('\n')}

- target: the middleware's statement ≥ 0.85× the same UPDATE with no notification, paired by round: ${paired.map((ratio) => fixed(ratio, 2)).join(', ')} — ${verdict(paired.length > 0 && paired.every((ratio) => ratio >= 0.85))}
- target: fewer than 0.5 WAL fsyncs per write at ${settings.connections} writers: ${deferredFsyncs.map((value) => fixed(value, 2)).join(', ')} — ${verdict(deferredFsyncs.length > 0 && deferredFsyncs.every((value) => value < 0.5))}

A layer that writes every change durably can serve at most the deferred figure divided by its share of writing requests:

${lines.join('\n')}`;
}

const CEILING_LABELS: Record<CeilingKind, string> = {
  deferred: "the middleware's data write: NOTIFY after the COMMIT, same message",
  'in-commit': 'the same UPDATE notifying inside its commit (hand-written SQL, security changes)',
  'no-notify': 'the same UPDATE on a database whose triggers notify nobody',
};

/** `ours / theirs` in each round (paired: both ran minutes apart at most), as a list. */
function pairedRatios(
  cells: readonly HttpCell[],
  ours: Variant,
  theirs: Variant,
  mix: MixName,
): number[] {
  return cellsOf(cells, ours, mix).map((cell) => {
    const other = cells.find(
      (candidate) =>
        candidate.variant === theirs && candidate.mix === mix && candidate.round === cell.round,
    );
    return other ? cell.requestsPerSecond / other.requestsPerSecond : Number.NaN;
  });
}

function ratios(cells: readonly HttpCell[]): string[] {
  const verdict = (values: number[], bound: number) =>
    values.length > 0 && values.every((value) => value >= bound)
      ? '**met**'
      : values.some((value) => value >= bound)
        ? '**met in some rounds only**'
        : '**not met**';
  const target = (label: string, ours: Variant, theirs: Variant, mix: MixName, bound: number) => {
    const values = pairedRatios(cells, ours, theirs, mix);
    return `target: ${label} ≥ ${bound}×, ${mix}: ${values.map((value) => `${fixed(value, 2)}×`).join(', ')} (by round) — ${verdict(values, bound)}`;
  };
  const info = (label: string, ours: Variant, theirs: Variant, mix: MixName) =>
    `${label}, ${mix}: ${pairedRatios(cells, ours, theirs, mix)
      .map((value) => `${fixed(value, 2)}×`)
      .join(', ')} (by round)`;
  return [
    target(
      'pg-sessions with the cache vs koa-session with Redis',
      'pg-sessions-cache',
      'koa-session-redis',
      'read-mostly',
      1.2,
    ),
    target('pg-sessions with the cache vs bare Koa', 'pg-sessions-cache', 'bare', 'read-only', 0.7),
    target(
      'pg-sessions with the cache vs koa-session with Redis',
      'pg-sessions-cache',
      'koa-session-redis',
      'read-only',
      1.25,
    ),
    target(
      'lock mode vs merge mode (cache on)',
      'pg-sessions-lock',
      'pg-sessions-cache',
      'read-only',
      0.5,
    ),
    info(
      `calibration: bare Koa with ${BUSY_MICROS} µs of busy work per request vs bare Koa (any layer costing that much serves about this share here)`,
      'bare-busy',
      'bare',
      'read-only',
    ),
    info(
      'lock mode vs merge mode with `cache: false` (both load every request)',
      'pg-sessions-lock',
      'pg-sessions-nocache',
      'read-only',
    ),
    info(
      'pg-sessions with the cache vs koa-session with Redis',
      'pg-sessions-cache',
      'koa-session-redis',
      'write-heavy',
    ),
    info(
      "pg-sessions with the cache vs koa-session's cookie store",
      'pg-sessions-cache',
      'koa-session',
      'read-mostly',
    ),
    ...MIXES.map(({ name }) =>
      info(
        "the cache's own effect (cache on / off)",
        'pg-sessions-cache',
        'pg-sessions-nocache',
        name,
      ),
    ),
  ];
}

/** A paragraph computed from the run: how busy the machine was, so that no ratio is read alone. */
function saturation(cells: readonly HttpCell[], cpus: number): string {
  const busiest = [...cells].sort((x, y) => totalCores(y.cpuCores) - totalCores(x.cpuCores))[0];
  const bare = find(cells, 'bare', 'read-mostly');
  const cached = find(cells, 'pg-sessions-cache', 'read-mostly');
  const perRead = (variant: Variant) =>
    Math.round(find(cells, variant, 'read-only')?.appCpuMicrosPerRequest ?? Number.NaN);
  const lines = [
    `The machine has ${cpus} CPUs. The busiest cell (${busiest ? `${busiest.variant} ${busiest.mix}` : '—'}) kept ${fixed(busiest && totalCores(busiest.cpuCores), 2)} cores busy between the app, PostgreSQL and autocannon, so every cell competes with its own load generator and database for the same cores; other processes on a shared machine are not counted at all.`,
  ];
  if (bare && cached) {
    lines.push(
      `Per request, the app process spent ${Math.round(bare.appCpuMicrosPerRequest)} µs of CPU with bare Koa and ${Math.round(cached.appCpuMicrosPerRequest)} µs with pg-sessions and its cache (read-mostly). Their ratio is ${fixed(bare.appCpuMicrosPerRequest / cached.appCpuMicrosPerRequest, 2)}×. These figures are more than the layers' own cost: a response written to a load generator that sleeps costs the app a wake-up (on a small virtual machine, tens of µs), and the slower the app, the more often the generator sleeps; the calibration cell (bare Koa with ${BUSY_MICROS} µs of busy work) shows the effect, and the next section measures each layer without sockets.`,
      `A request that only reads (read-only mix) cost the app ${perRead('bare')} µs with bare Koa, ${perRead('koa-session')} µs with koa-session's cookie store, ${perRead('koa-session-redis')} µs with koa-session and Redis, ${perRead('pg-sessions-cache')} µs with pg-sessions and its cache and ${perRead('pg-sessions-lock')} µs in lock mode; the rest of a read-mostly request's cost is its share of the writes.`,
    );
  }
  return lines.join('\n');
}

function renderNotify(notify: NotifyResult, stamp: string): string {
  const ms = (value: number) => fixed(value, 2);
  return `### Notification to eviction, between two processes

${stamp} ${notify.samples} changes made by process A: with plain SQL (update, revoke, delete,
each notifying inside its commit) and through the middleware's store (deferred: the data
write's notification sent by the statement after its COMMIT, in the same message), in turn,
each evicted from process B's cache by its LISTEN connection; measured from A sending
\`COMMIT\` (deferred: the write's message) to B having applied the notification. Target:
p99 under 10 ms on an idle machine.

| change | median ms | p90 ms | p99 ms | max ms |
| --- | ---: | ---: | ---: | ---: |
| all | ${ms(notify.latencyMs.median)} | ${ms(notify.latencyMs.p90)} | ${ms(notify.latencyMs.p99)} | ${ms(notify.latencyMs.max)} |
${(['update', 'revoke', 'delete', 'deferred'] as const)
  .map((operation) => {
    const d = notify.byOperation[operation];
    return `| ${operation} | ${ms(d.median)} | ${ms(d.p90)} | ${ms(d.p99)} | ${ms(d.max)} |`;
  })
  .join('\n')}

A's own \`COMMIT\` round trip (part of the above): median ${ms(notify.commitRoundTripMs.median)} ms, p99 ${ms(notify.commitRoundTripMs.p99)} ms.
Notifications that evicted nothing: ${notify.notEvicted}; B's next request still seeing the old session: ${notify.staleReads}.`;
}

function renderReplicas(result: ReplicaResult, settings: ReplicaSettings, stamp: string): string {
  const rows = result.cells.map(
    (cell) =>
      `| ${cell.name} | ${cell.replicas} | ${Math.round(cell.requestsPerSecond)} | ${cell.latencyMs.p50} | ${cell.latencyMs.p99} | ${percent(cell.replicaShare)} | ${cell.reads.replicaReads} / ${cell.reads.primaryReads} / ${cell.reads.staleReplicaReads} | ${fixed(cell.roundTripsPerRequest, 2)} | ${cores(cell.cpuCores)} |`,
  );
  const primaryOnly = result.cells.find((cell) => cell.replicas === 0 && cell.writeShare === 0);
  const scaling = result.cells
    .filter((cell) => cell.writeShare === 0 && cell.replicas > 0)
    .map(
      (cell) =>
        `${cell.replicas} replica${cell.replicas > 1 ? 's' : ''}: ${fixed(cell.requestsPerSecond / (primaryOnly?.requestsPerSecond ?? Number.NaN), 2)}×`,
    );
  const length =
    settings.amount === undefined
      ? `${settings.durationSeconds} s per cell after a ${settings.warmupSeconds} s warm-up`
      : `${settings.amount} requests per cell`;
  return `### Read scaling over streaming replicas

${stamp} ${result.postgres}: a primary and ${CLUSTER_REPLICAS} asynchronous streaming replicas
(\`startCluster\` from \`pg-sessions/testing\`), all on this machine. One app process,
pg-sessions with \`cache: false\` over a \`ReplicaRouter\` reading from the replicas listed
(so every request loads its session from a database), ${settings.sessions} live sessions,
${settings.connections} connections, ${length}. The load keeps each session's version cookie
(the read-your-writes fence), so a client that just wrote reads its own write.

| cell | replicas read from | req/s | p50 ms | p99 ms | session loads answered by replicas | reads: replica / primary / stale replica | DB round trips / request | CPU cores busy: app / PostgreSQL (all servers) / autocannon |
| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |
${rows.join('\n')}

Failover, after the cells: the router discovers the roles among the three servers
(\`hosts\`, \`failoverTimeout: 5000\`); four clients write in a loop; the primary is killed
with SIGKILL, and ${DECISION_MS} ms later replica 1 is promoted (\`pg_ctl promote -w\`).

| promotion ms | first write acknowledged, ms after the promotion began | writes | 2xx | 503 | other | slowest write ms |
| ---: | ---: | ---: | ---: | ---: | ---: | ---: |
| ${fixed(result.failover.promotionMs, 0)} | ${fixed(result.failover.firstWriteMs, 0)} | ${result.failover.writes} | ${result.failover.acknowledged} | ${result.failover.unavailable} | ${result.failover.failed} | ${fixed(result.failover.longestWriteMs, 0)} |

Read-only throughput against the primary alone: ${scaling.join(', ')}. Every server shares the
same cores here, so a replica adds no hardware: what changes is that the router keeps a
pool of ${ROUTER_POOL_SIZE} connections per host (more connections, more backends for the
same cores) and that the cells run in order on a shared machine. Read these figures as
proof that the routing holds under load and as one primary's capacity on this machine,
not as the scaling of a deployment with one machine per server.`;
}

/** Replaces one generated block of RESULTS.md (appended when new), keeping what people wrote around it. */
export function spliceGenerated(previous: string, name: string, generated: string): string {
  const start = `<!-- generated by npm run bench: ${name} -->`;
  const end = `<!-- end of generated ${name} -->`;
  const block = `${start}\n${generated.trim()}\n${end}`;
  const from = previous.indexOf(start);
  const to = previous.indexOf(end);
  if (from < 0 || to < from) return `${previous.trimEnd()}\n\n${block}\n`;
  return `${previous.slice(0, from)}${block}${previous.slice(to + end.length)}`;
}
