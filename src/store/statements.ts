// The request path's statements: fixed text for the functions of migrations 5 to 7
// (planned once per connection, never rebuilt per request), the lock-mode lookup, and
// the liveness rule every other statement shares, and which writes may share a batch.
import { sql } from 'kysely';
import { queryBuilder as db } from '../db/runner.js';
import type { BatchTicket } from '../db/write-batch.js';
import type { ExpiryPolicy, RequestOrigin } from './records.js';

/**
 * The first key of the sessions' advisory locks ('pgsl'); the second is the hash of the
 * session id. ('pgse' with 1, 2 and 3 are the migration, GC and event-pruning locks.)
 */
export const SESSION_LOCK_CLASS = 0x7067736c;

export const interval = (ms: number) => `${ms} milliseconds`;

/**
 * Live means: not revoked, and neither expiry passed by the database's clock. Written
 * as `expires_at`'s own definition, not the column: `expires_at > now()` would make the
 * planner read the end of session_expires_at_idx (where garbage collection leaves its
 * dead entries) whenever now() lies outside the column's histogram (issue 18).
 */
export const live = sql<boolean>`revoked_at IS NULL AND least(idle_expires_at, absolute_expires_at) > now()`;

// The request path's statements as fixed text: planned once per connection inside their
// functions (migrations 5 and 6), and never rebuilt by Kysely per request.
// `$5` of a lookup is the session the token names (migration 12), or NULL for a token
// issued before tokens named their session.
export const LOOKUP =
  'SELECT * FROM sessions.lookup_session($1, $2, $3::interval, $4::interval, $5::uuid) LIMIT 1';
export const LOOKUP_LIVE =
  'SELECT * FROM sessions.lookup_session($1, $2, $3::interval, $4::interval, $5::uuid) WHERE ended IS NULL LIMIT 1';
export const CREATE =
  'SELECT * FROM sessions.create_session($1, $2, $3, $4::jsonb, $5, $6::inet, $7, $8::interval, $9::interval, $10, $11::uuid)';
export const SAVE =
  'SELECT * FROM sessions.save_session($1, $2, $3::uuid, $4, $5::jsonb, $6::text[], $7::jsonb, $8, $9, $10, $11, $12::inet, $13, $14::interval, $15::interval, $16)';
/** A new session's row by its token, in the shape create_session returns: a retry's check. */
export const CREATED = `SELECT id, version, (extract(epoch FROM created_at) * 1000)::float8 AS created_ms,
    (extract(epoch FROM last_seen_at) * 1000)::float8 AS last_seen_ms,
    (extract(epoch FROM idle_expires_at) * 1000)::float8 AS idle_expires_ms,
    (extract(epoch FROM absolute_expires_at) * 1000)::float8 AS absolute_expires_ms,
    (extract(epoch FROM token_issued_at) * 1000)::float8 AS token_issued_ms
  FROM sessions.session WHERE tenant_id = $1 AND token_hash = $2`;
/**
 * A save's row when it already holds the delta (a retry's check, in the shape
 * save_session returns): newer than loaded, every patched key as written, every removed
 * key gone, the new token and the user in place.
 */
export const SAVED = `SELECT token_hash, user_id, data, version,
    (extract(epoch FROM last_seen_at) * 1000)::float8 AS last_seen_ms,
    (extract(epoch FROM idle_expires_at) * 1000)::float8 AS idle_expires_ms,
    (extract(epoch FROM absolute_expires_at) * 1000)::float8 AS absolute_expires_ms,
    (extract(epoch FROM token_issued_at) * 1000)::float8 AS token_issued_ms
  FROM sessions.session
 WHERE tenant_id = $1 AND id = $2::uuid AND version > $3
   AND NOT EXISTS (SELECT FROM jsonb_each($4::jsonb) AS p(key, value) WHERE data -> p.key IS DISTINCT FROM p.value)
   AND NOT (data ?| $5::text[])
   AND ($6::bytea IS NULL OR token_hash = $6::bytea)
   AND (NOT $7 OR user_id IS NOT DISTINCT FROM $8)`;

