// `npm run seed -- --sessions N [--seed S] [--tenants T] [--weeks W | --live [--expired E]] [--replace] [--url URL]`:
// the seed without the CLI (the published `pg-sessions seed` calls the same loadSeed).
import { parseArgs } from 'node:util';
import { loadSeed, SeedError } from './load.js';

const usage =
  'usage: npm run seed -- --sessions N [--seed S] [--tenants T] [--weeks W | --live [--expired E]] [--replace] [--url URL]\n' +
  '  --live: only sessions live now (no history); --expired E: E of them expired, awaiting GC\n' +
  '  the database is --url, else $DATABASE_URL; seeding needs a superuser\n';

function whole(name: string, value: string | undefined): number | undefined {
  if (value === undefined) return undefined;
  if (!/^\d+$/.test(value)) throw new SeedError(`--${name} must be a whole number, got ${value}`);
  return Number(value);
}

try {
  const { values } = parseArgs({
    options: {
      sessions: { type: 'string', default: '10000' },
      seed: { type: 'string' },
      tenants: { type: 'string' },
      weeks: { type: 'string' },
      live: { type: 'boolean', default: false },
      expired: { type: 'string' },
      replace: { type: 'boolean', default: false },
      url: { type: 'string' },
      help: { type: 'boolean', short: 'h', default: false },
    },
  });
  if (values.help) {
    process.stdout.write(usage);
    process.exit(0);
  }
  const url = values.url ?? process.env.DATABASE_URL;
  if (!url) throw new SeedError('no database given: pass --url or set DATABASE_URL');
  const progress = process.stderr.isTTY;
  const result = await loadSeed(url, {
    sessions: whole('sessions', values.sessions) ?? 10_000,
    seed: whole('seed', values.seed),
    tenants: whole('tenants', values.tenants),
    weeks: whole('weeks', values.weeks),
    live: values.live,
    expired: whole('expired', values.expired),
    replace: values.replace,
    onProgress: progress
      ? ({ phase, done, total }) => process.stderr.write(`\r${phase} ${done}/${total}\x1b[K`)
      : undefined,
  });
  if (progress) process.stderr.write('\r\x1b[K');
  process.stdout.write(
    `seeded ${result.sessions} sessions (${result.rows} rows left, ${result.events} events) ` +
      `for ${result.tenants.join(', ')} in ${(result.durationMs / 1000).toFixed(1)} s\n`,
  );
} catch (error) {
  const known =
    error instanceof SeedError || error instanceof RangeError || error instanceof TypeError;
  process.stderr.write(`seed: ${(error as Error).message}\n${known ? usage : ''}`);
  process.exitCode = 1;
}
