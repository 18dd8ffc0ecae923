// The session rows as the request path and the cache hold them, and the mapping from
// the database's rows: types and pure functions only.
import type { DataSnapshot } from '../session.js';

/** A live session row, as the middleware and the cache hold it. */
export interface SessionRecord {
  readonly id: string;
  readonly tenantId: string;
  readonly tokenHash: Buffer;
  readonly userId: string | null;
  readonly data: Readonly<Record<string, unknown>>;
  readonly version: number;
  readonly createdAt: Date;
  readonly lastSeenAt: Date;
  readonly idleExpiresAt: Date;
  readonly absoluteExpiresAt: Date;
  /** Computed by the database's clock at load: last_seen_at is older than the touch interval. */
  readonly touchDue: boolean;
  /** When the current token was issued (creation or the last rotation). */
  readonly tokenIssuedAt: Date;
  /** Computed by the database's clock: the token is older than `rotateInterval` (never without it). */
  readonly rotationDue: boolean;
  /** `data` key by key, kept with cached rows (see {@link DataSnapshot}). */
  readonly snapshot?: DataSnapshot;
  /**
   * Loaded by a token a rotation replaced: `'grace'` within its grace period (the
   * request may use the session but never hands out a token), `'reused'` past it
   * (evidence of a copied token). `tokenHash` is the session's current hash.
   */
  readonly rotatedAway?: 'grace' | 'reused';
}

/**
 * Why a presented token found no live session: its row is still there (until garbage
 * collection removes it) but was revoked or has expired. `ctx.sessions.ended`.
 */
export interface SessionEnd {
  /** `revoked`: revoke(), revokeUser(), `maxSessionsPerUser` or `pg-sessions revoke`; `expired`: idle or absolute timeout. */
  readonly reason: 'revoked' | 'expired';
  /** The revocation's stored reason (`revoked_reason`): `max_sessions`, or what revoke() was given. */
  readonly revokedReason?: string;
  /** When it ended: the revocation's time, or the expiry that passed. */
  readonly endedAt: Date;
  /** The ended session's public id. */
  readonly id: string;
}

/**
 * What a presented token finds: its live row, or the row that ended (never a
 * {@link SessionRecord}, so it cannot be served or cached as live), or nothing.
 */
export type PresentedRow =
  | { readonly live: SessionRecord; readonly ended?: undefined }
  | {
      readonly live?: undefined;
      readonly ended: SessionEnd;
      /** The ended row's data (koa-session's `session:expired` carries it as `value`). */
      readonly data: Readonly<Record<string, unknown>>;
    }
  | undefined;

/** One of a user's sessions, for a "your devices" page. Never carries data or the token. */
export interface DeviceSession {
  readonly id: string;
  readonly createdAt: Date;
  readonly lastSeenAt: Date;
  readonly expiresAt: Date;
  readonly ip: string | null;
  readonly userAgent: string | null;
  /** The name its user gave it (`ctx.sessions.rename()`), or null. */
  readonly name: string | null;
}

/** A session a revocation ended: its id, and the hash its cache entry is keyed by. */
export interface EndedSession {
  readonly id: string;
  readonly tokenHash: Buffer;
}

/** The request behind a rotation or a token's reuse, for the audit log (never the token). */
export interface RequestOrigin {
  readonly ip: string | null;
  readonly userAgent: string | null;
}

/** Durations in milliseconds that shape the expiry columns, and the write durability. */
export interface ExpiryPolicy {
  readonly idleTimeoutMs: number;
  readonly absoluteTimeoutMs: number;
  readonly touchIntervalMs: number;
  /** Periodic rotation: a token older than this is due (undefined: never). */
  readonly rotateIntervalMs?: number;
  /** How long a rotated-away token still reaches its session. */
  readonly rotationGraceMs: number;
  /** `durability: 'relaxed'`: data writes and anonymous creations commit asynchronously. */
  readonly relaxed?: boolean;
  /** `batchWrites`: a save or creation may share a transaction with others waiting. */
  readonly batchWrites?: boolean;
}

export interface SessionRow {
  id: string;
  tenant_id: string;
  token_hash: Buffer;
  user_id: string | null;
  data: Record<string, unknown>;
  version: string;
  created_at: Date;
  last_seen_at: Date;
  idle_expires_at: Date;
  absolute_expires_at: Date;
  token_issued_at: Date;
  touch_due: boolean;
  rotation_due: boolean;
}

/** A row as {@link SessionStore.lookup} reads it: with why it ended, if it did. */
export interface PresentedSessionRow extends SessionRow {
  ended: 'revoked' | 'expired' | null;
  revoked_reason: string | null;
  ended_at: Date;
  /** NULL when found by its current token; for a previous token, whether its grace lasts. */
  in_grace: boolean | null;
}

export function toRecord(row: SessionRow): SessionRecord {
  return {
    id: row.id,
    tenantId: row.tenant_id,
    tokenHash: row.token_hash,
    userId: row.user_id,
    data: row.data,
    version: Number(row.version),
    createdAt: row.created_at,
    lastSeenAt: row.last_seen_at,
    idleExpiresAt: row.idle_expires_at,
    absoluteExpiresAt: row.absolute_expires_at,
    touchDue: row.touch_due,
    tokenIssuedAt: row.token_issued_at,
    rotationDue: row.rotation_due,
  };
}

/**
 * A presented token's row as the request sees it: live, or ended with its cause. Pure,
 * so the unit tests check that an ended row never comes out as a live record.
 */
export function toPresentedRow(row: PresentedSessionRow): PresentedRow {
  if (row.ended === null) {
    const record = toRecord(row);
    return {
      live:
        row.in_grace === null
          ? record
          : { ...record, rotatedAway: row.in_grace ? 'grace' : 'reused' },
    };
  }
  return {
    ended: {
      reason: row.ended,
      ...(row.ended === 'revoked' && row.revoked_reason !== null
        ? { revokedReason: row.revoked_reason }
        : {}),
      endedAt: row.ended_at,
      id: row.id,
    },
    data: row.data,
  };
}

/** What a save wrote: the row's new columns; `data` only when another request changed it too. */
export interface SavedColumns {
  readonly tokenHash: Buffer;
  readonly userId: string | null;
  /** The stored data, when it differs from the loaded data with this request's delta. */
  readonly data: Record<string, unknown> | null;
  readonly version: number;
  readonly lastSeenAt: Date;
  readonly idleExpiresAt: Date;
  readonly absoluteExpiresAt: Date;
  readonly tokenIssuedAt: Date;
}

/** create_session's row (times in ms since the epoch). */
export interface CreatedRow {
  id: string;
  version: string;
  created_ms: number;
  last_seen_ms: number;
  idle_expires_ms: number;
  absolute_expires_ms: number;
  token_issued_ms: number;
}

/** save_session's row (times in ms since the epoch; data only when another request wrote too). */
export interface SavedRow {
  token_hash: Buffer;
  user_id: string | null;
  data: Record<string, unknown> | null;
  version: string;
  last_seen_ms: number;
  idle_expires_ms: number;
  absolute_expires_ms: number;
  token_issued_ms: number;
}

/** save_session's row as the request path keeps it. */
export function savedColumns(row: SavedRow): SavedColumns {
  return {
    tokenHash: row.token_hash,
    userId: row.user_id,
    data: row.data,
    version: Number(row.version),
    lastSeenAt: new Date(row.last_seen_ms),
    idleExpiresAt: new Date(row.idle_expires_ms),
    absoluteExpiresAt: new Date(row.absolute_expires_ms),
    tokenIssuedAt: new Date(row.token_issued_ms),
  };
}
