// `npm run bench:citus`: the same middleware on a Citus coordinator (two workers, the
// tables distributed by session id: src/citus/distribute.ts) and on a plain PostgreSQL 15
// primary, in one run on one machine. Three parts:
//   kinds    over HTTP, each target behind its own in-process Koa app (port 0, defaults,
//            gc off), the request kinds one after the other, the targets alternating
//            (plain first in odd rounds, Citus first in even ones): `create` (a first visit
//            that writes), `read` (a cookie, no write: the cache answers), `read, cache off`
//            (the same on an app with `cache: false`: the database lookup), `write` (a
//            cookie, one key incremented). Requests/s, p50/p99 and the middleware's own
//            round trips per request (`middleware.metrics.snapshot()`).
//   routing  the write + create + read (cache off) mix on the coordinator with
//            `citus.multi_task_query_log_level = 'error'` set for the app role: a statement
//            that spans shards fails its request. Statements counted by pg_stat_statements
//            (coordinator and workers), the router / multi-shard split by Citus' own
//            counters (`citus_stat_counters`) and `citus_stat_statements`.
//   moves    clients each incrementing their own session's counter in a loop while the
//            shards holding those sessions move off worker 0 (`block_writes`), then back
//            (`force_logical`), then once more with `auto` (the default of the move, the
//            drain and the rebalancer); every response must be 200 and every session must
//            store exactly the increments its client saw succeed. A logical move whose
//            target keeps failing to apply would wait for ever: it is cancelled after three
//            failed applies (or 60 s), with what the target logged.
// Servers: Debian's PostgreSQL 15 (CITUS_BIN_DIR, else /usr/lib/postgresql/15/bin, where
// Citus 13 is installed), all four on 127.0.0.1 with the same settings: production
// durability (fsync on) and wal_level logical; the smoke run takes the fast ones (fsync off).
//
// Options: --requests <n> per measured cell (default 3000), --concurrency <n> clients (8),
// --rounds <n> of the kinds (2), --smoke (a tiny run: proves every part works, measures
// nothing, records nothing). Prints Markdown; a full run also writes it to the section
// "Citus: the coordinator beside a plain primary" of bench/RESULTS.md. Exits 1 when a
// request failed, a write was lost, a statement spanned shards or a move did not finish.
import { readFile, writeFile } from 'node:fs/promises';
import { Agent, request } from 'node:http';
import type { AddressInfo } from 'node:net';
import { availableParallelism, cpus, loadavg, platform, release } from 'node:os';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import Koa from 'koa';
import pg from 'pg';
import { distributeOnCitus } from '../src/citus/distribute.js';
import { type Logger, migrate, type SessionMiddleware, sessions } from '../src/index.js';
import {
  type CitusCluster,
  PostgresServer,
  resolveBinaries,
  startCitusCluster,
} from '../src/testing/index.js';
import { applySetCookie } from './cookie-jar.js';

const { values: args } = parseArgs({
  options: {
    smoke: { type: 'boolean', default: false },
    requests: { type: 'string' },
    concurrency: { type: 'string' },
    rounds: { type: 'string' },
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

interface CitusSettings {
  /** Measured requests per cell, after a warm-up that visits every session once. */
  readonly requests: number;
  readonly concurrency: number;
  readonly rounds: number;
  /** Sessions each client reads and writes in the kinds part (its own: never shared). */
  readonly sessionsPerClient: number;
  /** The load runs this long before the first move and after the last one, ms. */
  readonly settleMs: number;
}

const settings: CitusSettings = {
  requests: count('requests', args.requests, smoke ? 60 : 3000),
  concurrency: count('concurrency', args.concurrency, 8),
  rounds: count('rounds', args.rounds, smoke ? 1 : 2),
  sessionsPerClient: smoke ? 2 : 25,
  settleMs: smoke ? 300 : 1000,
};

const startedAt = Date.now();
const log = (line: string) =>
  process.stderr.write(`[${((Date.now() - startedAt) / 1000).toFixed(1)} s] ${line}\n`);
const delay = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
const extraArgs = process.argv.slice(2);
const command = `npm run bench:citus${extraArgs.length > 0 ? ` -- ${extraArgs.join(' ')}` : ''}`;
const SECTION = '## Citus: the coordinator beside a plain primary';
const BLOCK_START = '<!-- generated by npm run bench:citus -->';
const BLOCK_END = '<!-- end of generated citus -->';

/** Production durability, as the other benches; the smoke run measures nothing. */
const SERVER_SETTINGS: Readonly<Record<string, string>> = {
  ...(smoke ? {} : { fsync: 'on', full_page_writes: 'on', synchronous_commit: 'on' }),
  wal_level: 'logical',
  // To a file in the data folder, which the moves part reads back when a move fails.
  logging_collector: 'on',
};
/** Citus first: pg_stat_statements must load after it for citus_stat_statements. */
const CITUS_EXTRA: Readonly<Record<string, string>> = {
  shared_preload_libraries: 'citus,pg_stat_statements',
  'citus.stat_statements_track': 'all',
  'citus.enable_stat_counters': 'on',
};

// ---- Servers ----

async function sql<Row extends pg.QueryResultRow = pg.QueryResultRow>(
  url: string,
  text: string,
  values: unknown[] = [],
): Promise<Row[]> {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    return (await client.query<Row>(text, values)).rows;
  } finally {
    await client.end();
  }
}

/** `url` with the login role the app uses. */
function asApp(url: string): string {
  const parsed = new URL(url);
  parsed.username = 'app';
  return parsed.toString();
}

async function migrateUp(url: string): Promise<void> {
  const result = await migrate(url, 'up');
  if (result.exitCode !== 0) throw new Error(`migrate up failed on ${url}:\n${result.output}`);
}

/** Migrated, with the login role `app` in sessions_app; Citus also distributes. */
async function prepareTarget(adminUrl: string, citus: boolean): Promise<void> {
  await migrateUp(adminUrl);
  if (citus) {
    const client = new pg.Client({ connectionString: adminUrl });
    await client.connect();
    try {
      await distributeOnCitus(client);
    } finally {
      await client.end();
    }
  }
  await sql(adminUrl, 'CREATE ROLE app LOGIN IN ROLE sessions_app');
}

interface ServerFacts {
  readonly version: string;
  readonly settings: string;
}

async function serverFacts(url: string): Promise<ServerFacts> {
  const [row] = await sql<Record<string, string | null>>(
    url,
    `SELECT current_setting('server_version') AS version, current_setting('fsync') AS fsync,
            current_setting('synchronous_commit') AS commit, current_setting('wal_level') AS wal,
            current_setting('shared_buffers') AS buffers,
            (SELECT extversion FROM pg_catalog.pg_extension WHERE extname = 'citus') AS citus`,
  );
  return {
    version: `PostgreSQL ${row?.version ?? '?'}${row?.citus ? `, Citus ${row.citus}` : ''}`,
    settings: `fsync=${row?.fsync}, synchronous_commit=${row?.commit}, wal_level=${row?.wal}, shared_buffers=${row?.buffers}`,
  };
}

// ---- Apps and HTTP ----

/** What each app's middleware logged at warn and error, by the app's name. */
const appLogs: Record<string, string[]> = {};

/** A Koa app on 127.0.0.1 around one middleware, with what went wrong in it. */
interface App {
  readonly port: number;
  readonly middleware: SessionMiddleware;
  /** Errors that reached Koa (a failed request), described, in order. */
  readonly errors: string[];
  /** What the middleware logged at warn and error (off the request path too: touches). */
  readonly logged: string[];
  close(): Promise<void>;
}

/** The error and its causes in one line, with SQLSTATEs: what a failure report needs. */
function describe(error: unknown): string {
  const parts: string[] = [];
  let current: unknown = error;
  for (let depth = 0; current !== undefined && current !== null && depth < 4; depth++) {
    const { code, message } = current as { code?: unknown; message?: unknown };
    parts.push(`${typeof code === 'string' ? `[${code}] ` : ''}${String(message ?? current)}`);
    current = (current as { cause?: unknown }).cause;
  }
  return parts.join(' ← ');
}

/**
 * GET /create sets `n = 1` (without a cookie: a new session), /read reads `n`, /write
 * increments it, /count increments `moves` (the moves part's own key); each answers the
 * session's id and value.
 */
async function startApp(name: string, database: string, cache: boolean): Promise<App> {
  const errors: string[] = [];
  const logged: string[] = [];
  appLogs[name] = logged;
  const record = (level: string) => (fields: object, message: string) => {
    const { err } = fields as { err?: unknown };
    logged.push(`${level}: ${message}${err === undefined ? '' : `: ${describe(err)}`}`);
  };
  const logger: Logger = { debug() {}, info() {}, warn: record('warn'), error: record('error') };
  const middleware = sessions({
    database,
    gc: false,
    logger,
    ...(cache ? {} : { cache: false as const }),
  });
  const app = new Koa();
  app.keys = ['bench-citus-key-that-is-long-enough-to-sign'];
  app.silent = true;
  app.on('error', (error: unknown) => errors.push(describe(error)));
  app.use(middleware);
  app.use((ctx) => {
    const session = ctx.session!;
    if (ctx.path === '/create') session.n = 1;
    else if (ctx.path === '/write') session.n = Number(session.n ?? 0) + 1;
    else if (ctx.path === '/count') session.moves = Number(session.moves ?? 0) + 1;
    ctx.body = { id: ctx.sessions.id, n: session.n ?? null, moves: session.moves ?? null };
  });
  await middleware.start();
  const server = app.listen(0, '127.0.0.1');
  await new Promise<void>((resolve) => server.once('listening', resolve));
  return {
    port: (server.address() as AddressInfo).port,
    middleware,
    errors,
    logged,
    close: async () => {
      server.closeAllConnections();
      await new Promise((resolve) => server.close(resolve));
      await middleware.close();
    },
  };
}

/** Cookies by name, as a browser keeps them for one site. */
type Jar = Map<string, string>;

const agent = new Agent({ keepAlive: true, maxSockets: 256 });

interface Reply {
  readonly status: number;
  readonly body: string;
}

/** One GET over a kept-alive connection, sending `jar`'s cookies and keeping what it sets. */
function get(port: number, path: string, jar: Jar): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const cookie = [...jar].map(([name, value]) => `${name}=${value}`).join('; ');
    const outgoing = request(
      { host: '127.0.0.1', port, path, agent, headers: cookie ? { cookie } : {} },
      (response) => {
        let body = '';
        response.setEncoding('utf8');
        response.on('data', (chunk: string) => {
          body += chunk;
        });
        response.on('end', () => {
          for (const line of response.headers['set-cookie'] ?? []) applySetCookie(jar, line);
          resolve({ status: response.statusCode ?? 0, body });
        });
        response.on('error', reject);
      },
    );
    outgoing.setTimeout(30_000, () => outgoing.destroy(new Error('no answer in 30 s')));
    outgoing.on('error', reject);
    outgoing.end();
  });
}

