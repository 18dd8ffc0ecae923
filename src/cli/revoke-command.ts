import { Command } from 'commander';
import { isDistributed } from '../citus/topology.js';
import { propagatedSettings } from '../db/runner.js';
import { refuseOnCitus } from './citus-guard.js';
import { CliError } from './cli-error.js';
import { cliActor, withClient } from './connection.js';
import { databaseUrl } from './database-url.js';
import { sessionId, text } from './option-parsers.js';
import { counted } from './output-format.js';

interface RevokeOptions {
  readonly session?: string;
  readonly user?: string;
  readonly tenant?: string;
  readonly allTenants?: boolean;
  readonly reason: string;
  readonly url?: string;
}

export function revokeCommand(): Command {
  return new Command('revoke')
    .description(
      'revoke one session, or every live session of a user; every app node drops it at once (NOTIFY)',
    )
    .option(
      '--session <id>',
      'the session id (a UUID: ctx.sessions.id, the user_devices report)',
      sessionId,
    )
    .option('--user <id>', 'every live session of this user', text(200))
    .option(
      '--tenant <tenant>',
      'only in this tenant (with --user, this or --all-tenants is required)',
      text(200),
    )
    .option('--all-tenants', "with --user: the user's sessions in every tenant")
    .requiredOption('--reason <text>', 'why, for the audit log (1 to 200 characters)', text(200))
    .option('--url <url>', 'database URL (default: $DATABASE_URL) of the primary')
    .addHelpText(
      'after',
      `
The event log records the actor as cli:<os user>. Exits 0 also when no live
session matched (already revoked, expired or never there): the state asked for
holds, so a retried or repeated revocation in a script is not an error. The
counts printed say what happened: per tenant, then the total.

A user id names a user within a tenant: --user needs --tenant <tenant>, or
--all-tenants to end that id's sessions in every tenant. --session finds the
session in whichever tenant holds it (ids are unique), or only in --tenant.`,
    )
    .action(async (options: RevokeOptions) => {
      if ((options.session === undefined) === (options.user === undefined)) {
        throw new CliError('revoke needs exactly one of --session <id> and --user <id>');
      }
      if (options.tenant !== undefined && options.allTenants) {
        throw new CliError('revoke takes --tenant <tenant> or --all-tenants, not both');
      }
      if (options.user !== undefined && options.tenant === undefined && !options.allTenants) {
        throw new CliError(
          'revoke --user needs --tenant <tenant>, or --all-tenants to revoke in every tenant',
        );
      }
      const url = databaseUrl(options.url);
      const revoked = await withClient(
        url,
        async (client) => {
          const citus = await isDistributed(client);
          if (citus && options.user !== undefined) {
            await refuseOnCitus(client, 'pg-sessions revoke --user');
          }
          await client.query('BEGIN');
          try {
            if (citus) {
              // revoke_session runs on the session's worker: the settings must reach it.
              await client.query(propagatedSettings(options.tenant ?? '', cliActor()));
            } else {
              await client.query(
                `SELECT set_config('sessions.actor', $1, true), set_config('sessions.tenant', $2, true)`,
                [cliActor(), options.tenant ?? ''],
              );
            }
            const result =
              options.session !== undefined
                ? await client.query('SELECT * FROM sessions.revoke_session($1, $2, $3)', [
                    options.session,
                    options.reason,
                    options.tenant ?? null,
                  ])
                : await client.query('SELECT * FROM sessions.revoke_user($1, $2, $3)', [
                    options.user,
                    options.reason,
                    options.tenant ?? null,
                  ]);
            await client.query('COMMIT');
            return result.rows as { tenant_id: string }[];
          } catch (error) {
            await client.query('ROLLBACK').catch(() => {});
            throw error;
          }
        },
        { permission: 'revoking needs a role granted sessions_admin, or EXECUTE on the function' },
      );
      process.stdout.write(revocationReport(revoked, options.user !== undefined));
    });
}

const sessions = (count: number) => counted(count, 'session');

/**
 * What revoke prints: for --user, one line per tenant that had sessions, then the
 * total; for --session, the total alone.
 */
export function revocationReport(
  revoked: readonly { readonly tenant_id: string }[],
  perTenant: boolean,
): string {
  const counts = new Map<string, number>();
  for (const row of revoked) counts.set(row.tenant_id, (counts.get(row.tenant_id) ?? 0) + 1);
  const lines = perTenant
    ? [...counts]
        .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
        .map(([tenant, count]) => `tenant ${tenant}: ${sessions(count)} revoked`)
    : [];
  lines.push(
    perTenant
      ? `total: ${sessions(revoked.length)} revoked in ${counts.size} ${counts.size === 1 ? 'tenant' : 'tenants'}`
      : `${sessions(revoked.length)} revoked`,
  );
  return `${lines.join('\n')}\n`;
}
