import { Command } from 'commander';
import type pg from 'pg';
import { refuseOnCitus } from './citus-guard.js';
import { withClient } from './connection.js';
import { databaseUrl } from './database-url.js';
import { age, wholeNumber } from './option-parsers.js';
import { ProgressLine } from './progress.js';

interface PruneOptions {
  readonly olderThan: string;
  readonly batchSize: number;
  readonly url?: string;
}

export function pruneEventsCommand(): Command {
  return new Command('prune-events')
    .description('delete audit events older than an age, in batches (sessions.prune_events)')
    .requiredOption('--older-than <age>', 'events older than this: 90d, 26w, 12 months, P1Y', age)
    .option(
      '--batch-size <n>',
      'events per batch, each its own transaction (1-100000)',
      wholeNumber(1, 100_000),
      5000,
    )
    .option('--url <url>', 'database URL (default: $DATABASE_URL) of the primary')
    .addHelpText(
      'after',
      `
Retention for the event log, by the database's clock; run it from cron. The
reports replay history from the log, so they only see what retention keeps.`,
    )
    .action(async (options: PruneOptions) => {
      const url = databaseUrl(options.url);
      const progress = new ProgressLine('prune-events');
      const began = performance.now();
      const deleted = await withClient(
        url,
        async (client) => {
          await refuseOnCitus(client, 'pg-sessions prune-events');
          try {
            return await prune(client, options, progress);
          } finally {
            progress.clear();
          }
        },
        { permission: 'pruning needs a role granted sessions_admin' },
      );
      const seconds = ((performance.now() - began) / 1000).toFixed(1);
      process.stdout.write(
        `${deleted} ${deleted === 1 ? 'event' : 'events'} older than ${options.olderThan} deleted (${seconds} s)\n`,
      );
    });
}

async function prune(
  client: pg.Client,
  options: PruneOptions,
  progress: ProgressLine,
): Promise<number> {
  let deleted = 0;
  for (;;) {
    const result = await client.query<{ n: number }>(
      'SELECT sessions.prune_events($1::interval, $2) AS n',
      [options.olderThan, options.batchSize],
    );
    const count = result.rows[0]?.n ?? 0;
    deleted += count;
    progress.update(deleted, undefined, 'deleting');
    if (count < options.batchSize) return deleted;
  }
}