/** One request as the client saw it. */
interface Sample {
  /** performance.now() when it was sent, and its latency, ms. */
  readonly sentAt: number;
  readonly ms: number;
  readonly ok: boolean;
}

/** A request, timed; `ok` is a 200 that `check` accepts, never a throw. */
async function timed(
  port: number,
  path: string,
  jar: Jar,
  check: (reply: Reply) => boolean = () => true,
): Promise<Sample & { reply?: Reply; failure?: string }> {
  const sentAt = performance.now();
  try {
    const reply = await get(port, path, jar);
    const ok = reply.status === 200 && check(reply);
    return {
      sentAt,
      ms: performance.now() - sentAt,
      ok,
      reply,
      ...(ok ? {} : { failure: `${path}: ${reply.status} ${reply.body.slice(0, 200)}` }),
    };
  } catch (error) {
    return {
      sentAt,
      ms: performance.now() - sentAt,
      ok: false,
      failure: `${path}: ${describe(error)}`,
    };
  }
}

/** `clients` loops in parallel, each running `work(client)` until it returns false. */
async function runClients(
  clients: number,
  work: (client: number) => Promise<boolean>,
): Promise<void> {
  await Promise.all(
    Array.from({ length: clients }, async (_, client) => {
      while (await work(client)) {}
    }),
  );
}

/** New sessions through `app`, `perClient` per client, each client's own in its slice. */
async function createSessions(app: App, clients: number, perClient: number): Promise<Jar[][]> {
  const jars: Jar[][] = Array.from({ length: clients }, () => []);
  await runClients(clients, async (client) => {
    const own = jars[client]!;
    if (own.length >= perClient) return false;
    const jar: Jar = new Map();
    const sample = await timed(app.port, '/create', jar, () => jar.size > 0);
    if (!sample.ok) throw new Error(`creating a session failed: ${sample.failure}`);
    own.push(jar);
    return true;
  });
  return jars;
}

function percentile(sorted: readonly number[], share: number): number {
  if (sorted.length === 0) return Number.NaN;
  return sorted[Math.min(sorted.length - 1, Math.ceil(share * sorted.length) - 1)] ?? Number.NaN;
}

// ---- Part 1: the request kinds ----

const KINDS = ['create', 'read', 'read-nocache', 'write'] as const;
type Kind = (typeof KINDS)[number];
const TARGETS = ['plain', 'citus'] as const;
type TargetName = (typeof TARGETS)[number];

const KIND_LABELS: Record<Kind, string> = {
  create: 'create (first visit, writes)',
  read: 'read (cache on)',
  'read-nocache': 'read, `cache: false`',
  write: 'write (one key)',
};
const TARGET_LABELS: Record<TargetName, string> = {
  plain: 'plain PostgreSQL 15',
  citus: 'Citus coordinator + 2 workers',
};

interface Target {
  readonly name: TargetName;
  readonly cached: App;
  readonly uncached: App;
  /** Sessions created before the cells, each client's own slice. */
  readonly sessions: Jar[][];
}

