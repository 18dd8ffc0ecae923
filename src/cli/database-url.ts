import { connectionTarget } from '../db/connection-config.js';
import { CliError } from './cli-error.js';

/** The schemes node-postgres and dbmate both read as PostgreSQL. */
const POSTGRES_SCHEMES = new Set(['postgres:', 'postgresql:']);

/**
 * The connection URL: `--url` first, then `DATABASE_URL`. Anything but a PostgreSQL
 * URL is refused before connecting: node-postgres would otherwise dial whatever host
 * a `mysql://` or `http://` URL names and wait for a server that never answers.
 * (A Unix socket is `postgres:///db?host=/var/run/postgresql`.)
 */
export function databaseUrl(option: string | undefined): string {
  const url = option ?? process.env.DATABASE_URL;
  if (!url) throw new CliError('no database given: pass --url or set DATABASE_URL');
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    throw new CliError('the database URL does not parse (expected postgres://user@host:port/db)');
  }
  if (!POSTGRES_SCHEMES.has(parsed.protocol)) {
    throw new CliError(
      `the database URL is ${parsed.protocol}//…, not PostgreSQL (expected postgres:// or postgresql://)`,
    );
  }
  try {
    connectionTarget(url);
  } catch (error) {
    throw new CliError(`the database URL's ${(error as Error).message}`);
  }
  return url;
}
