import { Command } from 'commander';
import type pg from 'pg';
import { SqlState, sqlStateOf } from '../db/sqlstate.js';
import { GC_LOCK } from '../jobs/garbage-collector.js';
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
            return await collect(client, options, progress);
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

async function collect(
  client: pg.Client,
  options: GcOptions,
  progress: ProgressLine,
): Promise<{ deleted: number; batches: number }> {
  // Session-level: every batch below commits on its own and is logged with this actor.
  await client.query("SELECT set_config('sessions.actor', $1, false)", [cliActor()]);
  await lock(client, options.lockWait);
  try {
    // Only for the bar: the expiry and revocation indexes make this cheap, and a
    // role that row-level security hides rows from just sees a counter.
    const total = process.stderr.isTTY
      ? Number(
          (
            await client.query<{ n: number }>(
              'SELECT count(*) AS n FROM sessions.session WHERE expires_at <= now() OR revoked_at IS NOT NULL',
            )
          ).rows[0]?.n ?? 0,
        )
      : undefined;
    let deleted = 0;
    let batches = 0;
    for (;;) {
      const result = await client.query<{ n: number }>('SELECT sessions.gc_batch($1) AS n', [
        options.batchSize,
      ]);
      const count = result.rows[0]?.n ?? 0;
      batches++;
      deleted += count;
      progress.update(deleted, total ? Math.max(total, deleted) : undefined, 'collecting');
      // A short batch: nothing left but rows that requests hold right now (skipped).
      if (count < options.batchSize) return { deleted, batches };
    }
  } finally {
    await client.query('SELECT pg_advisory_unlock($1, $2)', [...GC_LOCK]).catch(() => {});
  }
}

/** The app nodes' GC lock: taken at once when free, else waited for up to `seconds`. */
async function lock(client: pg.Client, seconds: number): Promise<void> {
  const free = await client.query<{ locked: boolean }>(
    'SELECT pg_try_advisory_lock($1, $2) AS locked',
    [...GC_LOCK],
  );
  if (free.rows[0]?.locked) return;
  if (seconds > 0) {
    try {
      await client.query(`SET lock_timeout = '${seconds}s'`);
      await client.query('SELECT pg_advisory_lock($1, $2)', [...GC_LOCK]);
      await client.query('RESET lock_timeout');
      return;
    } catch (error) {
      if (sqlStateOf(error) !== SqlState.lockNotAvailable) throw error;
    }
  }
  throw new CliError(
    `another process has held the GC lock for more than ${seconds} s; nothing was collected`,
    ExitCode.failed,
  );
}
