// Named devices (migration 9): the name a user gives one of their sessions.
import { sql } from 'kysely';
import { queryBuilder as db, type StatementRunner } from '../db/runner.js';
import { live } from './statements.js';

/** The longest device name, in characters (code points), as the column's check says. */
export const MAX_DEVICE_NAME = 100;

/**
 * Names (or, with null, unnames) the live session `sessionId` of `userId` in this
 * tenant; true when there was one. Row-level security keeps it to the tenant, the
 * statement to the user's own sessions.
 */
export async function renameDevice(
  runner: StatementRunner,
  tenantId: string,
  sessionId: string,
  userId: string,
  name: string | null,
  actor: string,
): Promise<boolean> {
  const { rows } = await runner.write(
    db
      .updateTable('sessions.session')
      .set({ device_name: name })
      .where('tenant_id', '=', tenantId)
      .where('id', '=', sql<string>`${sessionId}::uuid`)
      .where('user_id', '=', userId)
      .where(live)
      .returning('id'),
    { actor },
  );
  return rows.length > 0;
}
