import { Command } from 'commander';
import { rolesSql } from '../db/migration-privileges.js';
import { type MigrateAction, type MigrateResult, MigrationError, migrate } from '../db/migrator.js';
import { CliError, ExitCode } from './cli-error.js';
import { databaseUrl } from './database-url.js';
import { positiveInteger, text } from './option-parsers.js';

export function migrateCommand(): Command {
  const command = new Command('migrate').description(
    "apply, roll back or list the sessions schema's migrations (dbmate, under an advisory lock)",
  );
  command
    .command('up')
    .description(
      'apply every pending migration (safe to run from several deploys at once); checks privileges first',
    )
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
  command
    .command('roles')
    .description(
      'print the SQL a superuser or DBA runs once so that a role without CREATEROLE can migrate',
    )
    .option(
      '--owner <role>',
      'the role that will run migrate up (default: the user of --url)',
      text(63),
    )
    .option('--url <url>', 'database URL (default: $DATABASE_URL); only its user name is read')
    .addHelpText(
      'after',
      `
Creates the NOLOGIN roles sessions_app, sessions_auditor and sessions_admin when
missing and grants sessions_admin to the owner. Connects to nothing:

  pg-sessions migrate roles --owner app_owner | psql "$SUPERUSER_URL"`,
    )
    .action((options: { owner?: string; url?: string }) => {
      process.stdout.write(rolesSql(options.owner ?? ownerOf(options.url)));
    });
  return command;
}

function ownerOf(option: string | undefined): string {
  if (option === undefined && !process.env.DATABASE_URL) {
    throw new CliError('migrate roles needs --owner <role> (or a database URL naming its user)');
  }
  const user = decodeURIComponent(new URL(databaseUrl(option)).username);
  if (!user) throw new CliError('the database URL names no user: pass --owner <role>');
  return user;
}

async function run(
  action: MigrateAction,
  options: { url?: string; steps?: number },
): Promise<void> {
  const url = databaseUrl(options.url);
  let result: MigrateResult;
  try {
    result = await migrate(url, action, {
      steps: options.steps,
      // `up` reports in its own words once done; status and down show dbmate's lines.
      onOutput: action === 'up' ? undefined : (output) => process.stdout.write(output),
    });
  } catch (error) {
    if (error instanceof MigrationError) throw new CliError(error.message);
    throw error;
  }
  if (action === 'up') {
    for (const file of result.applied) process.stdout.write(`applied ${file}\n`);
    if (result.exitCode === 0 && result.applied.length === 0) {
      process.stdout.write(`up to date (${result.appliedCount} applied)\n`);
    }
  }
  if (result.error) {
    // A migration that failed rolled back alone (exit 1); anything else is the
    // database or the input refusing (exit 2: nothing was done).
    const { message, migration } = result.error;
    if (migration) {
      throw new CliError(`migration ${migration} failed: ${message}`, ExitCode.failed);
    }
    throw new CliError(message, ExitCode.usage);
  }
  if (result.exitCode !== 0) process.exitCode = ExitCode.failed;
}
