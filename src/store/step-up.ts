// Step-up ("sudo mode", migration 8): when the session's user last proved who they are,
// read and set on the session row by the database's clock.
import { CompiledQuery } from 'kysely';
import type { StatementRunner } from '../db/runner.js';

const REAUTHENTICATE = 'SELECT sessions.reauthenticate($1::uuid) AS done';
const AUTHENTICATED_WITHIN =
  'SELECT sessions.authenticated_within($1::uuid, $2::interval) AS fresh';

/**
 * Sets the session's `authenticated_at` to now and logs `reauthenticated` with `actor`;
 * false when the session is not live or has no user. Commits at once, durably.
 */
export async function reauthenticate(
  runner: StatementRunner,
  sessionId: string,
  actor: string,
): Promise<boolean> {
  const { rows } = await runner.write<{ done: boolean }>(
    CompiledQuery.raw(REAUTHENTICATE, [sessionId]),
    { actor },
  );
  return rows[0]?.done === true;
}

/**
 * Whether the session's user proved who they are within `maxAgeMs`, by the database's
 * clock; false for a session that is not live or has no user. Always on the primary:
 * a replica may not have replayed the sign-in yet.
 */
export async function authenticatedWithin(
  runner: StatementRunner,
  sessionId: string,
  maxAgeMs: number,
): Promise<boolean> {
  const { rows } = await runner.readPrimary<{ fresh: boolean | null }>(
    CompiledQuery.raw(AUTHENTICATED_WITHIN, [sessionId, `${maxAgeMs} milliseconds`]),
  );
  return rows[0]?.fresh === true;
}
