import { connectionTarget } from '../db/connection-config.js';
import { CliError } from './cli-error.js';

/** The connection URL: `--url` first, then `DATABASE_URL`. */
export function databaseUrl(option: string | undefined): string {
  const url = option ?? process.env.DATABASE_URL;
  if (!url) throw new CliError('no database given: pass --url or set DATABASE_URL');
  try {
    new URL(url);
  } catch {
    throw new CliError('the database URL does not parse (expected postgres://user@host:port/db)');
  }
  try {
    connectionTarget(url);
  } catch (error) {
    throw new CliError(`the database URL's ${(error as Error).message}`);
  }
  return url;
}
