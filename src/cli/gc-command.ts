import { Command } from 'commander';
import type pg from 'pg';
import { collectOn } from '../jobs/garbage-collector.js';
import { CliError, ExitCode } from './cli-error.js';
import { cliActor, withClient } from './connection.js';
import { databaseUrl } from './database-url.js';
import { wholeNumber } from './option-parsers.js';
import { ProgressLine } from './progress.js';

interface GcOptions {
  readonly batchSize: number;
  readonly lockWait: number;
  readonly url?: string;
}

export function gcCommand(): Command {
  return new Command('gc')
    .description(
      'delete expired and revoked sessions now, in batches (sessions.gc_batch), until none is left',
    )
    .option(
      '--batch-size <n>',
      'rows per batch, each its own transaction (1-10000)',
      wholeNumber(1, 10_000),
      500,
    )
    .option(
      '--lock-wait <seconds>',
      "how long to wait while an app node's collector holds the GC lock",
      wholeNumber(0, 3600),
      30,
    )
    .option('--url <url>', 'database URL (default: $DATABASE_URL) of the primary')
    .addHelpText(
      'after',
      `
Takes the advisory lock the app nodes' collectors take, so one collects at a time;
skips rows that requests hold locked, so it never blocks traffic. Each deletion is
logged as an 'expired' (or 'purged', for a revoked row) event with actor cli:<os user>.
Exits 1 when the lock stays taken longer than --lock-wait.`,
    )
    .action(async (options: GcOptions) => {
      const url = databaseUrl(options.url);
      const progress = new ProgressLine('gc');
      const began = performance.now();
      const { deleted, batches } = await withClient(
        url,
        async (client) => {
          try {
            // Only for the bar: the expiry and revocation indexes make this cheap, and a
            // role that row-level security hides rows from just sees a counter.
            const total = process.stderr.isTTY ? await collectable(client) : undefined;
            const run = await collectOn(client, {
              batchSize: options.batchSize,
              actor: cliActor(),
              lockWaitMs: options.lockWait * 1000,
              onBatch: (deleted) =>
                progress.update(
                  deleted,
                  total ? Math.max(total, deleted) : undefined,
                  'collecting',
                ),
            });
            if (!run.ran) {
              throw new CliError(
                `another process has held the GC lock for more than ${options.lockWait} s; nothing was collected`,
                ExitCode.failed,
              );
            }
            return run;
          } finally {
            progress.clear();
          }
        },
        { permission: 'gc needs a role granted sessions_app or sessions_admin' },
      );
      const seconds = ((performance.now() - began) / 1000).toFixed(1);
      process.stdout.write(
        `${deleted} ${deleted === 1 ? 'session' : 'sessions'} collected (${batches} ${batches === 1 ? 'batch' : 'batches'}, ${seconds} s)\n`,
      );
    });
}

async function collectable(client: pg.Client): Promise<number> {
  const { rows } = await client.query<{ n: string }>(
    'SELECT count(*) AS n FROM sessions.session WHERE expires_at <= now() OR revoked_at IS NOT NULL',
  );
  return Number(rows[0]?.n ?? 0);
}
