// `npm run bench:scale`: what millions of sessions cost (issue 18). For each table size
// (--sizes, live sessions written by the seed generator with --live), on a durable
// PostgreSQL this process starts and stops:
//   - table, index and event-log bytes per session;
//   - one Koa app process (bench/app-server.ts) under autocannon (bench/load.ts),
//     read-only (every request loads its session), cache off and on, --repeat times;
//   - the lookup statement alone, without HTTP (bench/scale-lookups.ts): lookups/s and
//     the planner's buffers, as the store writes it and in its old spelling;
// and, at --gc-at live sessions, with --gc-expired more rows expired and waiting, a
// garbage collection under load: request windows before, during and after it, then the
// lookups again after ANALYZE with the dead index entries still in place (autovacuum
// is off for the table during this part, so the order is fixed), and after VACUUM.
// The first size is the baseline every other is compared with, in the same run.
// Writes bench/results/scale.json and the `scale` block of bench/RESULTS.md.
//
// `npm run bench:scale -- --smoke` (part of `npm run bench:smoke`): the same code with a
// few thousand rows and a handful of requests; fails on any error, non-2xx answer or
// miscount, never on speed.
import { mkdirSync } from 'node:fs';
import { readFile, writeFile } from 'node:fs/promises';
import { availableParallelism, cpus, loadavg, platform, release, tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import pg from 'pg';
import { loadSeed } from '../seeds/load.js';
import { collectGarbage } from '../src/jobs/garbage-collector.js';
import {
  createTestDatabase,
  PostgresServer,
  stopTestServer,
  type TestDatabase,
} from '../src/testing/index.js';
import { Child, type Message } from './child.js';
import { logIn } from './http.js';
import type { LoadResult, LoadRun } from './load.js';
import { spliceGenerated } from './report.js';
import {
  LOOKUP_STATEMENTS,
  type LookupRate,
  measureLookups,
  type PresentedToken,
} from './scale-lookups.js';
import {
  type GcPhase,
  type HttpWindow,
  renderScale,
  type ScaleReport,
  type SizeResult,
  scaleFailures,
} from './scale-report.js';

const { values: args } = parseArgs({
  options: {
    smoke: { type: 'boolean', default: false },
    sizes: { type: 'string' },
    'gc-at': { type: 'string' },
    'gc-expired': { type: 'string' },
    'gc-batch-size': { type: 'string' },
    duration: { type: 'string' },
    warmup: { type: 'string' },
    window: { type: 'string' },
    repeat: { type: 'string' },
    connections: { type: 'string' },
    presented: { type: 'string' },
  },
});
const smoke = args.smoke === true;

function whole(name: string, value: string | undefined, fallback: number, min = 1): number {
  if (value === undefined) return fallback;
  const parsed = Number(value.replaceAll('_', ''));
  if (!Number.isInteger(parsed) || parsed < min) {
    throw new Error(`--${name} must be an integer of at least ${min}, got ${value}`);
  }
  return parsed;
}

const sizes = (args.sizes ?? (smoke ? '300,3000' : '10000,1000000,3000000'))
  .split(',')
  .map((size) => whole('sizes', size.trim(), 0));
const settings = {
  sizes,
  gcAt: whole('gc-at', args['gc-at'], smoke ? 3000 : 1_000_000),
  gcExpired: whole('gc-expired', args['gc-expired'], smoke ? 1500 : 1_000_000),
  /** The library's default gc.batchSize. */
  gcBatchSize: whole('gc-batch-size', args['gc-batch-size'], 500),
  durationSeconds: whole('duration', args.duration, smoke ? 1 : 8),
  warmupSeconds: whole('warmup', args.warmup, smoke ? 0 : 2, 0),
  windowSeconds: whole('window', args.window, smoke ? 1 : 5),
  repeat: whole('repeat', args.repeat, smoke ? 1 : 2),
  connections: whole('connections', args.connections, 10),
  /** Sessions logged in over HTTP and presented by the load (random among them). */
  presented: whole('presented', args.presented, smoke ? 20 : 2000),
  /** A fixed number of requests per smoke cell instead of a duration. */
  ...(smoke ? { amount: 100 } : {}),
};
if (!sizes.includes(settings.gcAt) && settings.gcExpired > 0) {
  throw new Error(`--gc-at ${settings.gcAt} must be one of --sizes ${sizes.join(',')}`);
}

/** Live rows of the whole table the direct lookups pick from. */
const SAMPLE = smoke ? 20 : 2000;
const startedAt = Date.now();
const log = (line: string) =>
  process.stderr.write(`[${((Date.now() - startedAt) / 1000).toFixed(1)} s] ${line}\n`);
const here = (file: string) => fileURLToPath(new URL(file, import.meta.url));
const load1 = () => Math.round((loadavg()[0] ?? 0) * 10) / 10;

/** Production durability, as `npm run bench`; WAL room for the seed's bulk inserts. */
const SERVER_SETTINGS: Readonly<Record<string, string>> = smoke
  ? {}
  : { fsync: 'on', full_page_writes: 'on', synchronous_commit: 'on', max_wal_size: '4GB' };

async function adminQuery<Row extends pg.QueryResultRow>(
  url: string,
  text: string,
): Promise<Row[]> {
  const client = new pg.Client(url);
  await client.connect();
  try {
    return (await client.query<Row>(text)).rows;
  } finally {
    await client.end();
  }
}

async function measureBytes(db: TestDatabase): Promise<SizeResult['bytes']> {
  const [row] = await adminQuery<{
    rows: string;
    heap: string;
    indexes: { name: string; bytes: string }[];
    events: string;
    event_bytes: string;
  }>(
    db.url,
    `SELECT (SELECT count(*) FROM sessions.session) AS rows,
            pg_table_size('sessions.session') AS heap,
            (SELECT json_agg(json_build_object('name', c.relname, 'bytes', pg_relation_size(c.oid))
                             ORDER BY c.relname)
               FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
              WHERE i.indrelid = 'sessions.session'::regclass) AS indexes,
            (SELECT count(*) FROM sessions.event) AS events,
            pg_total_relation_size('sessions.event') AS event_bytes`,
  );
  if (!row) throw new Error('no sizes');
  return {
    rows: Number(row.rows),
    heapBytes: Number(row.heap),
    indexBytes: Object.fromEntries(row.indexes.map((index) => [index.name, Number(index.bytes)])),
    events: Number(row.events),
    eventBytes: Number(row.event_bytes),
  };
}

/** Live sessions to look up directly: a sample of the table's live rows. */
async function sampleTokens(db: TestDatabase, count: number): Promise<PresentedToken[]> {
  const rows = await adminQuery<{ tenant_id: string; token_hash: Buffer }>(
    db.url,
    `SELECT tenant_id, token_hash FROM sessions.session
      WHERE revoked_at IS NULL AND expires_at > now() ORDER BY random() LIMIT ${count}`,
  );
  return rows.map((row) => ({ tenant: row.tenant_id, tokenHash: row.token_hash }));
}

async function lookups(
  db: TestDatabase,
  tokens: readonly PresentedToken[],
  phase: string,
): Promise<LookupRate[]> {
  const rates: LookupRate[] = [];
  for (const statement of LOOKUP_STATEMENTS) {
    const rate = await measureLookups(db.appUrl, db.url, tokens, statement, {
      connections: settings.connections,
      seconds: smoke ? 1 : settings.windowSeconds,
      ...(smoke ? { amount: 100 } : {}),
    });
    rates.push(rate);
    log(
      `  lookups ${phase}, ${statement}: ${Math.round(rate.perSecond)}/s, p99 ${rate.p99Ms.toFixed(2)} ms, ` +
        `planning ${rate.planningBuffers} buffers ${rate.planningMs.toFixed(3)} ms` +
        (rate.misses > 0 ? `, ${rate.misses} MISSES` : ''),
    );
  }
  return rates;
}

/** An app process of one variant on `db`, with `presented` sessions logged in. */
async function startApp(db: TestDatabase, variant: 'pg-sessions-nocache' | 'pg-sessions-cache') {
  const app = Child.start('./app-server.ts', {
    env: { BENCH_VARIANT: variant, DATABASE_URL: db.appUrl },
  });
  const { port } = await app.next<Message & { port: number }>('ready');
  const url = `http://127.0.0.1:${port}`;
  const cookies = await logIn(url, settings.presented, true);
  return { app, url, cookies };
}

function loadRun(url: string, cookies: readonly string[], seconds: number): LoadRun {
  return {
    type: 'run',
    url,
    cookies,
    writeShare: 0,
    connections: settings.connections,
    durationSeconds: seconds,
    ...(settings.amount === undefined ? {} : { amount: settings.amount }),
  };
}

function window(phase: GcPhase | string, result: LoadResult, load: number): HttpWindow {
  return {
    phase,
    requestsPerSecond: result.requestsPerSecond,
    p50Ms: result.latencyMs.p50,
    p99Ms: result.latencyMs.p99,
    requests: result.requests,
    non2xx: result.non2xx,
    errors: result.errors + result.timeouts,
    loadAverage: load,
  };
}

async function httpCells(db: TestDatabase, load: Child): Promise<SizeResult['http']> {
  const cells: HttpWindow[] = [];
  const exits: [string, number | null][] = [];
  for (const variant of ['pg-sessions-nocache', 'pg-sessions-cache'] as const) {
    const { app, url, cookies } = await startApp(db, variant);
    try {
      if (settings.warmupSeconds > 0) {
        await load.ask(loadRun(url, cookies, settings.warmupSeconds), 'result');
      }
      for (let repeat = 0; repeat < settings.repeat; repeat++) {
        const before = load1();
        const result = await load.ask<LoadResult>(
          loadRun(url, cookies, settings.durationSeconds),
          'result',
        );
        const cell = window(
          variant === 'pg-sessions-cache' ? 'cache on' : 'cache off',
          result,
          before,
        );
        cells.push(cell);
        log(
          `  ${cell.phase}: ${Math.round(cell.requestsPerSecond)} req/s, p99 ${cell.p99Ms} ms (load average ${before})`,
        );
      }
    } finally {
      exits.push([variant, await app.stop()]);
    }
  }
  for (const [variant, code] of exits) {
    if (code !== 0) throw new Error(`the app process (${variant}) exited with code ${code}`);
  }
  return cells;
}

/** The collection under load, on `db` (live sessions plus the backlog). */
async function gcUnderLoad(
  db: TestDatabase,
  load: Child,
  tokens: readonly PresentedToken[],
): Promise<NonNullable<SizeResult['gc']>> {
  await adminQuery(db.url, 'ALTER TABLE sessions.session SET (autovacuum_enabled = off)');
  const windows: HttpWindow[] = [];
  const lookupPhases: { phase: string; rates: LookupRate[] }[] = [];
  const { app, url, cookies } = await startApp(db, 'pg-sessions-nocache');
  const gcPool = new pg.Pool({ connectionString: db.appUrl, max: 1 });
  gcPool.on('error', () => {});
  let run: Awaited<ReturnType<typeof collectGarbage>> | undefined;
  let appExit: number | null = 0;
  const batchMs: number[] = [];
  try {
    const measure = async (phase: GcPhase) => {
      const before = load1();
      const result = await load.ask<LoadResult>(
        loadRun(url, cookies, settings.windowSeconds),
        'result',
      );
      const measured = window(phase, result, before);
      windows.push(measured);
      log(
        `  ${phase}: ${Math.round(measured.requestsPerSecond)} req/s, p99 ${measured.p99Ms} ms (load average ${before})`,
      );
    };
    if (settings.warmupSeconds > 0) {
      await load.ask(loadRun(url, cookies, settings.warmupSeconds), 'result');
    }
    lookupPhases.push({ phase: 'before GC', rates: await lookups(db, tokens, 'before GC') });
    for (let index = 0; index < 2; index++) await measure('before');
    let collecting = true;
    let last = performance.now();
    const collection = collectGarbage(gcPool, {
      batchSize: settings.gcBatchSize,
      onBatch: () => {
        const now = performance.now();
        batchMs.push(now - last);
        last = now;
      },
    }).finally(() => {
      collecting = false;
    });
    collection.catch(() => {});
    // Windows while it runs; the one in which it ends counts as during.
    do await measure('during');
    while (collecting);
    run = await collection;
    log(
      `  GC: ${run.deleted} rows in ${run.batches} batches, ${(run.durationMs / 1000).toFixed(1)} s`,
    );
    // What autoanalyze does first when it wins the race: new statistics, dead entries kept.
    await adminQuery(db.url, 'ANALYZE sessions.session');
    for (let index = 0; index < 2; index++) await measure('after GC and ANALYZE');
    lookupPhases.push({
      phase: 'after GC and ANALYZE (dead index entries in place)',
      rates: await lookups(db, tokens, 'after GC and ANALYZE'),
    });
    await adminQuery(db.url, 'VACUUM sessions.session');
    for (let index = 0; index < 2; index++) await measure('after VACUUM');
    lookupPhases.push({
      phase: 'after VACUUM',
      rates: await lookups(db, tokens, 'after VACUUM'),
    });
  } finally {
    await gcPool.end();
    appExit = await app.stop();
    await adminQuery(db.url, 'ALTER TABLE sessions.session RESET (autovacuum_enabled)');
  }
  if (appExit !== 0) throw new Error(`the app process exited with code ${appExit}`);
  const [events] = await adminQuery<{ expired: string; distinct_sessions: string }>(
    db.url,
    `SELECT count(*) AS expired, count(DISTINCT session_id) AS distinct_sessions
       FROM sessions.event WHERE kind = 'expired' AND reason = 'gc'`,
  );
  if (!run) throw new Error('the collection did not run');
  return {
    expired: settings.gcExpired,
    batchSize: settings.gcBatchSize,
    deleted: run.deleted,
    batches: run.batches,
    seconds: run.durationMs / 1000,
    batchMs: {
      firstTenth: mean(batchMs.slice(0, Math.ceil(batchMs.length / 10))),
      lastTenth: mean(batchMs.slice(-Math.ceil(batchMs.length / 10))),
      max: Math.max(0, ...batchMs),
    },
    expiredEvents: Number(events?.expired ?? 0),
    expiredSessions: Number(events?.distinct_sessions ?? 0),
    windows,
    lookups: lookupPhases,
  };
}

function mean(values: readonly number[]): number {
  return values.length === 0 ? 0 : values.reduce((sum, value) => sum + value, 0) / values.length;
}

async function measureSize(liveSessions: number, load: Child): Promise<SizeResult> {
  const backlog = liveSessions === settings.gcAt ? settings.gcExpired : 0;
  const db = await createTestDatabase();
  try {
    log(
      `${liveSessions} live sessions${backlog > 0 ? ` and ${backlog} expired awaiting GC` : ''}: seeding`,
    );
    const seed = await loadSeed(db.url, {
      sessions: liveSessions + backlog,
      live: true,
      expired: backlog,
    });
    log(`  seeded in ${(seed.durationMs / 1000).toFixed(1)} s (${seed.events} events)`);
    // A steady state, not the seed's aftermath: hint bits set, visibility map and
    // statistics written, dirty pages flushed (else autovacuum and the checkpointer
    // would run through the first cells).
    const settled = performance.now();
    await adminQuery(db.url, 'VACUUM (ANALYZE) sessions.session, sessions.event');
    await adminQuery(db.url, 'CHECKPOINT');
    log(
      `  vacuumed, analysed and checkpointed in ${((performance.now() - settled) / 1000).toFixed(1)} s`,
    );
    const bytes = await measureBytes(db);
    const tokens = await sampleTokens(db, SAMPLE);
    const gc = backlog > 0 ? await gcUnderLoad(db, load, tokens) : undefined;
    const direct = gc ? [] : await lookups(db, tokens, `${liveSessions} live`);
    const http = await httpCells(db, load);
    return {
      liveSessions,
      seedSeconds: seed.durationMs / 1000,
      bytes,
      http,
      lookups: gc ? (gc.lookups.at(-1)?.rates ?? []) : direct,
      ...(gc ? { gc } : {}),
    };
  } finally {
    await db.drop();
  }
}

let exitCode = 0;
const server = process.env.PG_TEST_URL
  ? undefined
  : await PostgresServer.start({ settings: SERVER_SETTINGS });
if (server) process.env.PG_TEST_URL = server.url('postgres');
const load = Child.start('./load.ts');
try {
  await load.next('ready');
  const [facts] = await adminQuery<{ version: string; buffers: string; fsync: string }>(
    process.env.PG_TEST_URL as string,
    `SELECT current_setting('server_version') AS version, current_setting('shared_buffers') AS buffers,
            current_setting('fsync') AS fsync`,
  );
  log(`scale benchmark on PostgreSQL ${facts?.version} (${server?.binaries.source ?? 'url'})`);
  const results: SizeResult[] = [];
  for (const size of sizes) results.push(await measureSize(size, load));
  const extraArgs = process.argv.slice(2);
  const report: ScaleReport = {
    smoke,
    command: `${server?.binaries.source === 'PG_BIN_DIR' ? `PG_BIN_DIR=${process.env.PG_BIN_DIR} ` : ''}npm run bench:scale${extraArgs.length > 0 ? ` -- ${extraArgs.join(' ')}` : ''}`,
    at: new Date().toISOString(),
    elapsedSeconds: Math.round((Date.now() - startedAt) / 1000),
    machine: {
      cpus: availableParallelism(),
      cpuModel: cpus()[0]?.model.trim() ?? 'unknown',
      os: `${platform()} ${release()}`,
      node: process.version,
      postgres: `PostgreSQL ${facts?.version ?? '?'} (${server?.binaries.source ?? 'PG_TEST_URL'}; shared_buffers=${facts?.buffers ?? '?'}, fsync=${facts?.fsync ?? '?'})`,
    },
    settings,
    sizes: results,
  };
  const markdown = renderScale(report);
  const folder = smoke ? tmpdir() : here('./results');
  mkdirSync(folder, { recursive: true });
  const version = (facts?.version ?? '').split('.')[0];
  const jsonFile = join(
    folder,
    smoke ? 'pg-sessions-bench-scale-smoke.json' : `scale-pg${version}.json`,
  );
  await writeFile(jsonFile, `${JSON.stringify(report, null, 2)}\n`);
  if (!smoke) {
    const resultsMd = here('./RESULTS.md');
    const text = await readFile(resultsMd, 'utf8');
    await writeFile(resultsMd, spliceGenerated(text, `scale-pg${version}`, markdown));
  }
  process.stdout.write(`${markdown}\n`);
  const failed = scaleFailures(report);
  if (failed.length > 0) {
    log(`scale benchmark FAILED:\n${failed.map((line) => `- ${line}`).join('\n')}`);
    exitCode = 1;
  } else {
    log(`scale benchmark done in ${report.elapsedSeconds} s; results: ${jsonFile}`);
  }
} catch (error) {
  log(`scale benchmark FAILED: ${error instanceof Error ? (error.stack ?? error.message) : error}`);
  exitCode = 1;
} finally {
  await load.stop();
  await stopTestServer();
  await server?.destroy();
}
process.exit(exitCode);
