import { debuglog } from 'node:util';
import { Command, CommanderError } from 'commander';
import { citusCommand } from './citus-command.js';
import { CliError, ExitCode } from './cli-error.js';
import { eraseCommand } from './erase-command.js';
import { exportCommand } from './export-command.js';
import { gcCommand } from './gc-command.js';
import { migrateCommand } from './migrate-command.js';
import { pruneEventsCommand } from './prune-events-command.js';
import { reportCommand } from './report-command.js';
import { revokeCommand } from './revoke-command.js';
import { seedCommand } from './seed-command.js';
import { statusCommand } from './status-command.js';
import { packageVersion } from './version.js';

/** Builds the `pg-sessions` command; each subcommand lives in its own module. */
export function buildProgram(): Command {
  const program = new Command('pg-sessions')
    .description('PostgreSQL-backed sessions for Koa: schema migrations and operations')
    .version(packageVersion(), '-V, --version', 'print the version of pg-sessions')
    .addHelpText(
      'after',
      `
Every command takes --url or reads DATABASE_URL. Exit codes: 0 ok; 1 the command
ran and reports a condition (pending migrations, a host down, a failure mid-way);
2 bad input or a database that cannot be reached or used (nothing was done).`,
    );
  program.addCommand(migrateCommand());
  program.addCommand(gcCommand());
  program.addCommand(revokeCommand());
  program.addCommand(exportCommand());
  program.addCommand(eraseCommand());
  program.addCommand(pruneEventsCommand());
  program.addCommand(reportCommand());
  program.addCommand(seedCommand());
  program.addCommand(statusCommand());
  program.addCommand(citusCommand());
  overrideExits(program);
  return program;
}

// Commander calls process.exit itself unless every command, nested ones included
// (migrate up/down/status), throws instead: then main() maps it to our exit codes.
// Its errors get our one-line form, `pg-sessions: <message>`, like ours.
function overrideExits(command: Command): void {
  command.exitOverride();
  command.configureOutput({
    outputError: (text, write) => write(`pg-sessions: ${text.replace(/^error: /, '')}`),
  });
  for (const subcommand of command.commands) overrideExits(subcommand);
}

// NODE_DEBUG=pg-sessions:cli prints the stack the one-line message leaves out.
const trace = debuglog('pg-sessions:cli');

/** Runs the CLI: errors become one line on stderr and a documented exit code. */
export async function main(argv: readonly string[] = process.argv): Promise<void> {
  // `pg-sessions report … | head`: the reader left, which is no error of ours.
  process.stdout.on('error', (error: NodeJS.ErrnoException) => {
    if (error.code === 'EPIPE') process.exit(process.exitCode ?? ExitCode.ok);
    throw error;
  });
  try {
    await buildProgram().parseAsync([...argv]);
  } catch (error) {
    if (error instanceof CommanderError) {
      // Commander already printed the message (or the help, for --help).
      process.exitCode = error.exitCode === 0 ? ExitCode.ok : ExitCode.usage;
      return;
    }
    trace('%s', error instanceof Error ? (error.stack ?? error.message) : error);
    if (error instanceof CliError) {
      process.stderr.write(`pg-sessions: ${error.message}\n`);
      process.exitCode = error.exitCode;
      return;
    }
    const message = error instanceof Error ? error.message : String(error);
    process.stderr.write(`pg-sessions: ${message.split('\n')[0]}\n`);
    process.exitCode = ExitCode.failed;
  }
}
