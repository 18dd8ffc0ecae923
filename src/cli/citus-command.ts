import { Command } from 'commander';
import { distributeOnCitus } from '../citus/distribute.js';
import { SessionSchemaError } from '../errors.js';
import { CliError, ExitCode } from './cli-error.js';
import { withClient } from './connection.js';
import { databaseUrl } from './database-url.js';
import { wholeNumber } from './option-parsers.js';

interface DistributeOptions {
  readonly shardCount?: number;
  readonly url?: string;
}

export function citusCommand(): Command {
  const citus = new Command('citus').description(
    'run the sessions schema on a Citus cluster (docs/scaling.md)',
  );
  citus.addCommand(
    new Command('distribute')
      .description(
        'distribute the migrated tables by session id and run the request path on the worker holding each session',
      )
      .option(
        '--shard-count <n>',
        'shards per table when first distributed (default: citus.shard_count)',
        wholeNumber(1, 64_000),
      )
      .option('--url <url>', 'database URL (default: $DATABASE_URL) of the coordinator')
      .addHelpText(
        'after',
        `
Run it as the owner of the sessions schema (the role that ran \`migrate up\`), on
the coordinator, after \`migrate up\` and after every later \`migrate up\`. Each step
first checks whether it is done: running it again changes nothing, and a run that
stopped part way finishes. Exits 2, changing nothing, on a server without Citus or
on a worker. App nodes see the distribution when they start: restart them after.`,
      )
      .action(async (options: DistributeOptions) => {
        const url = databaseUrl(options.url);
        const steps = await withClient(
          url,
          async (client) => {
            try {
              return await distributeOnCitus(client, { shardCount: options.shardCount });
            } catch (error) {
              if (error instanceof SessionSchemaError) {
                throw new CliError(error.message, ExitCode.usage);
              }
              throw error;
            }
          },
          { permission: 'distribute needs the owner of the sessions schema' },
        );
        for (const { step, changed } of steps) {
          process.stdout.write(`${changed ? 'done   ' : 'already'} ${step}\n`);
        }
        const changed = steps.filter((step) => step.changed).length;
        process.stdout.write(
          changed === 0
            ? 'already distributed: nothing changed\n'
            : `distributed (${changed} of ${steps.length} steps changed something)\n`,
        );
      }),
  );
  return citus;
}