interface KindCell {
  readonly kind: Kind;
  readonly target: TargetName;
  readonly round: number;
  readonly requests: number;
  readonly failed: number;
  readonly perSecond: number;
  readonly p50: number;
  readonly p99: number;
  readonly roundTripsPerRequest: number;
  /** The first few failures, as the client and Koa saw them. */
  readonly failures: readonly string[];
}

async function runKindCell(target: Target, kind: Kind, round: number): Promise<KindCell> {
  const app = kind === 'read-nocache' ? target.uncached : target.cached;
  const path = kind === 'create' ? '/create' : kind === 'write' ? '/write' : '/read';
  const { concurrency, requests } = settings;
  const failures: string[] = [];
  const errorsBefore = app.errors.length;
  const once = async (client: number, turn: number) => {
    const own = target.sessions[client]!;
    const jar: Jar = kind === 'create' ? new Map() : own[turn % own.length]!;
    const sample = await timed(app.port, path, jar, () => kind !== 'create' || jar.size > 0);
    if (!sample.ok && failures.length < 5 && sample.failure) failures.push(sample.failure);
    return sample;
  };
  // Warm-up: every session once (the cache and the pools fill), not measured.
  await runClients(concurrency, async (client) => {
    for (let turn = 0; turn < settings.sessionsPerClient; turn++) await once(client, turn);
    return false;
  });
  const before = app.middleware.metrics.snapshot();
  const samples: Sample[] = [];
  let issued = 0;
  const turns = new Array<number>(concurrency).fill(0);
  const began = performance.now();
  await runClients(concurrency, async (client) => {
    if (issued >= requests) return false;
    issued++;
    const turn = turns[client]!++;
    samples.push(await once(client, turn));
    return true;
  });
  const seconds = (performance.now() - began) / 1000;
  const after = app.middleware.metrics.snapshot();
  const handled = after.requests - before.requests;
  const latencies = samples.map((sample) => sample.ms).sort((a, b) => a - b);
  failures.push(...app.errors.slice(errorsBefore, errorsBefore + 5));
  return {
    kind,
    target: target.name,
    round,
    requests: samples.length,
    failed: samples.filter((sample) => !sample.ok).length,
    perSecond: samples.length / seconds,
    p50: percentile(latencies, 0.5),
    p99: percentile(latencies, 0.99),
    roundTripsPerRequest:
      handled > 0 ? (after.roundTrips - before.roundTrips) / handled : Number.NaN,
    failures,
  };
}

// ---- Part 2: routing ----

interface StatementRow {
  readonly query: string;
  readonly calls: number;
}

interface RoutingResult {
  readonly requests: number;
  readonly failed: number;
  readonly failures: readonly string[];
  /** The app role's setting as a fresh connection of it sees it. */
  readonly guard: string;
  /** What a statement spanning shards does under that setting (the guard proven armed). */
  readonly guardProbe: string;
  /** The middleware's own count of round trips over the mix. */
  readonly roundTrips: number;
  /** pg_stat_statements on the coordinator, the app role's statements. */
  readonly coordinatorStatements: readonly StatementRow[];
  /** pg_stat_statements on each worker, the app role's statements (what ran there). */
  readonly workerStatements: readonly (readonly StatementRow[])[];
  /** citus_stat_counters over the cluster: Citus' own executions, by shard count. */
  readonly counters: {
    readonly node: string;
    readonly singleShard: number;
    readonly multiShard: number;
  }[];
  /** citus_stat_statements on the coordinator, by statement: calls with a distribution-key value, without. */
  readonly citusStatements: {
    readonly query: string;
    readonly executor: string;
    readonly withKey: number;
    readonly withoutKey: number;
  }[];
}

const STATEMENTS_BY_APP = `SELECT regexp_replace(query, '\\s+', ' ', 'g') AS query, sum(calls)::int AS calls
   FROM pg_stat_statements WHERE userid = 'app'::regrole GROUP BY 1 ORDER BY 2 DESC, 1`;

async function runRouting(cluster: CitusCluster): Promise<RoutingResult> {
  const nodes = [cluster.url(), ...cluster.workers.map((_, index) => cluster.workerUrl(index))];
  await cluster.sql(`ALTER ROLE app SET citus.multi_task_query_log_level = 'error'`);
  const appUrl = asApp(cluster.url());
  const [shown] = await sql<{ level: string }>(appUrl, 'SELECT current_setting($1) AS level', [
    'citus.multi_task_query_log_level',
  ]);
  const guardProbe = await sql(appUrl, 'SELECT count(*) FROM sessions.session').then(
    () => 'a multi-shard SELECT count(*) ran (the guard is not armed)',
    (error: unknown) => describe(error),
  );
  // Created after the setting: every connection of its pool has it.
  const app = await startApp('citus, the routing mix (cache off)', appUrl, false);
  try {
    // On the coordinator only: Citus creates it on the workers (and refuses it there).
    await cluster.sql('CREATE EXTENSION IF NOT EXISTS pg_stat_statements');
    for (const url of nodes) {
      await sql(url, 'SELECT pg_stat_statements_reset()');
      await sql(url, 'SELECT citus_stat_counters_reset()');
    }
    await cluster.sql('SELECT citus_stat_statements_reset()');
    const before = app.middleware.metrics.snapshot();
    const failures: string[] = [];
    const errorsBefore = app.errors.length;
    // Each client: a first visit (kept as its own session), then write, create, read in turn.
    const own: Jar[] = Array.from({ length: settings.concurrency }, () => new Map());
    const turns = new Array<number>(settings.concurrency).fill(0);
    let issued = 0;
    let failed = 0;
    await runClients(settings.concurrency, async (client) => {
      if (issued >= settings.requests) return false;
      issued++;
      const turn = turns[client]!++;
      const jar = own[client]!;
      const step = turn === 0 ? 'create' : (['write', 'create', 'read'] as const)[(turn - 1) % 3]!;
      const sample =
        step === 'create'
          ? await timed(app.port, '/create', turn === 0 ? jar : new Map())
          : await timed(app.port, step === 'write' ? '/write' : '/read', jar);
      if (!sample.ok) {
        failed++;
        if (failures.length < 5 && sample.failure) failures.push(sample.failure);
      }
      return true;
    });
    const after = app.middleware.metrics.snapshot();
    failures.push(...new Set(app.errors.slice(errorsBefore)));
    const coordinatorStatements = await sql<StatementRow>(nodes[0]!, STATEMENTS_BY_APP);
    const workerStatements = await Promise.all(
      nodes.slice(1).map((url) => sql<StatementRow>(url, STATEMENTS_BY_APP)),
    );
    const counters = await Promise.all(
      nodes.map(async (url, index) => {
        const [row] = await sql<{ single: number; multi: number }>(
          url,
          `SELECT query_execution_single_shard::int AS single, query_execution_multi_shard::int AS multi
             FROM citus_stat_counters WHERE name = current_database()`,
        );
        return {
          node: index === 0 ? 'coordinator' : `worker ${index - 1}`,
          singleShard: row?.single ?? Number.NaN,
          multiShard: row?.multi ?? Number.NaN,
        };
      }),
    );
    const citusStatements = await cluster.sql<RoutingResult['citusStatements'][number]>(
      `SELECT regexp_replace(query, '\\s+', ' ', 'g') AS query, executor::text AS executor,
              (sum(calls) FILTER (WHERE partition_key IS NOT NULL))::int AS "withKey",
              (sum(calls) FILTER (WHERE partition_key IS NULL))::int AS "withoutKey"
         FROM citus_stat_statements WHERE userid = 'app'::regrole GROUP BY 1, 2 ORDER BY 1`,
    );
    return {
      requests: issued,
      failed,
      failures,
      guard: shown?.level ?? '?',
      guardProbe,
      roundTrips: after.roundTrips - before.roundTrips,
      coordinatorStatements,
      workerStatements,
      counters,
      citusStatements: citusStatements.map((row) => ({
        ...row,
        withKey: row.withKey ?? 0,
        withoutKey: row.withoutKey ?? 0,
      })),
    };
  } finally {
    await app.close();
    await cluster.sql('ALTER ROLE app RESET citus.multi_task_query_log_level');
  }
}

