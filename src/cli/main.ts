import { Command, CommanderError } from 'commander';
import { CliError, ExitCode } from './cli-error.js';
import { migrateCommand } from './migrate-command.js';

/** Builds the `pg-sessions` command; each subcommand lives in its own module. */
export function buildProgram(): Command {
  const program = new Command('pg-sessions')
    .description('PostgreSQL-backed sessions for Koa: schema migrations and operations')
    .exitOverride()
    .showHelpAfterError();
  program.addCommand(migrateCommand());
  for (const command of program.commands) command.exitOverride();
  return program;
}

/** Runs the CLI: errors become one line on stderr and a documented exit code. */
export async function main(argv: readonly string[] = process.argv): Promise<void> {
  try {
    await buildProgram().parseAsync([...argv]);
  } catch (error) {
    if (error instanceof CommanderError) {
      // Commander already printed the message (or the help, for --help).
      process.exitCode = error.exitCode === 0 ? ExitCode.ok : ExitCode.usage;
      return;
    }
    if (error instanceof CliError) {
      process.stderr.write(`pg-sessions: ${error.message}\n`);
      process.exitCode = error.exitCode;
      return;
    }
    const message = error instanceof Error ? error.message : String(error);
    process.stderr.write(`pg-sessions: ${message}\n`);
    process.exitCode = ExitCode.failed;
  }
}
