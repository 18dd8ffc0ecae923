import { Command } from 'commander';
import { refuseOnCitus } from './citus-guard.js';
import { cliActor, withClient } from './connection.js';
import { databaseUrl } from './database-url.js';
import { text } from './option-parsers.js';
import { counted } from './output-format.js';

interface EraseOptions {
  readonly user: string;
  readonly tenant: string;
  readonly pseudonym?: string;
  readonly url?: string;
}

export function eraseCommand(): Command {
  return new Command('erase')
    .description('erase one user: revoke and delete their sessions, pseudonymise their events')
    .requiredOption('--user <id>', 'the user id', text(200))
    .requiredOption('--tenant <tenant>', 'the tenant the user belongs to', text(200))
    .option(
      '--pseudonym <text>',
      'what replaces the user id in the events (default: erased:<uuid>)',
      text(200),
    )
    .option('--url <url>', 'database URL (default: $DATABASE_URL) of the primary')
    .addHelpText(
      'after',
      `
In one transaction: revokes the user's live sessions (every app node drops them at
once), deletes all their sessions with their previous tokens, replaces the user id in
every event about them with the pseudonym (the actor too where it is the middleware's
user:<id>) and clears the addresses and user agents there, and logs one \`erased\` event per session under the pseudonym, with the actor
cli:<os user>. The reporting views keep their counts; nothing names the user any
more. Runs sessions.erase_user(), which only a role granted sessions_admin may call.
Exits 0 also when the user had nothing left to erase.`,
    )
    .action(async (options: EraseOptions) => {
      const result = await withClient(
        databaseUrl(options.url),
        async (client) => {
          await refuseOnCitus(client, 'pg-sessions erase');
          await client.query('BEGIN');
          try {
            await client.query(`SELECT set_config('sessions.actor', $1, true)`, [cliActor()]);
            const { rows } = await client.query<{
              sessions_deleted: number;
              events_rewritten: number;
              pseudonym_used: string;
            }>('SELECT * FROM sessions.erase_user($1, $2, $3)', [
              options.tenant,
              options.user,
              options.pseudonym ?? null,
            ]);
            await client.query('COMMIT');
            return rows[0]!;
          } catch (error) {
            await client.query('ROLLBACK').catch(() => {});
            throw error;
          }
        },
        { permission: 'erasing needs a role granted sessions_admin' },
      );
      process.stdout.write(
        `erased user ${options.user} in tenant ${options.tenant}: ${counted(result.sessions_deleted, 'session')} deleted, ${counted(result.events_rewritten, 'event')} rewritten as ${result.pseudonym_used}\n`,
      );
    });
}
