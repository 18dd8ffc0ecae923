import { userInfo } from 'node:os';
import pg from 'pg';
import { resolveConnectionConfig } from '../db/connection-config.js';
import { describeUrl, messageOf } from '../db/migrator.js';
import { isUnavailableError, SqlState, sqlStateOf } from '../db/sqlstate.js';
import { CliError, ExitCode } from './cli-error.js';

/** Shown in pg_stat_activity, so a DBA can tell the operator's connections from the app's. */
export const CLI_APPLICATION_NAME = 'pg-sessions-cli';

/** What the event log records as the actor of the CLI's changes: `cli:<os user>`. */
export function cliActor(): string {
  let user: string | undefined;
  try {
    user = userInfo().username;
  } catch {
    // No passwd entry (a container running as an arbitrary uid): fall back to the environment.
  }
  return `cli:${user || process.env.USER || process.env.LOGNAME || 'unknown'}`;
}

/**
 * Values as the reports print them: counts as numbers (node-postgres gives int8 and
 * numeric as strings, to be safe), dates as `YYYY-MM-DD` (its default would shift
 * them to local midnight) and timestamps as ISO 8601 in UTC, whatever the server's
 * TimeZone.
 */
const types = {
  getTypeParser(oid: number, format?: string): (text: string) => unknown {
    switch (oid) {
      case 20: // int8
      case 1700: // numeric
        return (text) => {
          const value = Number(text);
          return String(value) === text ? value : text;
        };
      case 1082: // date
        return (text) => text;
      case 1114: // timestamp
      case 1184: {
        // timestamptz
        const parse = pg.types.getTypeParser(oid, 'text') as (text: string) => unknown;
        return (text) => {
          const value = parse(text);
          return value instanceof Date && !Number.isNaN(value.getTime())
            ? value.toISOString()
            : text;
        };
      }
      default:
        return pg.types.getTypeParser(oid, (format ?? 'text') as 'text') as (
          text: string,
        ) => unknown;
    }
  },
};

/** Connects to `url`; a failure becomes one line naming host, port and database. */
export async function connect(url: string): Promise<pg.Client> {
  let client: pg.Client | undefined;
  try {
    // sslmode as libpq means it: the URL's TLS parameters never reach node-postgres.
    const config = await resolveConnectionConfig({
      connectionString: url,
      connectionTimeoutMillis: 10_000,
      application_name: CLI_APPLICATION_NAME,
      types: types as pg.CustomTypesConfig,
    });
    client = new pg.Client(config);
    // A connection dropped between queries surfaces on the next query; never as a crash.
    client.on('error', () => {});
    await client.connect();
  } catch (error) {
    await client?.end().catch(() => {});
    throw new CliError(`cannot connect to ${describeUrl(url)}: ${messageOf(error)}`);
  }
  return client;
}

/** Runs `work` on a fresh connection, closes it, and turns database errors into one line. */
export async function withClient<T>(
  url: string,
  work: (client: pg.Client) => Promise<T>,
  hints: { permission?: string } = {},
): Promise<T> {
  const client = await connect(url);
  try {
    return await work(client);
  } catch (error) {
    throw databaseFailure(error, url, hints);
  } finally {
    await client.end().catch(() => {});
  }
}

/**
 * A database error as the operator should read it. Decided on SQLSTATE: a missing
 * schema or function means migrations to run, a privilege error names the role to use.
 */
export function databaseFailure(
  error: unknown,
  url: string,
  hints: { permission?: string } = {},
): unknown {
  if (error instanceof CliError) return error;
  const code = sqlStateOf(error);
  const message = messageOf(error);
  switch (code) {
    case '3F000': // invalid_schema_name
    case SqlState.undefinedTable:
    case '42883': // undefined_function
      return new CliError(
        `the sessions schema is missing or older than this pg-sessions (${message}): run \`pg-sessions migrate up\``,
      );
    case SqlState.readOnlySqlTransaction:
      return new CliError(
        `${describeUrl(url)} is read-only (a replica?): this command writes, give it the primary`,
      );
    case SqlState.insufficientPrivilege:
      return new CliError(`${message}${hints.permission ? ` (${hints.permission})` : ''}`);
    case '22023': // invalid_parameter_value
    case '22P02': // invalid_text_representation
    case '22007': // invalid_datetime_format
    case '22008': // datetime_field_overflow
      return new CliError(message);
  }
  if (isUnavailableError(error)) {
    return new CliError(`lost ${describeUrl(url)}: ${message}`, ExitCode.failed);
  }
  return error;
}
