// `npm run bench:path`: the request path alone (bench/request-path.ts), narrowed for a
// profile or a side-by-side check while changing the hot path; nothing is recorded.
//   npm run bench:path -- --variants pg-sessions,koa-session-redis --ops write --rounds 3
//   npm run bench:path -- --variants pg-sessions --ops write --cpu-prof   (writes .cpuprofile files)
// PostgreSQL as bench/run.ts starts it: durable (fsync on), or PG_TEST_URL's server.
import { writeFile } from 'node:fs/promises';
import { Session } from 'node:inspector/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { createTestDatabase, PostgresServer, stopTestServer } from '../src/testing/index.js';
import {
  PATH_OPS,
  PATH_VARIANTS,
  type PathOp,
  type PathVariant,
  runRequestPath,
} from './request-path.js';

const { values: args } = parseArgs({
  options: {
    variants: { type: 'string' },
    ops: { type: 'string' },
    rounds: { type: 'string' },
    requests: { type: 'string' },
    sessions: { type: 'string' },
    connections: { type: 'string' },
    options: { type: 'string' },
    'cpu-prof': { type: 'boolean' },
  },
});

function list<T extends string>(value: string | undefined, all: readonly T[]): T[] {
  if (value === undefined) return [...all];
  return value.split(',').map((item) => {
    if (!(all as readonly string[]).includes(item))
      throw new Error(`unknown ${item}; one of ${all.join(', ')}`);
    return item as T;
  });
}

let server: PostgresServer | undefined;
if (!process.env.PG_TEST_URL) {
  server = await PostgresServer.start({
    settings: { fsync: 'on', full_page_writes: 'on', synchronous_commit: 'on' },
  });
  process.env.PG_TEST_URL = server.url('postgres');
}
const profiler = args['cpu-prof'] ? new Session() : undefined;
profiler?.connect();
await profiler?.post('Profiler.enable');
try {
  const result = await runRequestPath(
    {
      variants: list<PathVariant>(args.variants, PATH_VARIANTS),
      ops: list<PathOp>(args.ops, PATH_OPS),
      rounds: Number(args.rounds ?? 3),
      requests: Number(args.requests ?? 50_000),
      sessions: Number(args.sessions ?? 1000),
      connections: Number(args.connections ?? 32),
      serverPid: server?.pid,
      pgSessionsOptions: args.options ? (JSON.parse(args.options) as Record<string, unknown>) : {},
      onMeasure: profiler
        ? async (phase, label) => {
            if (phase === 'start') {
              await profiler.post('Profiler.start');
              return;
            }
            const { profile } = await profiler.post('Profiler.stop');
            const file = join(tmpdir(), `path-${label}.cpuprofile`);
            await writeFile(file, JSON.stringify(profile));
            process.stderr.write(`profile: ${file}\n`);
          }
        : undefined,
    },
    { create: () => createTestDatabase() },
    (line) => process.stderr.write(`${line}\n`),
  );
  const byCell = new Map<string, { app: number[]; server: number[] }>();
  for (const cell of result.cells) {
    const key = `${cell.variant} ${cell.op}`;
    const figures = byCell.get(key) ?? { app: [], server: [] };
    figures.app.push(cell.cpuMicrosPerRequest);
    if (cell.serverMicrosPerRequest !== undefined) figures.server.push(cell.serverMicrosPerRequest);
    byCell.set(key, figures);
  }
  const spread = (values: number[]) =>
    values
      .sort((a, b) => a - b)
      .map((value) => value.toFixed(0))
      .join(' / ');
  for (const [key, { app, server }] of byCell) {
    const database = server.length > 0 ? `; PostgreSQL ${spread(server)} µs` : '';
    process.stdout.write(`${key}: ${spread(app)} µs of app CPU per request${database}\n`);
  }
} finally {
  await stopTestServer();
  await server?.stop();
}
