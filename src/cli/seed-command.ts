import { Command } from 'commander';
import { messageOf } from '../db/migrator.js';
import { CliError } from './cli-error.js';
import { connect, databaseFailure } from './connection.js';
import { databaseUrl } from './database-url.js';
import { positiveInteger, wholeNumber } from './option-parsers.js';
import { ProgressLine } from './progress.js';

interface SeedCommandOptions {
  readonly sessions: number;
  readonly seed?: number;
  readonly tenants?: number;
  readonly weeks?: number;
  readonly live?: boolean;
  readonly expired?: number;
  readonly replace?: boolean;
  readonly url?: string;
}

export function seedCommand(): Command {
  return new Command('seed')
    .description(
      'write a deterministic history of tenants, users, sessions and events (demo, reports, benchmarks)',
    )
    .option('--sessions <n>', 'sessions created over the whole history', positiveInteger, 10_000)
    .option(
      '--seed <s>',
      'PRNG seed: the same options give the same data (default: 20260101)',
      wholeNumber(0, 0xffffffff),
    )
    .option('--tenants <n>', 'how many tenants (default: 6)', positiveInteger)
    .option('--weeks <n>', 'weeks of history ending now (default: 4)', wholeNumber(1, 52))
    .option('--live', 'only sessions live now, no history (a table for scale benchmarks)')
    .option(
      '--expired <n>',
      'with --live: how many of the sessions expired and await garbage collection',
      wholeNumber(0),
    )
    .option('--replace', "delete the seed tenants' sessions and events first")
    .option('--url <url>', 'database URL (default: $DATABASE_URL); needs a superuser')
    .addHelpText(
      'after',
      `
One transaction: either the whole history is written or nothing. The events keep
their historical times, so the triggers are skipped: that needs a superuser.`,
    )
    .action(async (options: SeedCommandOptions) => {
      const url = databaseUrl(options.url);
      const { loadSeed, SeedError } = await loadSeedModule();
      // Reach the database first, so that a wrong URL reads like it does for every command.
      await (await connect(url)).end();
      const progress = new ProgressLine('seed');
      let result: Awaited<ReturnType<typeof loadSeed>>;
      try {
        result = await loadSeed(url, {
          sessions: options.sessions,
          seed: options.seed,
          tenants: options.tenants,
          weeks: options.weeks,
          live: options.live,
          expired: options.expired,
          replace: options.replace,
          onProgress: ({ phase, done, total }) =>
            phase === 'generating'
              ? progress.update(done, total, phase)
              : progress.update(0, undefined, `${phase}…`),
        });
      } catch (error) {
        if (error instanceof SeedError || error instanceof RangeError) {
          throw new CliError(error.message);
        }
        throw databaseFailure(error, url, { permission: 'seeding needs a superuser' });
      } finally {
        progress.clear();
      }
      const seconds = (result.durationMs / 1000).toFixed(1);
      process.stdout.write(
        `seeded ${result.sessions} sessions (${result.rows} rows left, ${result.events} events) for ${result.tenants.join(', ')} in ${seconds} s\n`,
      );
    });
}

/**
 * The seed lives in `seeds/`, next to `src/`: loaded only by this command, so every
 * other command works in an installation that leaves it out.
 */
async function loadSeedModule(): Promise<typeof import('../../seeds/load.js')> {
  try {
    return await import('../../seeds/load.js');
  } catch (error) {
    throw new CliError(`the seed is not part of this installation (${messageOf(error)})`);
  }
}
