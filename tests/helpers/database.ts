import pg from 'pg';
import { createTestDatabase, type TestDatabase } from '../../src/testing/index.js';

/** One migrated database per test file, with a superuser pool for assertions. */
export async function setupDatabase(): Promise<{ db: TestDatabase; admin: pg.Pool }> {
  const db = await createTestDatabase();
  const admin = new pg.Pool({ connectionString: db.url, max: 4 });
  admin.on('error', () => {});
  return { db, admin };
}

/** Rows of the session table for a tenant, read as superuser (no row-level security). */
export async function sessionRows(admin: pg.Pool, tenant = 'default') {
  const result = await admin.query(
    `SELECT id, user_id, data, version::int AS version, revoked_at, revoked_reason,
            encode(token_hash, 'hex') AS token_hash, last_seen_at, idle_expires_at, absolute_expires_at
       FROM sessions.session WHERE tenant_id = $1 ORDER BY created_at, id`,
    [tenant],
  );
  return result.rows;
}
