import type pg from 'pg';
import { isDistributed } from '../citus/topology.js';
import { CliError, ExitCode } from './cli-error.js';

/**
 * Stops, changing nothing, a command that cannot run on a Citus cluster yet: its
 * SECURITY DEFINER function would reach the workers as sessions_admin, a role that
 * does not log in, and write several workers' sessions in one transaction, which Citus
 * commits in two phases and PostgreSQL refuses after the triggers' NOTIFY.
 */
export async function refuseOnCitus(client: pg.Client, command: string): Promise<void> {
  if (await isDistributed(client)) {
    throw new CliError(
      `${command} does not run on a Citus cluster yet (docs/scaling.md, "What does not run on Citus yet"); nothing was changed`,
      ExitCode.usage,
    );
  }
}
