// `npm run bench`: three parts in one run, on one machine, against PostgreSQL servers
// this process starts and stops:
//   http      the HTTP benchmark of four session layers (bench/http.ts);
//   notify    the notification-to-eviction latency between two processes (bench/notify-latency.ts);
//   replicas  read scaling over streaming replicas (bench/replicas.ts), on a cluster of its own.
// Writes bench/results/<name>.json and the generated blocks of bench/RESULTS.md.
//
// `npm run bench:smoke` (part of `npm test`): the same code paths with tiny settings;
// fails when a cell errored, answered non-2xx or produced no numbers. Never on speed.
// `npm run bench:replicas`: the replica part alone (`--only replicas`).
//
// Options: --only <part,…>, --duration <s> per measured cell (default 10; replicas 8),
// --warmup <s> (default 3; replicas 2), --sessions <n> (1000), --connections <n> (32),
// --samples <n> notification samples (300), --rounds <n> rounds of every HTTP cell (2;
// the write ceiling runs 3 rounds of its three cells), --cpu-prof (CPU profiles of the HTTP app
// processes, written to a temporary folder; such a run does not update RESULTS.md),
// --options '<json>' adds options to every pg-sessions app (a probe, never recorded);
// --variants <name,…> and --mixes <name,…> (a narrowed HTTP run without the write ceiling,
// for a bisect or a profile; not recorded either).
// PostgreSQL: PG_TEST_URL uses that server for http and notify; PG_TEST_BACKEND=testcontainers
// a container; else a local server from PG_BIN_DIR's binaries or the embedded ones, run
// with production durability (fsync on), unlike the test suite's throwaway servers. The
// replica cluster is always local (PG_BIN_DIR or embedded binaries), durable too.
import { mkdirSync, mkdtempSync } from 'node:fs';
import { readFile, writeFile } from 'node:fs/promises';
import { availableParallelism, cpus, platform, release, tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import pg from 'pg';
import {
  type Cluster,
  createTestDatabase,
  PostgresServer,
  startCluster,
  stopTestServer,
  type TestDatabase,
  testServer,
} from '../src/testing/index.js';
import { Child } from './child.js';
import { type HttpCell, type HttpSettings, MIXES, runHttpBench } from './http.js';
import { type NotifyResult, type NotifySettings, runNotifyLatency } from './notify-latency.js';
import {
  CLUSTER_REPLICAS,
  type ReplicaResult,
  type ReplicaSettings,
  runReplicaBench,
} from './replicas.js';
import {
  type BenchReport,
  failures,
  type Machine,
  PARTS,
  type Part,
  renderResults,
  spliceGenerated,
} from './report.js';
import { type PathSettings, type RequestPathResult, runRequestPath } from './request-path.js';
import { VARIANTS } from './variants.js';
import { runWriteCeiling, type WriteCeiling } from './write-ceiling.js';

const { values: args } = parseArgs({
  options: {
    smoke: { type: 'boolean', default: false },
    only: { type: 'string' },
    duration: { type: 'string' },
    warmup: { type: 'string' },
    sessions: { type: 'string' },
    connections: { type: 'string' },
    samples: { type: 'string' },
    rounds: { type: 'string' },
    variants: { type: 'string' },
    mixes: { type: 'string' },
    // Extra options for every pg-sessions app (JSON): a probe, never recorded.
    options: { type: 'string' },
    'cpu-prof': { type: 'boolean', default: false },
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

/** A comma-separated subset of `all` (all of it when absent), in `all`'s order. */
function subset<T extends string>(name: string, value: string | undefined, all: readonly T[]): T[] {
  if (value === undefined) return [...all];
  const names = value.split(',').map((item) => item.trim());
  for (const item of names) {
    if (!(all as readonly string[]).includes(item)) {
      throw new Error(`--${name} takes a list of ${all.join(', ')}; got ${item}`);
    }
  }
  return all.filter((item) => names.includes(item));
}

const parts: readonly Part[] = subset('only', args.only, PARTS);
/** A run narrowed to some variants or mixes is a probe (a bisect, a profile): never recorded. */
const narrowed =
  args.variants !== undefined || args.mixes !== undefined || args.options !== undefined;
if (args.options !== undefined) {
  JSON.parse(args.options); // refuse a typo before any server starts
  process.env.BENCH_PG_OPTIONS = args.options;
}
const profileDir = args['cpu-prof'] ? mkdtempSync(join(tmpdir(), 'pg-sessions-bench-')) : undefined;
/** The smoke run sends a fixed, small number of requests per cell instead of a duration. */
const smokeRequests = 120;
const http: HttpSettings = {
  sessions: count('sessions', args.sessions, smoke ? 20 : 1000),
  connections: count('connections', args.connections, 32),
  durationSeconds: count('duration', args.duration, smoke ? 1 : 10),
  warmupSeconds: count('warmup', args.warmup, smoke ? 0 : 3, 0),
  appNodeOptions: profileDir ? ['--cpu-prof', `--cpu-prof-dir=${profileDir}`] : [],
  rounds: count('rounds', args.rounds, smoke ? 1 : 2),
  variants: subset('variants', args.variants, VARIANTS),
  mixes: subset(
    'mixes',
    args.mixes,
    MIXES.map((mix) => mix.name),
  ),
  ...(smoke && args.duration === undefined ? { amount: smokeRequests } : {}),
};
const requestPath: PathSettings = {
  sessions: http.sessions,
  connections: http.connections,
  requests: smoke ? 400 : 50_000,
  rounds: smoke ? 1 : 3,
};
const replicas: ReplicaSettings = {
  sessions: http.sessions,
  connections: http.connections,
  durationSeconds: count('duration', args.duration, smoke ? 1 : 8),
  warmupSeconds: count('warmup', args.warmup, smoke ? 0 : 2, 0),
  ...(http.amount === undefined ? {} : { amount: http.amount }),
};
const notify: NotifySettings = { samples: count('samples', args.samples, smoke ? 6 : 300) };
const here = (file: string) => fileURLToPath(new URL(file, import.meta.url));
const startedAt = Date.now();
const log = (line: string) =>
  process.stderr.write(`[${((Date.now() - startedAt) / 1000).toFixed(1)} s] ${line}\n`);

/** Production durability: the test suite's servers run with fsync off, which would flatter every write. */
const DURABLE: Readonly<Record<string, string>> = {
  fsync: 'on',
  full_page_writes: 'on',
  synchronous_commit: 'on',
};
/**
 * The smoke run measures nothing: it takes the test suite's throwaway settings (fsync
 * off), which halve the cluster's start and make each database copy ten times quicker.
 */
const serverSettings = smoke ? {} : DURABLE;

/** A durable local server unless the environment names one (as the test harness reads it). */
async function startPostgres(): Promise<PostgresServer | undefined> {
  if (process.env.PG_TEST_URL || process.env.PG_TEST_BACKEND === 'testcontainers') return;
  const server = await PostgresServer.start({ settings: serverSettings });
  process.env.PG_TEST_URL = server.url('postgres');
  return server;
}

async function serverFacts(adminUrl: string) {
  const client = new pg.Client(adminUrl);
  await client.connect();
  try {
    const { rows } = await client.query<{
      version: string;
      fsync: string;
      commit: string;
      buffers: string;
    }>(
      `SELECT current_setting('server_version') AS version, current_setting('fsync') AS fsync,
              current_setting('synchronous_commit') AS commit,
              current_setting('shared_buffers') AS buffers`,
    );
    const row = rows[0];
    return {
      version: `PostgreSQL ${row?.version ?? '?'}`,
      settings: `fsync=${row?.fsync ?? '?'}, synchronous_commit=${row?.commit ?? '?'}, shared_buffers=${row?.buffers ?? '?'}`,
    };
  } finally {
    await client.end();
  }
}

const extraArgs = process.argv.slice(2).filter((arg) => arg !== '--smoke');
const command = `npm run bench${smoke ? ':smoke' : ''}${extraArgs.length > 0 ? ` -- ${extraArgs.join(' ')}` : ''}`;

/** The HTTP benchmark and the notification latency, on one server. */
async function runSingleServerParts(
  load: Child,
  postmasterPid: number | undefined,
): Promise<{
  facts: { version: string; settings: string; backend: string };
  cells?: HttpCell[];
  writeCeiling?: WriteCeiling;
  requestPath?: RequestPathResult;
  notify?: NotifyResult;
}> {
  const ownServer = await startPostgres();
  try {
    const server = await testServer();
    const facts = await serverFacts(server.adminUrl);
    log(`benchmark on ${facts.version} (${facts.settings}), ${server.backend}`);
    const cells = parts.includes('http')
      ? await runHttpBench(
          http,
          {
            create: () => createTestDatabase(),
            postmasterPid: ownServer?.pid ?? server.process?.pid ?? postmasterPid,
          },
          load,
          log,
        )
      : undefined;
    let writeCeiling: WriteCeiling | undefined;
    if (parts.includes('http') && !narrowed) {
      writeCeiling = await runWriteCeiling(
        { ...http, rounds: smoke ? 1 : 3 },
        { create: () => createTestDatabase() },
        smoke,
      );
      for (const cell of writeCeiling.cells) {
        log(
          `write ceiling, round ${cell.round}, ${cell.kind}: ${Math.round(cell.writesPerSecond)} writes/s, p99 ${cell.latencyMs.p99.toFixed(1)} ms, ${cell.fsyncsPerWrite.toFixed(2)} fsyncs/write, Lock:object ${(cell.lockObjectShare * 100).toFixed(0)} %`,
        );
      }
    }
    const pathResult =
      parts.includes('http') && !narrowed
        ? await runRequestPath(
            { ...requestPath, serverPid: ownServer?.pid ?? server.process?.pid ?? postmasterPid },
            { create: () => createTestDatabase() },
            log,
          )
        : undefined;
    let notifyResult: NotifyResult | undefined;
    if (parts.includes('notify')) {
      notifyResult = await onFreshDatabase((database) => runNotifyLatency(notify, database));
      log(
        `notification to eviction: median ${notifyResult.latencyMs.median.toFixed(2)} ms, p99 ${notifyResult.latencyMs.p99.toFixed(2)} ms (${notifyResult.samples} samples)`,
      );
    }
    return {
      facts: { ...facts, backend: ownServer ? ownServer.binaries.source : server.backend },
      ...(cells ? { cells } : {}),
      ...(writeCeiling ? { writeCeiling } : {}),
      ...(pathResult ? { requestPath: pathResult } : {}),
      ...(notifyResult ? { notify: notifyResult } : {}),
    };
  } finally {
    await stopTestServer();
    await ownServer?.destroy();
    if (ownServer) delete process.env.PG_TEST_URL;
  }
}

/** Runs `work` on a migrated database of its own, dropped afterwards. */
async function onFreshDatabase<T>(work: (database: TestDatabase) => Promise<T>): Promise<T> {
  const database = await createTestDatabase();
  try {
    return await work(database);
  } finally {
    await database.drop();
  }
}

/** The replica part, on `cluster`: a database made there the way the tests make theirs. */
async function runReplicaPart(load: Child, cluster: Cluster): Promise<ReplicaResult> {
  const configured = process.env.PG_TEST_URL;
  process.env.PG_TEST_URL = cluster.primary.url('postgres');
  try {
    // Not dropped: the failover leaves its server dead, and the cluster goes with it.
    const database = await createTestDatabase();
    return await runReplicaBench(replicas, cluster, database, load, log);
  } finally {
    await stopTestServer();
    if (configured === undefined) delete process.env.PG_TEST_URL;
    else process.env.PG_TEST_URL = configured;
  }
}

let exitCode = 0;
let cluster: Cluster | undefined;
// One load generator for every part, started first: it gets ready while the servers start.
const load = Child.start('./load.ts');
try {
  const loadReady = load.next('ready');
  loadReady.catch(() => {}); // awaited below; a failure before that must not go unhandled
  const singleServer = parts.includes('http') || parts.includes('notify');
  const ownServers = !process.env.PG_TEST_URL && process.env.PG_TEST_BACKEND !== 'testcontainers';
  if (smoke && ownServers && parts.includes('replicas')) {
    // The smoke run saves a server start: everything runs on the cluster's primary.
    cluster = await startCluster({ replicas: CLUSTER_REPLICAS, settings: serverSettings });
    process.env.PG_TEST_URL = cluster.primary.url('postgres');
  }
  // Otherwise the single server is stopped before the cluster starts: one at a time on the cores.
  await loadReady;
  const single = singleServer ? await runSingleServerParts(load, cluster?.primary.pid) : undefined;
  let replicaResult: ReplicaResult | undefined;
  if (parts.includes('replicas')) {
    cluster ??= await startCluster({ replicas: CLUSTER_REPLICAS, settings: serverSettings });
    replicaResult = await runReplicaPart(load, cluster);
  }
  const machine: Machine = {
    cpus: availableParallelism(),
    cpuModel: cpus()[0]?.model.trim() ?? 'unknown',
    os: `${platform()} ${release()}`,
    node: process.version,
    postgres: single?.facts.version ?? replicaResult?.postgres ?? '?',
    postgresSettings:
      single?.facts.settings ??
      Object.entries(serverSettings)
        .map(([name, value]) => `${name}=${value}`)
        .join(', '),
    postgresBackend: single?.facts.backend ?? (process.env.PG_BIN_DIR ? 'PG_BIN_DIR' : 'embedded'),
  };
  const report: BenchReport = {
    smoke,
    command,
    at: new Date().toISOString(),
    elapsedSeconds: Math.round((Date.now() - startedAt) / 1000),
    parts,
    machine,
    settings: {
      ...(parts.includes('http') ? { http } : {}),
      ...(single?.requestPath ? { requestPath } : {}),
      ...(parts.includes('notify') ? { notify } : {}),
      ...(parts.includes('replicas') ? { replicas } : {}),
    },
    ...(single?.cells ? { http: single.cells } : {}),
    ...(single?.writeCeiling ? { writeCeiling: single.writeCeiling } : {}),
    ...(single?.requestPath ? { requestPath: single.requestPath } : {}),
    ...(single?.notify ? { notify: single.notify } : {}),
    ...(replicaResult ? { replicas: replicaResult } : {}),
  };
  // Only a plain full-length run is recorded in the tree: the smoke run (CI) and a profiled
  // one (the profiler slows the apps down) write their JSON to the temporary folder.
  const recorded = !smoke && !profileDir && !narrowed;
  const folder = recorded ? here('./results') : tmpdir();
  mkdirSync(folder, { recursive: true });
  const name = `${recorded ? 'latest' : `pg-sessions-bench-${smoke ? 'smoke' : profileDir ? 'profiled' : 'narrowed'}`}${args.only === undefined ? '' : `-${parts.join('-')}`}`;
  const resultsFile = join(folder, `${name}.json`);
  await writeFile(resultsFile, `${JSON.stringify(report, null, 2)}\n`);
  log(`results: ${resultsFile}`);
  const blocks = renderResults(report);
  if (recorded) {
    const resultsMd = here('./RESULTS.md');
    let text = await readFile(resultsMd, 'utf8').catch(() => '# Benchmark results\n');
    for (const [block, markdown] of blocks) text = spliceGenerated(text, block, markdown);
    await writeFile(resultsMd, text);
  }
  process.stdout.write(`${[...blocks.values()].join('\n\n')}\n`);
  if (profileDir) log(`CPU profiles of the app processes: ${profileDir}`);
  const failed = failures(report);
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
  await cluster?.destroy();
}
process.exit(exitCode);
