import { Command } from 'commander';
import { refuseOnCitus } from './citus-guard.js';
import { withClient } from './connection.js';
import { databaseUrl } from './database-url.js';
import { text } from './option-parsers.js';

interface ExportOptions {
  readonly user: string;
  readonly tenant: string;
  readonly url?: string;
}

export function exportCommand(): Command {
  return new Command('export')
    .description(
      "print one user's sessions and their events as JSON (a data subject's access request)",
    )
    .requiredOption('--user <id>', 'the user id', text(200))
    .requiredOption('--tenant <tenant>', 'the tenant the user belongs to', text(200))
    .option('--url <url>', 'database URL (default: $DATABASE_URL) of the primary')
    .addHelpText(
      'after',
      `
Prints {tenant, user, exported_at, sessions, events}: every session of the user in the
tenant, live or ended, with its data, addresses, user agents and device name, and every
event about them. Never a token hash. Runs sessions.export_user(), which only a role
granted sessions_admin may call. Exits 0 with empty lists for a user with no sessions.`,
    )
    .action(async (options: ExportOptions) => {
      const document = await withClient(
        databaseUrl(options.url),
        async (client) => {
          await refuseOnCitus(client, 'pg-sessions export');
          const { rows } = await client.query<{ exported: unknown }>(
            'SELECT sessions.export_user($1, $2) AS exported',
            [options.tenant, options.user],
          );
          return rows[0]?.exported;
        },
        { permission: 'exporting needs a role granted sessions_admin' },
      );
      process.stdout.write(`${JSON.stringify(document, null, 2)}\n`);
    });
}
