// `npm run bench:create`: what a new session and a sign-in cost, in one run on one machine.
//   create   a first visit (no cookie) whose handler sets one key, so that every request
//            creates a session, over HTTP, side by side: pg-sessions with its defaults,
//            koa-session 7 with connect-pg-simple (bench/pg-simple-store.ts) on the same
//            PostgreSQL, koa-session 7 with Redis (bench/redis-store.ts, 127.0.0.1:6379 or
//            REDIS_URL). Creations/s are 2xx responses/s.
//   signin   pg-sessions only: clients that already hold a session call
//            ctx.sessions.bindUser('user-<n>') (which rotates the token), against
//   write    the same clients changing one key of their session (the data-write reference);
//            WAL fsyncs per request from PostgreSQL's statistics (bench/db-probe.ts), with
//            WAL bytes (pg_stat_wal) and the share of backends waiting on Lock:object.
// Each cell runs in an app process of its own (bench/create-app.ts), on a fresh database
// (createTestDatabase; connect-pg-simple creates its table there), under autocannon in a
// second process (bench/create-load.ts). The cells run in order, round after round.
// PostgreSQL as bench/run.ts starts it: PG_TEST_URL's server if set, else a local one with
// production durability (fsync on); the smoke run takes throwaway settings, as bench:smoke.
//
// Options: --duration <s> per measured cell (default 8), --warmup <s> (2), --rounds <n> (2),
// --connections <n> (16), --smoke (100 requests per cell, one round: proves every cell
// answers 2xx and measures nothing). Prints Markdown to stdout, writes JSON to
// bench/results/create-latest.json (the smoke run: to the temporary folder), and exits 1
// when a cell failed: an error, a non-2xx answer, a first visit or sign-in that handed out
// no cookie, a created session missing from the store. Never on speed.
import { mkdirSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { availableParallelism, cpus, loadavg, platform, release, tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { Redis } from 'ioredis';
import pg from 'pg';
import { createTestDatabase, PostgresServer, stopTestServer } from '../src/testing/index.js';
import { Child, type Message } from './child.js';
import type { CreateAppStats, CreateVariant } from './create-app.js';
import type { CreateKind, CreateLoadResult, CreateLoadRun } from './create-load.js';
import { DbProbe } from './db-probe.js';
import { postgresCpuMicros } from './http.js';

const { values: args } = parseArgs({
  options: {
    smoke: { type: 'boolean', default: false },
    duration: { type: 'string' },
    warmup: { type: 'string' },
    rounds: { type: 'string' },
    connections: { type: 'string' },
  },
});
const smoke = args.smoke === true;

function count(name: string, value: string | undefined, fallback: number, min = 1): number {
  if (value === undefined) return fallback;
  const parsed = Number(value);
  if (!Number.isInteger(parsed) || parsed < min) {
    throw new Error(`--${name} must be an integer of at least ${min}, got ${value}`);
  }
  return parsed;
}

interface CreateSettings {
  readonly connections: number;
  readonly durationSeconds: number;
  readonly warmupSeconds: number;
  readonly rounds: number;
  /** A fixed number of requests per cell instead of the duration (the smoke run). */
  readonly amount?: number;
}

const settings: CreateSettings = {
  connections: count('connections', args.connections, 16),
  durationSeconds: count('duration', args.duration, smoke ? 1 : 8),
  warmupSeconds: count('warmup', args.warmup, smoke ? 0 : 2, 0),
  rounds: count('rounds', args.rounds, smoke ? 1 : 2),
  ...(smoke && args.duration === undefined ? { amount: 100 } : {}),
};

/** The cells of one round, in the order they run. */
const CELLS: readonly { readonly kind: CreateKind; readonly variant: CreateVariant }[] = [
  { kind: 'create', variant: 'pg-sessions' },
  { kind: 'create', variant: 'koa-session-pg' },
  { kind: 'create', variant: 'koa-session-redis' },
  { kind: 'signin', variant: 'pg-sessions' },
  { kind: 'write', variant: 'pg-sessions' },
];

const LABELS: Record<CreateVariant, string> = {
  'pg-sessions': 'pg-sessions, defaults (cache on)',
  'koa-session-pg': 'koa-session 7 + connect-pg-simple',
  'koa-session-redis': 'koa-session 7 + Redis (ioredis)',
};

/** One cell of one round. */
interface CreateCell {
  readonly kind: CreateKind;
  readonly variant: CreateVariant;
  readonly round: number;
  /** Responses received, 2xx or not. */
  readonly requests: number;
  readonly ok: number;
  /** 2xx responses per second: creations/s, sign-ins/s or writes/s. */
  readonly okPerSecond: number;
  readonly latencyMs: CreateLoadResult['latencyMs'];
  readonly non2xx: number;
  readonly errors: number;
  readonly timeouts: number;
  readonly okWithoutCookie: number;
  readonly starved: number;
  /** Creation cells: sessions the store holds now that it did not before the measured run. */
  readonly stored?: number;
  /** Database (or Redis) round trips per request: pg-sessions' counter, or koa-session's store calls. */
  readonly roundTripsPerRequest: number;
  /** pg-sessions: its counters over the measured run. */
  readonly counters?: {
    readonly creates: number;
    readonly saves: number;
    readonly rotations: number;
  };
  /** PostgreSQL cells: WAL fsyncs during the measured run (cluster-wide) and per 2xx response. */
  readonly walFsyncs?: number;
  readonly fsyncsPerRequest?: number;
  /** PostgreSQL cells: WAL bytes written per 2xx response (pg_stat_wal, cluster-wide). */
  readonly walBytesPerRequest?: number;
  /** PostgreSQL cells: share of the database's sampled active backends waiting on Lock:object. */
  readonly lockObjectShare?: number;
  /** CPU cores busy on average during the run: the app, PostgreSQL (when local), autocannon. */
  readonly cpuCores: { readonly app: number; readonly postgres?: number; readonly load: number };
  /** App CPU time per 2xx response, in microseconds. */
  readonly appCpuMicrosPerRequest: number;
  /** The machine's 1-minute load average at the end of the cell (others' work shows here). */
  readonly loadAverage: number;
}

interface CreateReport {
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
    readonly postgresSettings: string;
    readonly postgresBackend: string;
    readonly redis: string;
  };
  readonly settings: CreateSettings;
  readonly cells: readonly CreateCell[];
}

const here = (file: string) => fileURLToPath(new URL(file, import.meta.url));
const startedAt = Date.now();
const log = (line: string) =>
  process.stderr.write(`[${((Date.now() - startedAt) / 1000).toFixed(1)} s] ${line}\n`);
const delay = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
const extraArgs = process.argv.slice(2);
const command = `npm run bench:create${extraArgs.length > 0 ? ` -- ${extraArgs.join(' ')}` : ''}`;

/** Production durability, as bench/run.ts: the test suite's fsync off would flatter every write. */
const DURABLE: Readonly<Record<string, string>> = {
  fsync: 'on',
  full_page_writes: 'on',
  synchronous_commit: 'on',
};

async function serverFacts(adminUrl: string): Promise<{ version: string; settings: string }> {
  const client = new pg.Client(adminUrl);
  await client.connect();
  try {
    const { rows } = await client.query<Record<string, string>>(
      `SELECT current_setting('server_version') AS version, current_setting('fsync') AS fsync,
              current_setting('synchronous_commit') AS commit,
              current_setting('full_page_writes') AS fpw,
              current_setting('wal_sync_method') AS sync_method,
              current_setting('shared_buffers') AS buffers`,
    );
    const row = rows[0] ?? {};
    return {
      version: `PostgreSQL ${row.version ?? '?'}`,
      settings: `fsync=${row.fsync}, synchronous_commit=${row.commit}, full_page_writes=${row.fpw}, wal_sync_method=${row.sync_method}, shared_buffers=${row.buffers}`,
    };
  } finally {
    await client.end();
  }
}

/** Redis' version and persistence settings (CONFIG may be disabled: then only the version). */
async function redisFacts(redis: Redis): Promise<string> {
  const info = await redis.info('server');
  const version = /redis_version:(\S+)/.exec(info)?.[1] ?? '?';
  try {
    const config = (await redis.config('GET', 'appendonly')) as string[];
    const fsync = (await redis.config('GET', 'appendfsync')) as string[];
    const save = (await redis.config('GET', 'save')) as string[];
    return `Redis ${version} (appendonly=${config[1]}, appendfsync=${fsync[1]}, save="${save[1]}")`;
  } catch {
    return `Redis ${version}`;
  }
}

/** First visits: `n` new sessions, as their `Cookie` header values. */
async function visit(url: string, n: number): Promise<string[]> {
  return Promise.all(
    Array.from({ length: n }, async () => {
      const response = await fetch(`${url}/visit`);
      await response.text();
      if (!response.ok) throw new Error(`GET /visit answered ${response.status}`);
      const cookie = response.headers
        .getSetCookie()
        .map((line) => line.split(';')[0])
        .join('; ');
      if (!cookie) throw new Error('GET /visit set no cookie');
      return cookie;
    }),
  );
}

/** Keys under `prefix` in Redis (SCAN; the benchmark's own keys only). */
async function redisKeys(redis: Redis, prefix: string, remove = false): Promise<number> {
  let found = 0;
  let cursor = '0';
  do {
    const [next, keys] = await redis.scan(cursor, 'MATCH', `${prefix}*`, 'COUNT', 10_000);
    cursor = next;
    found += keys.length;
    if (remove && keys.length > 0) await redis.unlink(...keys);
  } while (cursor !== '0');
  return found;
}

/** Sessions the store of `variant` holds now (`admin`: a superuser client of its database). */
async function storedSessions(
  variant: CreateVariant,
  admin: pg.Client | undefined,
  redis: Redis,
  prefix: string,
): Promise<number> {
  if (variant === 'koa-session-redis') return redisKeys(redis, prefix);
  if (!admin) throw new Error(`${variant} needs a database`);
  const table = variant === 'pg-sessions' ? 'sessions.session' : 'public.session';
  const { rows } = await admin.query<{ n: number }>(`SELECT count(*)::int AS n FROM ${table}`);
  return rows[0]?.n ?? Number.NaN;
}

/** WAL bytes the server has written so far (pg_stat_wal, PostgreSQL 14 and later). */
async function walBytes(admin: pg.Client | undefined): Promise<number | undefined> {
  if (!admin) return undefined;
  const { rows } = await admin.query<{ bytes: number }>(
    'SELECT wal_bytes::float8 AS bytes FROM pg_stat_wal',
  );
  return rows[0]?.bytes ?? Number.NaN;
}

async function runCell(
  kind: CreateKind,
  variant: CreateVariant,
  round: number,
  load: Child,
  redis: Redis,
  postmasterPid: number | undefined,
): Promise<CreateCell> {
  const database =
    variant === 'koa-session-redis'
      ? undefined
      : // connect-pg-simple gets an empty database and creates its own table there.
        await createTestDatabase(variant === 'koa-session-pg' ? { migrated: false } : {});
  const prefix = `bench:create:${process.pid}:${round}:`;
  const probe = database ? await DbProbe.open(database.url, !smoke) : undefined;
  const admin = database ? new pg.Client(database.url) : undefined;
  await admin?.connect();
  const app = Child.start('./create-app.ts', {
    env: {
      BENCH_CREATE_VARIANT: variant,
      REDIS_PREFIX: prefix,
      // pg-sessions logs in as the schema's app role; connect-pg-simple needs to create a table.
      ...(database
        ? { DATABASE_URL: variant === 'pg-sessions' ? database.appUrl : database.url }
        : {}),
    },
  });
  let cell: CreateCell | undefined;
  let code: number | null = null;
  try {
    const { port } = await app.next<Message & { port: number }>('ready');
    const url = `http://127.0.0.1:${port}`;
    // Sign-ins and writes: fresh sessions for every run (made before it, outside what it
    // measures), so that none holds a token a previous run rotated while its response was
    // cut off.
    const sessionsFor = () => (kind === 'create' ? [] : visit(url, settings.connections));
    const run = (durationSeconds: number, cookies: string[]): Promise<CreateLoadResult> => {
      const message: CreateLoadRun = {
        type: 'run',
        url,
        kind,
        cookies,
        connections: settings.connections,
        durationSeconds,
        ...(settings.amount === undefined ? {} : { amount: settings.amount }),
      };
      return load.ask<CreateLoadResult>(message, 'result');
    };
    if (settings.warmupSeconds > 0) {
      await run(settings.warmupSeconds, await sessionsFor());
      await delay(300); // requests of the warm-up still in flight finish
    }
    const cookies = await sessionsFor();
    await probe?.begin(); // waits for the statistics to settle (not in the smoke run)
    const walBefore = await walBytes(admin);
    const storedBefore =
      kind === 'create' ? await storedSessions(variant, admin, redis, prefix) : 0;
    const before = await app.ask<CreateAppStats>({ type: 'stats' }, 'stats');
    const postgresBefore = postgresCpuMicros(postmasterPid);
    const runStarted = performance.now();
    const result = await run(settings.durationSeconds, cookies);
    const elapsedMicros = (performance.now() - runStarted) * 1000;
    const postgresAfter = postgresCpuMicros(postmasterPid);
    const after = await app.ask<CreateAppStats>({ type: 'stats' }, 'stats');
    const activity = await probe?.end();
    const walAfter = await walBytes(admin);
    const storedAfter = kind === 'create' ? await storedSessions(variant, admin, redis, prefix) : 0;
    const perOk = (value: number) => (result.ok > 0 ? value / result.ok : Number.NaN);
    const appRequests =
      after.metrics && before.metrics ? after.metrics.requests - before.metrics.requests : 0;
    const roundTrips =
      after.metrics && before.metrics
        ? appRequests > 0
          ? (after.metrics.roundTrips - before.metrics.roundTrips) / appRequests
          : Number.NaN
        : perOk((after.storeCalls ?? 0) - (before.storeCalls ?? 0));
    cell = {
      kind,
      variant,
      round,
      requests: result.requests,
      ok: result.ok,
      okPerSecond: result.okPerSecond,
      latencyMs: result.latencyMs,
      non2xx: result.non2xx,
      errors: result.errors,
      timeouts: result.timeouts,
      okWithoutCookie: result.okWithoutCookie,
      starved: result.starved,
      ...(kind === 'create' ? { stored: storedAfter - storedBefore } : {}),
      roundTripsPerRequest: roundTrips,
      ...(after.metrics && before.metrics
        ? {
            counters: {
              creates: after.metrics.creates - before.metrics.creates,
              saves: after.metrics.saves - before.metrics.saves,
              rotations: after.metrics.rotations - before.metrics.rotations,
            },
          }
        : {}),
      ...(activity
        ? {
            walFsyncs: activity.walFsyncs,
            fsyncsPerRequest: perOk(activity.walFsyncs),
            lockObjectShare: activity.lockObjectShare,
          }
        : {}),
      ...(walBefore !== undefined && walAfter !== undefined
        ? { walBytesPerRequest: perOk(walAfter - walBefore) }
        : {}),
      cpuCores: {
        app: (after.cpuMicros - before.cpuMicros) / elapsedMicros,
        load: result.cpuMicros / elapsedMicros,
        ...(postgresBefore !== undefined && postgresAfter !== undefined
          ? { postgres: (postgresAfter - postgresBefore) / elapsedMicros }
          : {}),
      },
      appCpuMicrosPerRequest: perOk(after.cpuMicros - before.cpuMicros),
      loadAverage: loadavg()[0] ?? Number.NaN,
    };
  } finally {
    code = await app.stop();
    await probe?.close();
    await admin?.end().catch(() => {});
    await database?.drop();
    if (variant === 'koa-session-redis') await redisKeys(redis, prefix, true);
  }
  if (code !== 0) throw new Error(`the app process exited with code ${code}`);
  return cell;
}

/** Everything that means a cell did not measure what it claims; empty when all is well. */
function failures(cells: readonly CreateCell[]): string[] {
  const problems: string[] = [];
  for (const { kind, variant } of CELLS) {
    if (!cells.some((cell) => cell.kind === kind && cell.variant === variant)) {
      problems.push(`${kind} ${variant}: no result`);
    }
  }
  for (const cell of cells) {
    const name = `${cell.kind} ${cell.variant}, round ${cell.round}`;
    if (!(cell.ok > 0 && cell.okPerSecond > 0)) problems.push(`${name}: no 2xx responses`);
    if (cell.non2xx > 0) problems.push(`${name}: ${cell.non2xx} non-2xx responses`);
    if (cell.errors > 0) problems.push(`${name}: ${cell.errors} connection errors`);
    if (cell.timeouts > 0) problems.push(`${name}: ${cell.timeouts} timeouts`);
    if (cell.starved > 0) problems.push(`${name}: ${cell.starved} requests found no free session`);
    if (cell.okWithoutCookie > 0) {
      problems.push(`${name}: ${cell.okWithoutCookie} 2xx responses set no cookie`);
    }
    if (cell.stored !== undefined && !(cell.stored >= cell.ok)) {
      problems.push(`${name}: ${cell.ok} creations answered 2xx, ${cell.stored} sessions stored`);
    }
    if (!Number.isFinite(cell.latencyMs.p99)) problems.push(`${name}: no latency`);
    if (cell.variant !== 'koa-session-redis' && !Number.isFinite(cell.fsyncsPerRequest)) {
      problems.push(`${name}: no WAL statistics from PostgreSQL`);
    }
  }
  return problems;
}

// ---- Markdown ----

const mean = (values: readonly number[]) =>
  values.reduce((sum, value) => sum + value, 0) / Math.max(values.length, 1);

/** `mean [lowest–highest]` over the rounds (just the value for one round). */
function spread(values: readonly number[], digits = 0): string {
  const format = (value: number) =>
    Number.isFinite(value)
      ? value.toLocaleString('en-US', {
          minimumFractionDigits: digits,
          maximumFractionDigits: digits,
        })
      : '—';
  if (values.length === 0) return '—';
  if (values.length === 1) return format(values[0] ?? Number.NaN);
  return `${format(mean(values))} [${format(Math.min(...values))}–${format(Math.max(...values))}]`;
}

/** `lowest–highest` (one value when they agree). */
function range(values: readonly number[], digits = 0): string {
  if (values.length === 0) return '—';
  const low = Math.min(...values).toFixed(digits);
  const high = Math.max(...values).toFixed(digits);
  return low === high ? low : `${low}–${high}`;
}

function cpuColumn(cells: readonly CreateCell[]): string {
  const postgres = cells.map((cell) => cell.cpuCores.postgres);
  return [
    mean(cells.map((cell) => cell.cpuCores.app)).toFixed(2),
    postgres.every((value) => value !== undefined) ? mean(postgres as number[]).toFixed(2) : '—',
    mean(cells.map((cell) => cell.cpuCores.load)).toFixed(2),
  ].join(' / ');
}

function render(report: CreateReport): string {
  const { settings: s, machine } = report;
  const when = `${report.at.slice(0, 16).replace('T', ' ')} UTC`;
  const length =
    s.amount === undefined
      ? `${s.durationSeconds} s per cell after a ${s.warmupSeconds} s warm-up`
      : `${s.amount} requests per cell (smoke: measures nothing)`;
  const rounds = `${s.rounds} round${s.rounds === 1 ? '' : 's'} (every cell once per round, in order)`;
  const loads = report.cells.map((cell) => cell.loadAverage);
  const cellsOf = (kind: CreateKind, variant: CreateVariant) =>
    report.cells.filter((cell) => cell.kind === kind && cell.variant === variant);
  /** The columns both tables share, after the name ones. */
  const columns = (cells: readonly CreateCell[]) => {
    const postgres = cells[0]?.variant !== 'koa-session-redis';
    const optional = (
      pick: (cell: CreateCell) => number | undefined,
      show: (values: number[]) => string,
    ) => {
      const values = cells.map(pick);
      return postgres && values.every((value) => value !== undefined)
        ? show(values as number[])
        : '—';
    };
    return [
      spread(cells.map((cell) => cell.okPerSecond)),
      range(cells.map((cell) => cell.latencyMs.p50)),
      range(cells.map((cell) => cell.latencyMs.p99)),
      mean(cells.map((cell) => cell.roundTripsPerRequest)).toFixed(2),
      optional(
        (cell) => cell.fsyncsPerRequest,
        (values) => spread(values, 2),
      ),
      optional(
        (cell) => cell.walBytesPerRequest,
        (values) => mean(values).toFixed(0),
      ),
      optional(
        (cell) => cell.lockObjectShare,
        (values) => `${(mean(values) * 100).toFixed(0)} %`,
      ),
    ];
  };
  const cpu = (cells: readonly CreateCell[]) => [
    cpuColumn(cells),
    mean(cells.map((cell) => cell.appCpuMicrosPerRequest)).toFixed(0),
  ];
  const row = (values: readonly string[]) => `| ${values.join(' | ')} |`;
  const lines = [
    '## Creating a session, and what a sign-in costs',
    '',
    `\`${report.command}\` — ${when}, ${report.elapsedSeconds} s in all.`,
    '',
    `Machine: ${machine.cpus} CPUs (${machine.cpuModel}), ${machine.os}, Node ${machine.node}; 1-minute load average ${range(loads, 1)} at the ends of the cells.`,
    `${machine.postgres} (${machine.postgresBackend}; ${machine.postgresSettings}) and ${machine.redis}, on the same machine as the app and autocannon.`,
    '',
    '### New sessions over HTTP',
    '',
    `Every request is a first visit: \`GET /visit\` with no cookie, whose handler sets one key (\`visits = 1\`), so every 2xx response creates a session. ${s.connections} connections, ${length}, ${rounds}. Each layer runs in its own Koa app process with its defaults (both PostgreSQL layers: a pool of 10), on a fresh database. Creations/s: 2xx responses per second, the mean of the rounds with the lowest and highest in brackets; p50/p99: lowest–highest over the rounds; the other columns are means. Round trips: pg-sessions' own counter, or koa-session's store calls (one query or Redis command each). WAL fsyncs and bytes: the whole server's (\`pg_stat_io\` on PostgreSQL 18, \`pg_stat_wal\`), over the measured run, per 2xx response; \`Lock:object\` waits: the share of the database's active backends seen waiting on it (sampled every 20 ms). Sessions stored: new rows (keys) in the store over 2xx responses, counted after the run.`,
    '',
    '| layer | creations/s | p50 ms | p99 ms | round trips / creation | WAL fsyncs / creation | WAL bytes / creation | Lock:object waits | sessions stored / 2xx | CPU cores busy: app / PostgreSQL / autocannon | app CPU µs / creation |',
    '| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |',
  ];
  for (const { kind, variant } of CELLS.filter((cell) => cell.kind === 'create')) {
    const cells = cellsOf(kind, variant);
    if (cells.length === 0) continue;
    const stored = mean(cells.map((cell) => (cell.stored ?? Number.NaN) / cell.ok)).toFixed(3);
    lines.push(row([LABELS[variant], ...columns(cells), stored, ...cpu(cells)]));
  }
  lines.push(
    '',
    '### Sign-in against a data write, pg-sessions',
    '',
    `${s.connections} clients, each holding a session created just before the run (a first visit), each request naming its own: \`POST /signin\` calls \`ctx.sessions.bindUser('user-<n>')\` (a new user each time, which rotates the token; the client keeps the new cookie), \`POST /write\` sets one key (\`ctx.session.k = n\`). Same lengths and rounds as above, each cell on a fresh database, the same columns.`,
    '',
    '| request | what it does | requests/s | p50 ms | p99 ms | DB round trips / request | WAL fsyncs / request | WAL bytes / request | Lock:object waits | CPU cores busy: app / PostgreSQL / autocannon | app CPU µs / request |',
    '| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |',
  );
  const what: Partial<Record<CreateKind, [string, string]>> = {
    signin: ['sign-in', "`bindUser('user-<n>')`: binds a user, rotates the token"],
    write: ['data write', '`ctx.session.k = n`: changes one key'],
  };
  for (const kind of ['signin', 'write'] as const) {
    const cells = cellsOf(kind, 'pg-sessions');
    const [name, does] = what[kind] ?? [kind, ''];
    if (cells.length > 0) lines.push(row([name, does, ...columns(cells), ...cpu(cells)]));
  }
  return lines.join('\n');
}

// ---- The run ----

let exitCode = 0;
let ownServer: PostgresServer | undefined;
let redis: Redis | undefined;
const load = Child.start('./create-load.ts');
try {
  const loadReady = load.next('ready');
  loadReady.catch(() => {}); // awaited below; a failure before that must not go unhandled
  let backend = 'url';
  if (!process.env.PG_TEST_URL && process.env.PG_TEST_BACKEND !== 'testcontainers') {
    // The smoke run measures nothing: the test suite's throwaway settings start faster.
    ownServer = await PostgresServer.start({ settings: smoke ? {} : DURABLE });
    process.env.PG_TEST_URL = ownServer.url('postgres');
    backend = ownServer.binaries.source;
  } else if (process.env.PG_TEST_BACKEND === 'testcontainers') {
    backend = 'testcontainers';
  }
  // Redis' own errors surface in the Redis cell; this client only counts and removes keys.
  redis = new Redis(process.env.REDIS_URL ?? 'redis://127.0.0.1:6379', { lazyConnect: true });
  redis.on('error', () => {});
  const redisLine = await redis
    .connect()
    .then(() => redisFacts(redis as Redis))
    .catch((error: unknown) => `Redis unreachable (${String(error)})`);
  const probeDatabase = await createTestDatabase({ migrated: false });
  const facts = await serverFacts(probeDatabase.url).finally(() => probeDatabase.drop());
  const postmasterPid = ownServer?.pid ?? probeDatabase.server.process?.pid;
  log(`on ${facts.version} (${facts.settings}), ${redisLine}`);
  await loadReady;
  const cells: CreateCell[] = [];
  const crashed: string[] = [];
  for (let round = 1; round <= settings.rounds; round++) {
    for (const { kind, variant } of CELLS) {
      try {
        const cell = await runCell(kind, variant, round, load, redis, postmasterPid);
        cells.push(cell);
        log(
          `round ${round}, ${kind} ${variant}: ${Math.round(cell.okPerSecond)} 2xx/s, p50 ${cell.latencyMs.p50} ms, p99 ${cell.latencyMs.p99} ms` +
            (cell.fsyncsPerRequest === undefined
              ? ''
              : `, ${cell.fsyncsPerRequest.toFixed(2)} WAL fsyncs/request`) +
            `, ${cell.roundTripsPerRequest.toFixed(2)} round trips/request` +
            (cell.non2xx + cell.errors + cell.timeouts > 0
              ? `, ${cell.non2xx} non-2xx, ${cell.errors} errors, ${cell.timeouts} timeouts`
              : ''),
        );
      } catch (error) {
        const message = error instanceof Error ? error.message : String(error);
        crashed.push(`${kind} ${variant}, round ${round}: ${message}`);
        log(`round ${round}, ${kind} ${variant} FAILED: ${message}`);
      }
    }
  }
  const report: CreateReport = {
    smoke,
    command,
    at: new Date().toISOString(),
    elapsedSeconds: Math.round((Date.now() - startedAt) / 1000),
    machine: {
      cpus: availableParallelism(),
      cpuModel: cpus()[0]?.model.trim() ?? 'unknown',
      os: `${platform()} ${release()}`,
      node: process.version,
      postgres: facts.version,
      postgresSettings: facts.settings,
      postgresBackend: backend,
      redis: redisLine,
    },
    settings,
    cells,
  };
  // Only a full-length run is recorded in the tree; the smoke run writes to the temporary folder.
  const folder = smoke ? tmpdir() : here('./results');
  mkdirSync(folder, { recursive: true });
  const resultsFile = join(
    folder,
    smoke ? 'pg-sessions-bench-create-smoke.json' : 'create-latest.json',
  );
  await writeFile(resultsFile, `${JSON.stringify(report, null, 2)}\n`);
  log(`results: ${resultsFile}`);
  process.stdout.write(`${render(report)}\n`);
  const failed = [...crashed, ...failures(cells)];
  if (failed.length > 0) {
    log(`benchmark FAILED:\n${failed.map((line) => `- ${line}`).join('\n')}`);
    exitCode = 1;
  } else {
    log(`benchmark done in ${report.elapsedSeconds} s`);
  }
} catch (error) {
  log(`benchmark FAILED: ${error instanceof Error ? (error.stack ?? error.message) : error}`);
  exitCode = 1;
} finally {
  await load.stop();
  redis?.disconnect();
  await stopTestServer();
  await ownServer?.destroy();
}
process.exit(exitCode);
