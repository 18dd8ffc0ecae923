/**
 * Exit codes of the `pg-sessions` command, the same for every subcommand, so that
 * cron and CI can branch on them:
 *
 * - `0` ok: the command did what was asked (a revocation that matched no live
 *   session included: the state asked for holds).
 * - `1` failed: the command ran and reports a condition that needs a look: pending
 *   or failed migrations, `status` finding a host down or the schema behind the
 *   code, `gc` unable to take its lock, an unexpected database error mid-way.
 * - `2` usage: bad input (an unknown option, a malformed id, a missing reason), or
 *   a database that cannot be reached or used (down, missing, schema not installed,
 *   permission denied): nothing was done.
 */
export const ExitCode = {
  ok: 0,
  /** The command ran and reports a condition: pending migrations, a host down, a failure mid-way. */
  failed: 1,
  /** Bad input, or a database that cannot be reached or used: nothing was done. */
  usage: 2,
} as const;

/** An error the CLI prints as one line, without a stack trace. */
export class CliError extends Error {
  override readonly name = 'CliError';
  constructor(
    message: string,
    readonly exitCode: number = ExitCode.usage,
  ) {
    super(message);
  }
}
