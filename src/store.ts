import { sql } from 'kysely';
import { queryBuilder as db, type StatementRunner } from './db/runner.js';
import type { DataSnapshot } from './session.js';

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
  /** `data` key by key, kept with cached rows (see {@link DataSnapshot}). */
  readonly snapshot?: DataSnapshot;
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
}

/** A session a revocation ended: its id, and the hash its cache entry is keyed by. */
export interface EndedSession {
  readonly id: string;
  readonly tokenHash: Buffer;
}

/** Durations in milliseconds that shape the expiry columns. */
export interface ExpiryPolicy {
  readonly idleTimeoutMs: number;
  readonly absoluteTimeoutMs: number;
  readonly touchIntervalMs: number;
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
  touch_due: boolean;
}

/** A row as {@link SessionStore.loadPresented} reads it: with why it ended, if it did. */
export interface PresentedSessionRow extends SessionRow {
  ended: 'revoked' | 'expired' | null;
  revoked_reason: string | null;
  ended_at: Date;
}

const interval = (ms: number) => sql<string>`make_interval(secs => ${ms / 1000})`;

/**
 * Live means: not revoked, and neither expiry passed by the database's clock. Written
 * as `expires_at`'s own definition, not the column: each statement is planned afresh,
 * and `expires_at > now()` would make the planner read the actual end of
 * session_expires_at_idx whenever now() lies outside the column's histogram (always,
 * after a collection and ANALYZE). That end is where garbage collection has just left
 * its dead entries, so every lookup would pay for them in planning until a VACUUM
 * (issue 18). No index or statistic matches this expression, so its selectivity is a
 * default, and the lookups stay index scans on their keys.
 */
const live = sql<boolean>`revoked_at IS NULL AND least(idle_expires_at, absolute_expires_at) > now()`;

function returningRecord(touchIntervalMs: number) {
  return [
    'id',
    'tenant_id',
    'token_hash',
    'user_id',
    'data',
    'version',
    'created_at',
    'last_seen_at',
    'idle_expires_at',
    'absolute_expires_at',
    sql<boolean>`last_seen_at < now() - ${interval(touchIntervalMs)}`.as('touch_due'),
  ] as const;
}

function toRecord(row: SessionRow): SessionRecord {
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
  };
}

/**
 * A presented token's row as the request sees it: live, or ended with its cause. Pure,
 * so the unit tests check that an ended row never comes out as a live record.
 */