// ---- Part 3: shard moves under load ----

/** `auto`, the default of citus_move_shard_placement, citus_drain_node and the rebalancer, last. */
const TRANSFER_MODES = ['block_writes', 'force_logical', 'auto'] as const;
type TransferMode = (typeof TRANSFER_MODES)[number];

interface MoveRun {
  readonly mode: TransferMode;
  /** Which way the shards went, e.g. `worker 0 → worker 1`. */
  readonly direction: string;
  /** Each move's duration, ms (a shard group: its sessions.session shard and the co-located ones). */
  readonly movesMs: readonly number[];
  /** Shards this mode was asked to move, and how many it moved. */
  readonly planned: number;
  readonly moved: number;
  /** Why a move did not finish (it was cancelled, or failed), with what the target logged. */
  readonly stopped?: string;
  /** Requests in flight at some point while a move ran, the slowest and the failed of them. */
  readonly requestsDuring: number;
  readonly maxLatencyMs: number;
  readonly failedDuring: number;
  /** How long each of those failed requests took, ms (a write that waited for the move shows it). */
  readonly failedLatenciesMs: readonly number[];
  /** Statements the middleware sent again because their shard was moving (`shardMoveRetries`). */
  readonly retries: number;
  /** Distinct errors of the failed requests, as Koa saw them. */
  readonly errors: readonly string[];
}

interface MoveResult {
  readonly clients: number;
  /** Shards of sessions.session moved (with their co-located shards), and the clients' sessions they held. */
  readonly shards: readonly number[];
  readonly sessionsMoved: number;
  readonly runs: readonly MoveRun[];
  readonly requests: number;
  readonly ok: number;
  readonly failed: number;
  readonly failures: readonly string[];
  /** Sessions whose stored counter differs from the 200s their client got. */
  readonly mismatches: readonly string[];
  /** Increments acknowledged (200) in all, and stored in all. */
  readonly acknowledged: number;
  readonly stored: number;
  /** The load's p50 and max latency over the whole part, ms. */
  readonly p50: number;
  readonly maxLatencyMs: number;
}

interface NodeAddress {
  readonly name: string;
  readonly port: number;
}

/** A move gets this long, and its subscription this many failed applies, before it is cancelled. */
const MOVE_TIMEOUT_MS = 60_000;
const MOVE_APPLY_ERRORS = 3;

/** How far a node's server log (the logging collector's file) goes now, in bytes. */
async function logSize(url: string): Promise<number> {
  const [found] = await sql<{ size: string }>(
    url,
    'SELECT (pg_stat_file(pg_current_logfile())).size::text AS size',
  ).catch(() => []);
  return Number(found?.size ?? 0);
}

/** The ERROR lines a node logged after `offset` that match `pattern`, distinct. */
async function loggedErrors(url: string, offset: number, pattern: string): Promise<string[]> {
  const rows = await sql<{ line: string }>(
    url,
    `SELECT DISTINCT regexp_replace(line, '^.*ERROR:\\s*', '') AS line
       FROM regexp_split_to_table(pg_read_file(pg_current_logfile(), $1, 100000000), E'\\n') AS line
      WHERE line ~ 'ERROR:' AND line ~ $2`,
    [offset, pattern],
  ).catch(() => []);
  return rows.map((found) => found.line);
}

/**
 * One citus_move_shard_placement, watched: a logical move whose subscription keeps failing
 * to apply would wait for it for ever, so it is cancelled after a few failures (or the
 * timeout) with what the target logged. Resolves to the error when the move did not finish.
 */
async function moveShard(
  cluster: CitusCluster,
  shard: number,
  from: NodeAddress,
  to: NodeAddress,
  mode: TransferMode,
  targetUrl: string,
): Promise<string | undefined> {
  const client = new pg.Client({ connectionString: cluster.url() });
  await client.connect();
  let cancelled: string | undefined;
  const logFrom = await logSize(targetUrl);
  const began = performance.now();
  try {
    const [me] = (await client.query<{ pid: number }>('SELECT pg_backend_pid() AS pid')).rows;
    const watch = setInterval(async () => {
      if (cancelled) return;
      const [stats] = await sql<{ errors: number }>(
        targetUrl,
        `SELECT coalesce(sum(apply_error_count + sync_error_count), 0)::int AS errors
           FROM pg_stat_subscription_stats WHERE subname LIKE 'citus_shard_move_subscription%'`,
      ).catch(() => []);
      const errors = stats?.errors ?? 0;
      const late = performance.now() - began > MOVE_TIMEOUT_MS;
      if (errors >= MOVE_APPLY_ERRORS || late) {
        cancelled = late
          ? `no end after ${MOVE_TIMEOUT_MS / 1000} s (${errors} failed applies on the target)`
          : `the target's subscription failed to apply ${errors} times`;
        await cluster.sql('SELECT pg_cancel_backend($1::int)', [me?.pid]).catch(() => {});
      }
    }, 1000);
    try {
      await client.query(
        `SELECT citus_move_shard_placement($1, $2, $3, $4, $5, shard_transfer_mode := '${mode}')`,
        [shard, from.name, from.port, to.name, to.port],
      );
      return undefined;
    } catch (error) {
      const logged = await loggedErrors(targetUrl, logFrom, 'replicat|subscription');
      return `${cancelled ?? describe(error)}${logged.length > 0 ? `; the target logged: ${logged.slice(0, 3).join(' / ')}` : ''}`;
    } finally {
      clearInterval(watch);
    }
  } finally {
    await client.end();
  }
}

