import { Command } from 'commander';
import { CliError } from './cli-error.js';
import { cliActor, withClient } from './connection.js';
import { databaseUrl } from './database-url.js';
import { sessionId, text } from './option-parsers.js';

interface RevokeOptions {
  readonly session?: string;
  readonly user?: string;
  readonly tenant?: string;
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
    .option('--tenant <tenant>', 'only in this tenant (default: every tenant)', text(200))
    .requiredOption('--reason <text>', 'why, for the audit log (1 to 200 characters)', text(200))
    .option('--url <url>', 'database URL (default: $DATABASE_URL) of the primary')
    .addHelpText(
      'after',
      `
The event log records the actor as cli:<os user>. Exits 0 also when no live
session matched (already revoked, expired or never there): the state asked for
holds, so a retried or repeated revocation in a script is not an error. The
count printed says what happened.`,
    )
    .action(async (options: RevokeOptions) => {
      if ((options.session === undefined) === (options.user === undefined)) {
        throw new CliError('revoke needs exactly one of --session <id> and --user <id>');
      }
      const url = databaseUrl(options.url);
      const revoked = await withClient(
        url,
        async (client) => {
          await client.query('BEGIN');
          try {
            await client.query(
              `SELECT set_config('sessions.actor', $1, true), set_config('sessions.tenant', $2, true)`,
              [cliActor(), options.tenant ?? ''],
            );
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
            return result.rowCount ?? 0;
          } catch (error) {
            await client.query('ROLLBACK').catch(() => {});
            throw error;
          }
        },
        { permission: 'revoking needs a role granted sessions_admin, or EXECUTE on the function' },
      );
      process.stdout.write(`${revoked} ${revoked === 1 ? 'session' : 'sessions'} revoked\n`);
    });
}