export function toPresentedRow(row: PresentedSessionRow): PresentedRow {
  if (row.ended === null) return { live: toRecord(row) };
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

/**
 * The session queries. Each is one statement, built with Kysely and run by a
 * {@link StatementRunner} that has already scoped it to a tenant (row-level security).
 */
export class SessionStore {
  constructor(private readonly expiry: ExpiryPolicy) {}

  /** The live session with this token hash, or undefined. `forUpdate` locks it (lock mode). */
  async load(
    runner: StatementRunner,
    tenantId: string,
    tokenHash: Buffer,
    options: { forUpdate?: boolean; minVersion?: number } = {},
  ): Promise<SessionRecord | undefined> {
    const row = await this.#loadRow(runner, tenantId, tokenHash, {
      ...options,
      includeEnded: false,
    });
    return row ? toRecord(row) : undefined;
  }

  /**
   * What the token a request presented finds, in the same one statement as
   * {@link load}: the live row, or the revoked or expired row with why it ended (so
   * the app can tell the user why they were signed out), or undefined.
   */
  async loadPresented(
    runner: StatementRunner,
    tenantId: string,
    tokenHash: Buffer,
    options: { forUpdate?: boolean; minVersion?: number } = {},
  ): Promise<PresentedRow> {
    const row = await this.#loadRow(runner, tenantId, tokenHash, {
      ...options,
      includeEnded: true,
    });
    return row ? toPresentedRow(row) : undefined;
  }

  async #loadRow(
    runner: StatementRunner,
    tenantId: string,
    tokenHash: Buffer,
    options: { forUpdate?: boolean; minVersion?: number; includeEnded: boolean },
  ): Promise<PresentedSessionRow | undefined> {
    let query = db
      .selectFrom('sessions.session')
      .select([
        ...returningRecord(this.expiry.touchIntervalMs),
        // Revoked first: a revocation only ever ends a live row, so it is the cause.
        sql<'revoked' | 'expired' | null>`CASE WHEN revoked_at IS NOT NULL THEN 'revoked'
          WHEN expires_at <= now() THEN 'expired' END`.as('ended'),
        'revoked_reason',
        sql<Date>`coalesce(revoked_at, expires_at)`.as('ended_at'),
      ])
      .where('tenant_id', '=', tenantId)
      .where('token_hash', '=', tokenHash);
    if (!options.includeEnded) query = query.where(live);
    if (options.forUpdate) query = query.forUpdate();
    const { rows, fromReplica } = await runner.read(query);
    let row = rows[0] as PresentedSessionRow | undefined;
    // A replica may not have replayed this session's creation or the client's own
    // last write yet: then the primary answers (read-your-writes). Nor, perhaps, a
    // touch that slid the expiry (touches keep the version): only the primary may
    // call a row expired. A revocation is final wherever it is seen.
    if (
      fromReplica &&
      (!row || Number(row.version) < (options.minVersion ?? 0) || row.ended === 'expired')
    ) {
      row = (await runner.readPrimary(query, { staleReplica: true })).rows[0] as
        | PresentedSessionRow
        | undefined;
    }
    return row;
  }

  /** The session by public id on the primary, live or not (the failover retry checks it). */
  async loadById(
    runner: StatementRunner,
    tenantId: string,
    id: string,
  ): Promise<SessionRecord | undefined> {
    const { rows } = await runner.readPrimary(
      db
        .selectFrom('sessions.session')
        .select(returningRecord(this.expiry.touchIntervalMs))
        .where('tenant_id', '=', tenantId)
        .where('id', '=', id)
        .where(live),
    );
    const row = rows[0] as SessionRow | undefined;
    return row ? toRecord(row) : undefined;
  }

  /** Inserts a new session (never an upsert: a token is created once). */
  async create(
    runner: StatementRunner,
    input: {
      tenantId: string;
      tokenHash: Buffer;
      data: Record<string, unknown>;
      userId: string | null;
      ip: string | null;
      userAgent: string | null;
    },
  ): Promise<{ record: SessionRecord; fence?: string }> {
    const { idleTimeoutMs, absoluteTimeoutMs, touchIntervalMs } = this.expiry;
    const query = db
      .insertInto('sessions.session')
      .values({
        tenant_id: input.tenantId,
        token_hash: input.tokenHash,
        user_id: input.userId,
        data: JSON.stringify(input.data),
        idle_expires_at: sql`now() + ${interval(Math.min(idleTimeoutMs, absoluteTimeoutMs))}`,
        absolute_expires_at: sql`now() + ${interval(absoluteTimeoutMs)}`,
        ip: input.ip,
        user_agent: input.userAgent,
      })
      .returning(returningRecord(touchIntervalMs));
    const { rows, fence } = await runner.write(query);
    return { record: toRecord(rows[0] as SessionRow), fence };
  }

  /**
   * Writes the request's changes in one statement: `data || patch - removed`, the
   * optional new token and user, and a touch. Matches only the live row with the
   * token the request loaded, so a destroyed, revoked, expired or rotated-away session
   * is never brought back. With `expected` (strict mode) each named key must still
   * hold the JSON the request loaded (absent: `undefined`), or nothing is written.
   *
   * @returns the new record, or undefined when no row matched.
   */
  async saveDelta(
    runner: StatementRunner,
    input: {
      tenantId: string;
      id: string;
      tokenHash: Buffer;
      patch: Record<string, unknown>;
      removed: readonly string[];
      newTokenHash?: Buffer;
      userId?: string | null;
      expected?: ReadonlyMap<string, string | undefined>;
    },
  ): Promise<{ record?: SessionRecord; fence?: string }> {
    const { idleTimeoutMs, touchIntervalMs } = this.expiry;
    const patchJson = JSON.stringify(input.patch);
    let query = db
      .updateTable('sessions.session')
      .set({
        data: sql`(data || ${patchJson}::jsonb) - ${[...input.removed]}::text[]`,
        ...touchColumns(idleTimeoutMs),
        ...(input.newTokenHash ? { token_hash: input.newTokenHash } : {}),
        ...(input.userId !== undefined ? { user_id: input.userId } : {}),
      })
      .where('tenant_id', '=', input.tenantId)
      .where('id', '=', input.id)
      .where('token_hash', '=', input.tokenHash)
      .where(live);
    for (const [key, loadedJson] of input.expected ?? []) {
      query =
        loadedJson === undefined
          ? query.where(sql<boolean>`NOT jsonb_exists(data, ${key})`)
          : query.where(sql<boolean>`(data -> ${key}) IS NOT DISTINCT FROM ${loadedJson}::jsonb`);
    }
    const { rows, fence } = await runner.write(query.returning(returningRecord(touchIntervalMs)));
    const row = rows[0] as SessionRow | undefined;
    return { record: row ? toRecord(row) : undefined, fence };
  }

  /** Whether the session is still live (tells a strict-mode conflict from a vanished session). */
  async isLive(runner: StatementRunner, tenantId: string, id: string, tokenHash: Buffer) {
    const { rows } = await runner.read(
      db
        .selectFrom('sessions.session')
        .select('id')
        .where('tenant_id', '=', tenantId)
        .where('id', '=', id)
        .where('token_hash', '=', tokenHash)
        .where(live),
    );
    return rows.length > 0;
  }

  /** Slides the idle expiry of a live session; never moves last_seen_at backwards, never revives. */
  async touch(runner: StatementRunner, tenantId: string, id: string, tokenHash: Buffer) {
    const { rows } = await runner.write(
      db
        .updateTable('sessions.session')
        .set(touchColumns(this.expiry.idleTimeoutMs))
        .where('tenant_id', '=', tenantId)
        .where('id', '=', id)
        .where('token_hash', '=', tokenHash)
        .where(live)
        .returning('id'),
    );
    return rows.length > 0;
  }

  /**
   * Touches many sessions of one tenant in one statement (the batched touches);
   * only live rows match, so a revoked or expired session is never extended.
   */
  async touchMany(
    runner: StatementRunner,
    tenantId: string,
    ids: readonly string[],
  ): Promise<number> {
    const { rows } = await runner.write(
      db
        .updateTable('sessions.session')
        .set(touchColumns(this.expiry.idleTimeoutMs))
        .where('tenant_id', '=', tenantId)
        .where(sql<boolean>`id = ANY(${[...ids]}::uuid[])`)
        .where(live)
        .returning('id'),
    );
    return rows.length;
  }

  /** Deletes the session row (event `destroyed`). */
  async destroy(runner: StatementRunner, tenantId: string, id: string): Promise<boolean> {
    const { rows } = await runner.write(
      db
        .deleteFrom('sessions.session')
        .where('tenant_id', '=', tenantId)
        .where('id', '=', id)
        .returning('id'),
    );
    return rows.length > 0;
  }

  /** Revokes one session by its public id (event `revoked`); the ended sessions. */
  async revoke(
    runner: StatementRunner,
    tenantId: string,
    id: string,
    reason: string,
  ): Promise<EndedSession[]> {
    const { rows } = await runner.write(
      db
        .updateTable('sessions.session')
        .set({ revoked_at: sql`now()`, revoked_reason: reason })
        .where('tenant_id', '=', tenantId)
        .where('id', '=', id)
        .where(live)
        .returning(['id', 'token_hash']),
    );
    return rows.map((row) => ({ id: row.id, tokenHash: row.token_hash }));
  }

  /** Revokes every live session of a user, optionally but one; returns the ended sessions. */
  async revokeUser(
    runner: StatementRunner,
    tenantId: string,
    userId: string,
    reason: string,
    exceptId?: string,
  ): Promise<EndedSession[]> {
    let query = db
      .updateTable('sessions.session')
      .set({ revoked_at: sql`now()`, revoked_reason: reason })
      .where('tenant_id', '=', tenantId)
      .where('user_id', '=', userId)
      .where(live);
    if (exceptId) query = query.where('id', '!=', exceptId);
    const { rows } = await runner.write(query.returning(['id', 'token_hash']));
    return rows.map((row) => ({ id: row.id, tokenHash: row.token_hash }));
  }

  /**
   * Keeps a user's `max` newest live sessions (and always `keepId`): revokes the rest,
   * oldest first, with reason `max_sessions`.
   */
  async enforceMaxSessions(
    runner: StatementRunner,
    tenantId: string,
    userId: string,
    max: number,
    keepId: string,
  ): Promise<EndedSession[]> {
    const surplus = db
      .selectFrom('sessions.session')
      .select('id')
      .where('tenant_id', '=', tenantId)
      .where('user_id', '=', userId)
      .where('id', '!=', keepId)
      .where(live)
      .orderBy('created_at', 'desc')
      .orderBy('id', 'desc')
      .offset(Math.max(0, max - 1));
    const { rows } = await runner.write(
      db
        .updateTable('sessions.session')
        .set({ revoked_at: sql`now()`, revoked_reason: 'max_sessions' })
        .where('tenant_id', '=', tenantId)
        .where('id', 'in', surplus)
        .where(live)
        .returning(['id', 'token_hash']),
    );
    return rows.map((row) => ({ id: row.id, tokenHash: row.token_hash }));
  }

  /** A user's live sessions, newest activity first. */
  async listForUser(
    runner: StatementRunner,
    tenantId: string,
    userId: string,
  ): Promise<DeviceSession[]> {
    const { rows } = await runner.read(
      db
        .selectFrom('sessions.session')
        .select(['id', 'created_at', 'last_seen_at', 'expires_at', 'ip', 'user_agent'])
        .where('tenant_id', '=', tenantId)
        .where('user_id', '=', userId)
        .where(live)
        .orderBy('last_seen_at', 'desc')
        .orderBy('id'),
    );
    return rows.map((row) => ({
      id: row.id,
      createdAt: row.created_at,
      lastSeenAt: row.last_seen_at,
      expiresAt: row.expires_at,
      ip: row.ip,
      userAgent: row.user_agent,
    }));
  }
}

/** Sliding expiry, capped by the absolute expiry, and never moving backwards. */
function touchColumns(idleTimeoutMs: number) {
  return {
    last_seen_at: sql<Date>`greatest(last_seen_at, now())`,
    idle_expires_at: sql<Date>`greatest(idle_expires_at, least(now() + ${interval(idleTimeoutMs)}, absolute_expires_at))`,
  };
}