async function runMoves(cluster: CitusCluster): Promise<MoveResult> {
  const node = async (port: number): Promise<NodeAddress> => {
    const [found] = await cluster.sql<{ name: string; port: number }>(
      'SELECT nodename AS name, nodeport AS port FROM pg_dist_node WHERE nodeport = $1',
      [port],
    );
    if (!found) throw new Error(`no node on port ${port} in pg_dist_node`);
    return found;
  };
  const worker0 = await node(cluster.workers[0]!.port);
  const worker1 = await node(cluster.workers[1]!.port);
  const app = await startApp('citus, the moves (cache on)', asApp(cluster.url()), true);
  const clients = settings.concurrency;
  const jars: Jar[] = Array.from({ length: clients }, () => new Map());
  const acknowledged = new Array<number>(clients).fill(0);
  const ids: (string | undefined)[] = new Array(clients).fill(undefined);
  const samples: Sample[] = [];
  const failures: string[] = [];
  let running = true;
  try {
    const step = async (client: number) => {
      const sample = await timed(app.port, '/count', jars[client]!);
      samples.push(sample);
      if (sample.ok && sample.reply) {
        acknowledged[client]!++;
        ids[client] ??= (JSON.parse(sample.reply.body) as { id: string }).id;
      } else if (failures.length < 5 && sample.failure) {
        failures.push(sample.failure);
      }
    };
    // Each client's session first, so that the shards to move are known.
    await Promise.all(jars.map((_, client) => step(client)));
    const shards = (
      await cluster.sql<{ shardid: string }>(
        `SELECT DISTINCT p.shardid::text AS shardid FROM sessions.session s
           JOIN pg_dist_placement p ON p.shardid = get_shard_id_for_distribution_column('sessions.session', s.id)
           JOIN pg_dist_node n ON n.groupid = p.groupid
          WHERE s.data ? 'moves' AND n.nodeport = $1 ORDER BY 1`,
        [worker0.port],
      )
    ).map((found) => Number(found.shardid));
    if (shards.length === 0) {
      // All the clients' sessions landed on worker 1: move one of worker 0's shards anyway.
      const [any] = await cluster.sql<{ shardid: string }>(
        `SELECT shardid::text AS shardid FROM citus_shards
          WHERE table_name = 'sessions.session'::regclass AND nodeport = $1 ORDER BY 1 LIMIT 1`,
        [worker0.port],
      );
      if (any) shards.push(Number(any.shardid));
    }
    const [held] = await cluster.sql<{ n: number }>(
      `SELECT count(*)::int AS n FROM sessions.session
        WHERE data ? 'moves' AND get_shard_id_for_distribution_column('sessions.session', id) = ANY($1)`,
      [shards],
    );
    const load = runClients(clients, async (client) => {
      if (!running) return false;
      await step(client);
      return true;
    });
    const runs: MoveRun[] = [];
    try {
      await delay(settings.settleMs);
      const workers = [
        { label: 'worker 0', node: worker0, url: cluster.workerUrl(0) },
        { label: 'worker 1', node: worker1, url: cluster.workerUrl(1) },
      ];
      /** The worker holding `shard` now, and the other one. */
      const ends = async (shard: number) => {
        const [found] = await cluster.sql<{ port: number }>(
          'SELECT nodeport AS port FROM citus_shards WHERE shardid = $1',
          [shard],
        );
        const at = workers.findIndex((worker) => worker.node.port === found?.port);
        if (at < 0) throw new Error(`shard ${shard} is on no known worker`);
        return { from: workers[at]!, to: workers[1 - at]! };
      };
      // Each mode moves every shard to the worker it is not on: block_writes off worker 0,
      // the next mode back (when the previous one moved them).
      for (const mode of TRANSFER_MODES) {
        // The placements a move leaves behind are dropped later; the move back needs them gone.
        await cluster.sql('CALL citus_cleanup_orphaned_resources()');
        const errorsBefore = app.errors.length;
        const retriesBefore = app.middleware.metrics.snapshot().shardMoveRetries;
        const windows: [number, number][] = [];
        const directions = new Set<string>();
        let stopped: string | undefined;
        for (const shard of shards) {
          const { from, to } = await ends(shard);
          directions.add(`${from.label} → ${to.label}`);
          const began = performance.now();
          stopped = await moveShard(cluster, shard, from.node, to.node, mode, to.url);
          windows.push([began, performance.now()]);
          if (stopped) break;
        }
        const during = samples.filter((sample) =>
          windows.some(([start, end]) => sample.sentAt < end && sample.sentAt + sample.ms > start),
        );
        const failedDuring = during.filter((sample) => !sample.ok);
        const retriesAfter = app.middleware.metrics.snapshot().shardMoveRetries;
        const run: MoveRun = {
          mode,
          direction: [...directions].join(', '),
          movesMs: windows.map(([start, end]) => end - start),
          planned: shards.length,
          moved: stopped ? windows.length - 1 : windows.length,
          ...(stopped ? { stopped } : {}),
          requestsDuring: during.length,
          maxLatencyMs: Math.max(0, ...during.map((sample) => sample.ms)),
          failedDuring: failedDuring.length,
          failedLatenciesMs: failedDuring.map((sample) => sample.ms),
          retries: retriesAfter - retriesBefore,
          errors: [...new Set(app.errors.slice(errorsBefore))],
        };
        runs.push(run);
        log(
          `moves ${mode}: ${run.moved} of ${run.planned} shard group(s) in ${run.movesMs.map((ms) => ms.toFixed(0)).join(', ')} ms; ${run.requestsDuring} requests meanwhile, slowest ${run.maxLatencyMs.toFixed(0)} ms, ${run.failedDuring} failed, ${run.retries} retried${stopped ? `; STOPPED: ${stopped}` : ''}`,
        );
        await delay(settings.settleMs);
      }
    } finally {
      running = false;
      await load;
    }
    const stored = await cluster.sql<{ id: string; moves: number }>(
      `SELECT id::text AS id, (data->>'moves')::int AS moves FROM sessions.session WHERE data ? 'moves'`,
    );
    const byId = new Map(stored.map((found) => [found.id, found.moves]));
    const mismatches: string[] = [];
    for (let client = 0; client < clients; client++) {
      const id = ids[client];
      const value = id === undefined ? undefined : byId.get(id);
      if (value !== acknowledged[client]) {
        mismatches.push(
          `client ${client} (session ${id ?? '?'}): ${acknowledged[client]} increments answered 200, ${value ?? 'none'} stored`,
        );
      }
    }
    const latencies = samples.map((sample) => sample.ms).sort((a, b) => a - b);
    failures.push(...new Set(app.errors));
    return {
      clients,
      shards,
      sessionsMoved: held?.n ?? 0,
      runs,
      requests: samples.length,
      ok: samples.filter((sample) => sample.ok).length,
      failed: samples.filter((sample) => !sample.ok).length,
      failures: [...new Set(failures)],
      mismatches,
      acknowledged: acknowledged.reduce((sum, value) => sum + value, 0),
      stored: stored.reduce((sum, found) => sum + found.moves, 0),
      p50: percentile(latencies, 0.5),
      maxLatencyMs: latencies.at(-1) ?? Number.NaN,
    };
  } finally {
    running = false;
    await app.close();
    await cluster.sql('CALL citus_cleanup_orphaned_resources()').catch(() => {});
  }
}

// ---- Report ----

