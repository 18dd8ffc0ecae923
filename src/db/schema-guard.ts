import type pg from 'pg';
import { SessionSchemaError, SessionStoreUnavailableError } from '../errors.js';
import { expectedMigrationVersions } from './migrator.js';
import { isUnavailableError, SqlState, sqlStateOf } from './sqlstate.js';

/** The oldest PostgreSQL the schema runs on. */
export const MIN_SERVER_VERSION_NUM = 150_000;

/**
 * Checks the server version and that the applied migrations are exactly the ones this
 * code ships, so a missing or newer schema fails at start with the command to run.
 */
export async function checkSchema(pool: pg.Pool | pg.ClientBase): Promise<void> {
  let versionNum: number;
  let applied: string[];
  try {
    const server = await pool.query<{ v: string }>(
      `SELECT current_setting('server_version_num') AS v`,
    );
    versionNum = Number(server.rows[0]?.v);
    const migrations = await pool.query<{ version: string }>(
      'SELECT version FROM sessions.schema_migrations ORDER BY version',
    );
    applied = migrations.rows.map((row) => row.version);
  } catch (error) {
    if (isUnavailableError(error)) {
      throw new SessionStoreUnavailableError('the session database is unreachable', {
        cause: error,
      });
    }
    if (sqlStateOf(error) === SqlState.undefinedTable || sqlStateOf(error) === '3F000') {
      throw new SessionSchemaError(
        'the sessions schema is not installed: run `pg-sessions migrate up`',
        { cause: error },
      );
    }
    throw new SessionSchemaError(
      `cannot read the sessions schema version: ${(error as Error).message}`,
      {
        cause: error,
      },
    );
  }
  if (versionNum < MIN_SERVER_VERSION_NUM) {
    throw new SessionSchemaError(
      `PostgreSQL ${versionNum} is too old: pg-sessions needs 15 or newer`,
    );
  }
  const expected = await expectedMigrationVersions();
  const pending = expected.filter((version) => !applied.includes(version));
  const unknown = applied.filter((version) => !expected.includes(version));
  if (pending.length > 0) {
    throw new SessionSchemaError(
      `the sessions schema lacks migrations ${pending.join(', ')}: run \`pg-sessions migrate up\``,
    );
  }
  if (unknown.length > 0) {
    throw new SessionSchemaError(
      `the sessions schema has migrations ${unknown.join(', ')} that this pg-sessions does not know: upgrade the package`,
    );
  }
}