/**
 * Lock mode's load (`sessions.lock_session()`, migration 7): the session's
 * transaction-scoped advisory lock, then the lookup with a snapshot taken after the lock
 * was granted, in one statement; `live` keeps live rows only, as {@link LOOKUP_LIVE}.
 */
export function lockedLookup(live: boolean): string {
  return `SELECT * FROM sessions.lock_session($1, $2, ${SESSION_LOCK_CLASS}, $3::interval, $4::interval, $6, $5::uuid)${live ? ' WHERE ended IS NULL' : ''} LIMIT 1`;
}

/** Strict mode's expectations as save_session reads them: `{"key": [json]}`, `[]` for absent. */
export function expectationsJson(expected: ReadonlyMap<string, string | undefined>): string {
  const parts: string[] = [];
  for (const [key, json] of expected) {
    parts.push(`${JSON.stringify(key)}:${json === undefined ? '[]' : `[${json}]`}`);
  }
  return `{${parts.join(',')}}`;
}

/** A policy's durations as the functions' interval literals, made once per policy. */
interface PolicyIntervals {
  /** lookup_session: touch, rotate. */
  readonly lookup: readonly (string | null)[];
  /** create_session: idle, absolute. */
  readonly create: readonly (string | null)[];
  /** save_session: idle, grace. */
  readonly save: readonly (string | null)[];
}

const intervalsByPolicy = new WeakMap<ExpiryPolicy, PolicyIntervals>();

export function intervalsOf(policy: ExpiryPolicy): PolicyIntervals {
  let intervals = intervalsByPolicy.get(policy);
  if (!intervals) {
    const touch = interval(policy.touchIntervalMs);
    const rotate = policy.rotateIntervalMs === undefined ? null : interval(policy.rotateIntervalMs);
    const idle = interval(policy.idleTimeoutMs);
    intervals = {
      lookup: [touch, rotate],
      create: [idle, interval(policy.absoluteTimeoutMs)],
      save: [idle, interval(policy.rotationGraceMs)],
    };
    intervalsByPolicy.set(policy, intervals);
  }
  return intervals;
}

/**
 * A rotated-away token presented after its grace period: marks it reused (its trigger
 * logs both requests) and revokes its session with reason `token_reused`, in one
 * statement; the triggers notify every node.
 */
export function reusedTokenRevocation(
  tenantId: string,
  sessionId: string,
  tokenHash: Buffer,
  origin: RequestOrigin,
) {
  return db
    .with('reused', (qb) =>
      qb
        .updateTable('sessions.previous_token')
        .set({
          reused_at: sql`now()`,
          reused_ip: origin.ip,
          reused_user_agent: origin.userAgent,
        })
        .where('tenant_id', '=', tenantId)
        // The session's own rows only: one shard on Citus.
        .where('session_id', '=', sessionId)
        .where('token_hash', '=', tokenHash)
        .where('reused_at', 'is', null)
        .where(sql<boolean>`grace_expires_at <= now()`)
        .returning('session_id'),
    )
    .updateTable('sessions.session')
    .from('reused')
    .set({ revoked_at: sql`now()`, revoked_reason: 'token_reused' })
    .where('tenant_id', '=', tenantId)
    .where('id', '=', sessionId)
    .whereRef('id', '=', 'reused.session_id')
    .where(live)
    .returning(['id', 'token_hash', 'user_id']);
}

/**
 * The batch a write of `kind` may join (`batchWrites`), or none. Writes that commit
 * relaxed (`mayRelax` and the policy's `durability: 'relaxed'`) never share a
 * transaction with durable ones. `order`: the row it locks; a new row locks nothing
 * another write waits for, so any order will do.
 */
export function batchTicket(
  policy: ExpiryPolicy,
  kind: 'create' | 'save',
  order: string,
  mayRelax: boolean,
): BatchTicket | undefined {
  if (!policy.batchWrites) return undefined;
  return { key: policy.relaxed && mayRelax ? `${kind} relaxed` : kind, order };
}
