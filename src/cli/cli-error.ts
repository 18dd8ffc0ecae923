/** Exit codes of the `pg-sessions` command. */
export const ExitCode = {
  ok: 0,
  /** The command ran and reports a condition: pending migrations, a failed migration. */
  failed: 1,
  /** Bad input or an unreachable database: nothing was done. */
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