interface CitusReport {
  readonly smoke: boolean;
  readonly command: string;
  readonly at: string;
  readonly elapsedSeconds: number;
  readonly machine: string;
  /** The machine's 1-minute load average when the servers were ready and at the end (others' work shows here). */
  readonly loadAverage: readonly [number, number];
  readonly plain: ServerFacts;
  readonly citus: ServerFacts;
  readonly settings: CitusSettings;
  readonly cells: readonly KindCell[];
  readonly routing?: RoutingResult;
  readonly moves?: MoveResult;
  /** What the middleware logged at warn or error, per target (touch flushes and the like). */
  readonly logged: Readonly<Record<string, readonly string[]>>;
  /** Parts that threw, with the error. */
  readonly crashed: readonly string[];
}

/** Everything that means the run did not show what it claims; empty when all is well. */
function problems(report: CitusReport): string[] {
  const found = [...report.crashed];
  for (const cell of report.cells) {
    if (cell.failed > 0) {
      found.push(
        `${cell.kind} on ${cell.target}, round ${cell.round}: ${cell.failed} of ${cell.requests} requests failed (${cell.failures.join('; ')})`,
      );
    }
  }
  const { routing, moves } = report;
  if (routing && routing.failed > 0) {
    found.push(`routing mix: ${routing.failed} requests failed (${routing.failures.join('; ')})`);
  }
  if (routing?.counters.some((counter) => counter.multiShard > 0)) {
    found.push('routing mix: Citus counted multi-shard executions');
  }
  if (moves && moves.failed > 0) {
    found.push(`moves: ${moves.failed} requests failed (${moves.failures.join('; ')})`);
  }
  for (const run of moves?.runs ?? []) {
    // A logical transfer that PostgreSQL refuses to apply into tables that force
    // row-level security is the documented limit (docs/scaling.md), not a regression.
    const documented = run.mode !== 'block_writes' && /row-level security/.test(run.stopped ?? '');
    if (run.stopped && !documented) found.push(`moves, ${run.mode}: ${run.stopped}`);
  }
  if (moves && moves.mismatches.length > 0) found.push(`moves: ${moves.mismatches.join('; ')}`);
  return found;
}

const mean = (values: readonly number[]) =>
  values.reduce((sum, value) => sum + value, 0) / Math.max(values.length, 1);
const fixed = (value: number, digits: number) =>
  Number.isFinite(value)
    ? value.toLocaleString('en-US', {
        minimumFractionDigits: digits,
        maximumFractionDigits: digits,
      })
    : '—';
/** `lowest–highest` over the rounds (one value when they agree). */
function range(values: readonly number[], digits: number): string {
  if (values.length === 0) return '—';
  const low = fixed(Math.min(...values), digits);
  const high = fixed(Math.max(...values), digits);
  return low === high ? low : `${low}–${high}`;
}
const row = (values: readonly (string | number)[]) => `| ${values.join(' | ')} |`;
const shorten = (query: string, length = 110) =>
  `\`${(query.length > length ? `${query.slice(0, length)}…` : query).replaceAll('|', '\\|')}\``;

