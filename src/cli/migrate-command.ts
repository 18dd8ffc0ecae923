import { Command } from 'commander';
import { type MigrateAction, MigrationError, migrate } from '../db/migrator.js';
import { CliError, ExitCode } from './cli-error.js';
import { databaseUrl } from './database-url.js';
import { positiveInteger } from './option-parsers.js';

export function migrateCommand(): Command {
  const command = new Command('migrate').description(
    "apply, roll back or list the sessions schema's migrations (dbmate, under an advisory lock)",
  );
  command
    .command('up')
    .description('apply every pending migration (safe to run from several deploys at once)')
    .option('--url <url>', 'database URL (default: $DATABASE_URL)')
    .action(async (options: { url?: string }) => run('up', options));
  command
    .command('down')
    .description('roll back the latest migration, or several with --steps / --all')
    .option('--url <url>', 'database URL (default: $DATABASE_URL)')
    .option('--steps <n>', 'how many migrations to roll back', positiveInteger, 1)
    .option('--all', 'roll back every migration (the schema keeps only its migrations table)')
    .action(async (options: { url?: string; steps: number; all?: boolean }) =>
      run('down', {
        url: options.url,
        steps: options.all ? Number.MAX_SAFE_INTEGER : options.steps,
      }),
    );
  command
    .command('status')
    .description('list applied and pending migrations; exits 1 while any is pending')
    .option('--url <url>', 'database URL (default: $DATABASE_URL)')
    .action(async (options: { url?: string }) => run('status', options));
  return command;
}

async function run(
  action: MigrateAction,
  options: { url?: string; steps?: number },
): Promise<void> {
  const url = databaseUrl(options.url);
  try {
    const result = await migrate(url, action, {
      steps: options.steps,
      onOutput: (text) => process.stdout.write(text),
    });
    if (result.exitCode !== 0) {
      process.exitCode = ExitCode.failed;
    }
  } catch (error) {
    if (error instanceof MigrationError) throw new CliError(error.message);
    throw error;
  }
}