function render(report: CitusReport): string {
  const s = report.settings;
  const when = `${report.at.slice(0, 16).replace('T', ' ')} UTC`;
  const lines = [
    `\`${report.command}\` — ${when}, ${report.elapsedSeconds} s in all${report.smoke ? ' (smoke: measures nothing)' : ''}.`,
    '',
    `Machine: ${report.machine}; 1-minute load average ${fixed(report.loadAverage[0], 1)} when the servers were ready, ${fixed(report.loadAverage[1], 1)} at the end. Both targets on it with the app and the load: ${report.plain.version} (${report.plain.settings}); ${report.citus.version}, a coordinator and 2 workers, each a server of its own with the same settings plus Citus' own (\`citus\` and \`pg_stat_statements\` preloaded, \`citus.stat_statements_track = all\`, \`citus.enable_stat_counters = on\`, \`max_prepared_transactions = 100\`), the tables distributed by session id in 32 shards (\`distributeOnCitus\`), the request-path functions delegated to the worker of their session.`,
    '',
    '### Request kinds',
    '',
    `Each target behind its own Koa app in this process (\`sessions({ database, gc: false })\`, the role \`app\` in \`sessions_app\`), over HTTP on 127.0.0.1 with kept-alive connections; the load runs in the same process. ${s.concurrency} clients, ${s.requests} measured requests per cell after a warm-up that visits each of the ${s.concurrency * s.sessionsPerClient} sessions once (a client only ever uses its own ${s.sessionsPerClient}); ${s.rounds} round${s.rounds === 1 ? '' : 's'}, the targets alternating. Requests/s: the mean over the rounds; p50/p99: lowest–highest over the rounds; round trips: the middleware's own counter (\`metrics.snapshot().roundTrips\` over \`requests\`). On the plain primary concurrent creations and saves share a transaction (the write batcher: about one round trip per ${s.concurrency} writes with ${s.concurrency} clients); on Citus the batcher is off (src/db/runner.ts) and each is one round trip, a delegated function call.`,
    '',
    '| request | target | requests/s | p50 ms | p99 ms | DB round trips / request | failed |',
    '| --- | --- | ---: | ---: | ---: | ---: | ---: |',
  ];
  for (const kind of KINDS) {
    const perTarget = new Map<TargetName, number>();
    for (const target of TARGETS) {
      const cells = report.cells.filter((cell) => cell.kind === kind && cell.target === target);
      if (cells.length === 0) continue;
      perTarget.set(target, mean(cells.map((cell) => cell.perSecond)));
      lines.push(
        row([
          KIND_LABELS[kind],
          TARGET_LABELS[target],
          fixed(mean(cells.map((cell) => cell.perSecond)), 0),
          range(
            cells.map((cell) => cell.p50),
            2,
          ),
          range(
            cells.map((cell) => cell.p99),
            2,
          ),
          fixed(mean(cells.map((cell) => cell.roundTripsPerRequest)), 2),
          cells.reduce((sum, cell) => sum + cell.failed, 0),
        ]),
      );
    }
    const plain = perTarget.get('plain');
    const citus = perTarget.get('citus');
    if (plain && citus) {
      lines.push(row([`↳ Citus / plain`, '', `${fixed(citus / plain, 2)}×`, '', '', '', '']));
    }
  }
  const { routing, moves } = report;
  if (routing) {
    const total = (rows: readonly StatementRow[]) => rows.reduce((sum, r) => sum + r.calls, 0);
    const coordinator = routing.counters[0];
    const functionCalls = total(
      routing.coordinatorStatements.filter((r) => /sessions\.\w+\(/.test(r.query)),
    );
    const keyless = routing.citusStatements
      .filter((entry) => /sessions\.\w+\(/.test(entry.query))
      .every((entry) => entry.withKey === 0);
    const routed =
      coordinator && coordinator.singleShard + coordinator.multiShard > 0
        ? coordinator.singleShard / (coordinator.singleShard + coordinator.multiShard)
        : Number.NaN;
    lines.push(
      '',
      '### Where the request-path statements ran',
      '',
      `The mix on the coordinator, on a fresh app with \`cache: false\` (every read goes to the database): each of ${s.concurrency} clients makes a first visit, then repeats write, create, read; ${routing.requests} requests in all, **${routing.failed} failed**. \`ALTER ROLE app SET citus.multi_task_query_log_level = 'error'\` came before the app started: a new connection of the role shows \`${routing.guard}\`, and a statement that spans shards fails under it (probe as \`app\`: \`SELECT count(*) FROM sessions.session\` → ${routing.guardProbe.replaceAll('|', '\\|')}). The middleware counted ${routing.roundTrips} round trips (${fixed(routing.roundTrips / Math.max(routing.requests, 1), 2)} per request: a write with the cache off is a lookup and a save).`,
      '',
      `Citus' own count of the distributed executions it ran (\`citus_stat_counters\`, \`citus.enable_stat_counters = on\`, reset before the mix): on the coordinator ${fixed(routed * 100, 1)} % single-shard. Its single-shard executions (${coordinator?.singleShard ?? '?'}) are the request-path function calls it received (${functionCalls}), each sent whole to the worker of its session; on the workers, the statements inside those functions, on local shards.`,
      '',
      '| node | single-shard executions | multi-shard executions |',
      '| --- | ---: | ---: |',
      ...routing.counters.map((counter) =>
        row([counter.node, counter.singleShard, counter.multiShard]),
      ),
      '',
      `The app role's statements on the coordinator (pg_stat_statements, ${total(routing.coordinatorStatements)} in all, each statement of a multi-statement message counted on its own), with what \`citus_stat_statements\` recorded for them: the executor, and the calls it recorded with a distribution-key value (a router query) or without one.${keyless ? ' It recorded no key for any delegated function call here, though each ran on one worker: that column cannot tell a delegated call from a multi-shard one, which is why the counters above are the measure.' : ''}`,
      '',
      '| statement | calls | executor | with a key | without |',
      '| --- | ---: | --- | ---: | ---: |',
    );
    const citusByQuery = new Map<
      string,
      { executor: string; withKey: number; withoutKey: number }
    >();
    for (const entry of routing.citusStatements) {
      const known = citusByQuery.get(entry.query);
      citusByQuery.set(entry.query, {
        executor: known ? `${known.executor}, ${entry.executor}` : entry.executor,
        withKey: (known?.withKey ?? 0) + entry.withKey,
        withoutKey: (known?.withoutKey ?? 0) + entry.withoutKey,
      });
    }
    for (const statement of routing.coordinatorStatements) {
      const split = citusByQuery.get(statement.query);
      lines.push(
        row([
          shorten(statement.query),
          statement.calls,
          split?.executor ?? '—',
          split?.withKey ?? '—',
          split?.withoutKey ?? '—',
        ]),
      );
    }
    for (const entry of routing.citusStatements) {
      if (routing.coordinatorStatements.some((r) => r.query === entry.query)) continue;
      lines.push(
        row([
          `${shorten(entry.query)} (only in citus_stat_statements)`,
          '—',
          entry.executor,
          entry.withKey,
          entry.withoutKey,
        ]),
      );
    }
    const workerQueries = new Map<string, number[]>();
    routing.workerStatements.forEach((rows, index) => {
      for (const r of rows) {
        const calls = workerQueries.get(r.query) ?? routing.workerStatements.map(() => 0);
        calls[index] = (calls[index] ?? 0) + r.calls;
        workerQueries.set(r.query, calls);
      }
    });
    lines.push(
      '',
      `What the workers ran for the role (pg_stat_statements on each, top-level statements: ${routing.workerStatements.map((rows, index) => `${total(rows)} on worker ${index}`).join(', ')}), the most frequent:`,
      '',
      `| statement as the worker received it | ${routing.workerStatements.map((_, index) => `worker ${index}`).join(' | ')} |`,
      `| --- | ${routing.workerStatements.map(() => '---:').join(' | ')} |`,
      ...[...workerQueries]
        .sort(([, a], [, b]) => b.reduce((x, y) => x + y, 0) - a.reduce((x, y) => x + y, 0))
        .slice(0, 10)
        .map(([query, calls]) => {
          // The function call is what tells the rows apart; its column list is long.
          const call = /FROM (sessions\.\w+)\(/.exec(query)?.[1];
          return row([call ? `\`SELECT … FROM ${call}(…)\`` : shorten(query, 90), ...calls]);
        }),
    );
  }
  if (moves) {
    lines.push(
      '',
      '### Shard moves under load',
      '',
      `${moves.clients} clients, each incrementing its own session's counter (\`GET /count\`, cache on) in a loop, counting its 200s. The shards of \`sessions.session\` on worker 0 holding any of those sessions (${moves.shards.length}: ${moves.shards.join(', ')}, with ${moves.sessionsMoved} of the ${moves.clients} sessions; each moves with its co-located \`previous_token\` and \`event\` shards) moved one after the other to the worker they were not on, with each transfer mode in turn: \`block_writes\` (off worker 0), \`force_logical\` (back, when they moved), then \`auto\` (the default of \`citus_move_shard_placement\`, \`citus_drain_node\` and the rebalancer: logical replication when the tables have a replica identity, as these do); ${s.settleMs} ms of load before, between and after. A move whose target's subscription failed to apply ${MOVE_APPLY_ERRORS} times (or that ran ${MOVE_TIMEOUT_MS / 1000} s) was cancelled (\`pg_cancel_backend\`) and that mode's remaining moves skipped. Then the load stopped and each session's stored counter (\`sessions.session.data\`, read as the superuser) was compared with its client's 200s.`,
      '',
      '| transfer mode | shard groups moved | move ms (each; the last one cancelled when it did not finish) | requests in flight during the moves | slowest of them, ms | failed during the moves (their latency, ms) | statements the middleware sent again (`shardMoveRetries`) |',
      '| --- | ---: | ---: | ---: | ---: | ---: | ---: |',
      ...moves.runs.map((run) =>
        row([
          `\`${run.mode}\` (${run.direction})`,
          `${run.moved} of ${run.planned}`,
          run.movesMs.map((ms) => fixed(ms, 0)).join(', '),
          run.requestsDuring,
          fixed(run.maxLatencyMs, 0),
          `${run.failedDuring}${run.failedLatenciesMs.length > 0 ? ` (${run.failedLatenciesMs.map((ms) => fixed(ms, 0)).join(', ')})` : ''}`,
          run.retries,
        ]),
      ),
      '',
      ...moves.runs.flatMap((run) => [
        ...(run.stopped
          ? [`- \`${run.mode}\` did not finish a move: ${run.stopped.replaceAll('|', '\\|')}`]
          : []),
        ...run.errors.map(
          (error) =>
            `- \`${run.mode}\`, a failed request: ${error.slice(0, 400).replaceAll('|', '\\|')}`,
        ),
      ]),
      '',
      `Over the whole part: ${moves.requests} requests, ${moves.ok} answered 200, ${moves.failed} failed; p50 ${fixed(moves.p50, 2)} ms, slowest ${fixed(moves.maxLatencyMs, 0)} ms. Increments: ${moves.acknowledged} acknowledged, ${moves.stored} stored; ${moves.mismatches.length === 0 ? "every session holds exactly its client's count (no write lost, none doubled)" : `mismatches: ${moves.mismatches.join('; ')}`}.`,
    );
  }
  const logged = Object.entries(report.logged).filter(([, lines]) => lines.length > 0);
  if (logged.length > 0) {
    lines.push('', 'The middleware logged (warn/error, distinct messages):', '');
    for (const [name, messages] of logged) {
      for (const message of new Set(messages)) lines.push(`- ${name}: ${message.slice(0, 300)}`);
    }
  }
  const found = problems(report);
  lines.push(
    '',
    found.length === 0
      ? 'No request failed, no statement spanned shards, no write was lost.'
      : `Problems:\n${found.map((line) => `- ${line}`).join('\n')}`,
  );
  return lines.join('\n');
}

/** Writes `generated` into RESULTS.md's Citus section: its block replaced, or the section appended. */
async function record(generated: string): Promise<string> {
  const file = fileURLToPath(new URL('./RESULTS.md', import.meta.url));
  const previous = await readFile(file, 'utf8');
  const block = `${BLOCK_START}\n${generated.trim()}\n${BLOCK_END}`;
  const from = previous.indexOf(BLOCK_START);
  const to = previous.indexOf(BLOCK_END);
  const next =
    from >= 0 && to > from
      ? `${previous.slice(0, from)}${block}${previous.slice(to + BLOCK_END.length)}`
      : `${previous.trimEnd()}\n\n${SECTION}\n\n${block}\n`;
  await writeFile(file, next);
  return file;
}

// ---- The run ----

let exitCode = 0;
let plain: PostgresServer | undefined;
let cluster: CitusCluster | undefined;
const apps: App[] = [];
try {
  const binDir = process.env.CITUS_BIN_DIR ?? '/usr/lib/postgresql/15/bin';
  const binaries = await resolveBinaries(binDir);
  log(`starting a plain PostgreSQL and a Citus cluster (coordinator + 2 workers) from ${binDir}`);
  const [plainStart, clusterStart] = await Promise.allSettled([
    PostgresServer.start({ binaries, settings: SERVER_SETTINGS }),
    startCitusCluster({ workers: 2, binDir, settings: { ...SERVER_SETTINGS, ...CITUS_EXTRA } }),
  ]);
  if (plainStart.status === 'fulfilled') plain = plainStart.value;
  if (clusterStart.status === 'fulfilled') cluster = clusterStart.value;
  if (plainStart.status === 'rejected') throw plainStart.reason;
  if (clusterStart.status === 'rejected') throw clusterStart.reason;
  if (!plain || !cluster) throw new Error('unreachable');
  const plainUrl = plain.url('postgres');
  const citusUrl = cluster.url();
  await prepareTarget(plainUrl, false);
  await prepareTarget(citusUrl, true);
  const facts = { plain: await serverFacts(plainUrl), citus: await serverFacts(citusUrl) };
  const readyLoad = loadavg()[0] ?? Number.NaN;
  log(`ready: ${facts.plain.version} and ${facts.citus.version} (${facts.citus.settings})`);

  const crashed: string[] = [];
  const cells: KindCell[] = [];
  const targets: Target[] = [];
  for (const [name, url] of [
    ['plain', plainUrl],
    ['citus', citusUrl],
  ] as const) {
    const cached = await startApp(`${name} (cache on)`, asApp(url), true);
    apps.push(cached);
    const uncached = await startApp(`${name} (cache off)`, asApp(url), false);
    apps.push(uncached);
    const jars = await createSessions(cached, settings.concurrency, settings.sessionsPerClient);
    targets.push({ name, cached, uncached, sessions: jars });
  }
  for (const kind of KINDS) {
    for (let round = 1; round <= settings.rounds; round++) {
      for (const target of round % 2 === 1 ? targets : [...targets].reverse()) {
        try {
          const cell = await runKindCell(target, kind, round);
          cells.push(cell);
          log(
            `${kind} on ${target.name}, round ${round}: ${Math.round(cell.perSecond)} requests/s, p50 ${cell.p50.toFixed(2)} ms, p99 ${cell.p99.toFixed(2)} ms, ${cell.roundTripsPerRequest.toFixed(2)} round trips/request${cell.failed > 0 ? `, ${cell.failed} FAILED: ${cell.failures[0]}` : ''}`,
          );
        } catch (error) {
          crashed.push(`${kind} on ${target.name}, round ${round}: ${describe(error)}`);
          log(`${kind} on ${target.name}, round ${round} FAILED: ${describe(error)}`);
        }
      }
    }
  }
  for (const app of apps.splice(0)) await app.close();

  let routing: RoutingResult | undefined;
  try {
    routing = await runRouting(cluster);
    log(
      `routing: ${routing.requests} requests, ${routing.failed} failed; single/multi-shard executions ${routing.counters.map((c) => `${c.node} ${c.singleShard}/${c.multiShard}`).join(', ')}`,
    );
  } catch (error) {
    crashed.push(`routing: ${describe(error)}`);
    log(`routing FAILED: ${describe(error)}`);
  }
  let moves: MoveResult | undefined;
  try {
    moves = await runMoves(cluster);
    log(
      `moves: ${moves.requests} requests, ${moves.failed} failed, ${moves.mismatches.length} sessions with a lost or doubled write`,
    );
  } catch (error) {
    crashed.push(`moves: ${describe(error)}`);
    log(`moves FAILED: ${describe(error)}`);
  }

  const report: CitusReport = {
    smoke,
    command,
    at: new Date().toISOString(),
    elapsedSeconds: Math.round((Date.now() - startedAt) / 1000),
    machine: `${availableParallelism()} cores (${cpus()[0]?.model.trim() ?? 'unknown'}), ${platform()} ${release()}, Node ${process.version}`,
    loadAverage: [readyLoad, loadavg()[0] ?? Number.NaN],
    plain: facts.plain,
    citus: facts.citus,
    settings,
    cells,
    ...(routing ? { routing } : {}),
    ...(moves ? { moves } : {}),
    logged: appLogs,
    crashed,
  };
  const markdown = render(report);
  process.stdout.write(`${SECTION}\n\n${markdown}\n`);
  if (!smoke) log(`recorded in ${await record(markdown)}`);
  const found = problems(report);
  if (found.length > 0) {
    log(`benchmark FAILED:\n${found.map((line) => `- ${line}`).join('\n')}`);
    exitCode = 1;
  } else {
    log(`benchmark done in ${report.elapsedSeconds} s`);
  }
} catch (error) {
  log(`benchmark FAILED: ${error instanceof Error ? (error.stack ?? error.message) : error}`);
  exitCode = 1;
} finally {
  await Promise.allSettled(apps.map((app) => app.close()));
  agent.destroy();
  await cluster?.stop();
  await plain?.destroy();
}
process.exit(exitCode);
