import { type Compilable, CompiledQuery, sql } from 'kysely';
import { queryBuilder as db, inlineParameters, type StatementRunner } from './db/runner.js';
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

/** Durations in milliseconds that shape the expiry columns. */
export interface ExpiryPolicy {
  readonly idleTimeoutMs: number;
  readonly absoluteTimeoutMs: number;
  readonly touchIntervalMs: number;
  /** Periodic rotation: a token older than this is due (undefined: never). */
  readonly rotateIntervalMs?: number;
  /** How long a rotated-away token still reaches its session. */
  readonly rotationGraceMs: number;
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

/** How a load runs: locked (lock mode), fenced (read-your-writes), and for lock mode whether to put statement_timeout back after the wait. */
interface LoadOptions {
  /** Lock mode: the session's advisory lock, then the row (only in a request transaction). */
  readonly forUpdate?: boolean;
  readonly minVersion?: number;
  /**
   * With `forUpdate`: once the lock is held, set statement_timeout back to the value the
   * transaction saved in `sessions.statement_timeout` before it lengthened it for the wait.
   */
  readonly restoreStatementTimeout?: boolean;
}

/**
 * The first key of the sessions' advisory locks ('pgsl'); the second is the hash of the
 * session id. ('pgse' with 1, 2 and 3 are the migration, GC and event-pruning locks.)
 */
export const SESSION_LOCK_CLASS = 0x7067736c;

/** A row as {@link SessionStore.loadPresented} reads it: with why it ended, if it did. */
export interface PresentedSessionRow extends SessionRow {
  ended: 'revoked' | 'expired' | null;
  revoked_reason: string | null;
  ended_at: Date;
  /** NULL when found by its current token; for a previous token, whether its grace lasts. */
  in_grace: boolean | null;
}

const interval = (ms: number) => sql<string>`make_interval(secs => ${ms / 1000})`;

/**
 * Asks the triggers to defer this statement's notifications (sessions.notify_deferred):
 * an uncorrelated subquery, run once before the scan, transaction-local, and consumed
 * by the statement's own trigger. Only rows whose data alone changed are deferred.
 */
const deferNotification = sql<boolean>`(SELECT set_config('sessions.defer_notify', 'on', true)) IS NOT NULL`;

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

function returningRecord(expiry: ExpiryPolicy) {
  const { touchIntervalMs, rotateIntervalMs } = expiry;
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
    'token_issued_at',
    sql<boolean>`last_seen_at < now() - ${interval(touchIntervalMs)}`.as('touch_due'),
    (rotateIntervalMs === undefined
      ? sql<boolean>`false`
      : sql<boolean>`token_issued_at <= now() - ${interval(rotateIntervalMs)}`
    ).as('rotation_due'),
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

/**
 * The session queries. Each is one statement, built with Kysely and run by a
 * {@link StatementRunner} that has already scoped it to a tenant (row-level security).
 */
export class SessionStore {
  constructor(private readonly expiry: ExpiryPolicy) {}

  /**
   * The live session this token reaches, or undefined: the session whose token it is,
   * or, for a token a rotation replaced, its session marked `rotatedAway` (one
   * statement either way: the previous-token lookup is an index probe inside it).
   * `forUpdate` locks it first (lock mode, in a request transaction);
   * `restoreStatementTimeout` shortens statement_timeout again once the lock is held.
   */
  async load(
    runner: StatementRunner,
    tenantId: string,
    tokenHash: Buffer,
    options: LoadOptions = {},
  ): Promise<SessionRecord | undefined> {
    const row = await this.#loadRow(runner, tenantId, tokenHash, {
      ...options,
      includeEnded: false,
    });
    return row ? toRecord(row) : undefined;
  }

  /**
   * What the token a request presented finds, in the same one statement as
   * {@link load}: the live row (marked `rotatedAway` when found by a previous token),
   * or the revoked or expired row with why it ended (so the app can tell the user why
   * they were signed out), or undefined.
   */
  async loadPresented(
    runner: StatementRunner,
    tenantId: string,
    tokenHash: Buffer,
    options: LoadOptions = {},
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
    options: LoadOptions & { includeEnded: boolean },
  ): Promise<PresentedSessionRow | undefined> {
    // sessions.lookup_session (migration 5): the current token, else a previous one,
    // planned once per connection instead of once per request.
    const { touchIntervalMs, rotateIntervalMs } = this.expiry;
    const rotate =
      rotateIntervalMs === undefined ? sql`NULL::interval` : interval(rotateIntervalMs);
    let lookup = db
      .selectFrom(
        sql<PresentedSessionRow>`sessions.lookup_session(${tenantId}, ${tokenHash}, ${interval(touchIntervalMs)}, ${rotate})`.as(
          'found',
        ),
      )
      .selectAll()
      .limit(1);
    if (!options.includeEnded) lookup = lookup.where(sql<boolean>`ended IS NULL`);
    let query: Compilable<unknown> | CompiledQuery<unknown> = lookup;
    if (options.forUpdate) {
      // Lock mode: a transaction-scoped advisory lock keyed by the session, then the
      // lookup as a second statement of the same message: its snapshot is taken after
      // the lock was granted, so it sees what the previous holder committed. An
      // advisory lock takes no transaction id and writes no WAL, so a lock-mode request
      // that writes nothing commits without a WAL flush (a row lock would need both).
      // A rotation that commits while this waits moves the presented token to
      // previous_token: the lookup still finds the session there, and judges its grace
      // afresh.
      const sessionId = db
        .selectFrom('sessions.session')
        .select('id')
        .where('tenant_id', '=', tenantId)
        .where('token_hash', '=', tokenHash)
        .unionAll(
          db
            .selectFrom('sessions.previous_token')
            .select('session_id as id')
            .where('tenant_id', '=', tenantId)
            .where('token_hash', '=', tokenHash),
        )
        .limit(1);
      const lock = db
        .selectFrom(sessionId.as('found'))
        .select(
          sql<string>`pg_advisory_xact_lock(${SESSION_LOCK_CLASS}, hashtext(found.id::text))`.as(
            'locked',
          ),
        );
      // The lock wait ran with lockTimeout + statementTimeout (the middleware's
      // settings); the statements after it get the statement_timeout saved before.
      const restore = options.restoreStatementTimeout
        ? [
            "SELECT set_config('statement_timeout', current_setting('sessions.statement_timeout'), true)",
          ]
        : [];
      query = CompiledQuery.raw(
        [inlineParameters(lock.compile()), ...restore, inlineParameters(lookup.compile())].join(
          '; ',
        ),
      );
    }
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
        .select(returningRecord(this.expiry))
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
    const { idleTimeoutMs, absoluteTimeoutMs } = this.expiry;
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
      .returning(returningRecord(this.expiry));
    const { rows, fence } = await runner.write(query);
    return { record: toRecord(rows[0] as SessionRow), fence };
  }

  /**
   * Writes the request's changes in one statement: `data || patch - removed`, the
   * optional user and a touch. Matches the live row by its public id, whatever
   * happened to its token meanwhile (a concurrent rotation), so a destroyed, revoked
   * or expired session is never brought back. With `expected` (strict mode) each named
   * key must still hold the JSON the request loaded (absent: `undefined`), or nothing
   * is written.
   *
   * With `rotation`, the same statement swaps in the new token and records the one it
   * replaced (the row's token at that moment, locked) as a previous token with its grace
   * period. `onlyIfTokenIs` (periodic rotation) rotates only while the row still has
   * that token: a concurrent request that rotated first wins, and this one just saves.
   *
   * @returns the new record (its `tokenHash` says whether the rotation happened), or
   *   undefined when no row matched.
   */
  async saveDelta(
    runner: StatementRunner,
    input: {
      tenantId: string;
      id: string;
      patch: Record<string, unknown>;
      removed: readonly string[];
      rotation?: { newTokenHash: Buffer; onlyIfTokenIs?: Buffer; origin: RequestOrigin };
      userId?: string | null;
      expected?: ReadonlyMap<string, string | undefined>;
    },
  ): Promise<{ record?: SessionRecord; fence?: string }> {
    const { idleTimeoutMs, rotationGraceMs } = this.expiry;
    const patchJson = JSON.stringify(input.patch);
    const { rotation } = input;
    const tokenColumns = !rotation
      ? {}
      : rotation.onlyIfTokenIs
        ? {
            token_hash: sql<Buffer>`CASE WHEN token_hash = ${rotation.onlyIfTokenIs} THEN ${rotation.newTokenHash} ELSE token_hash END`,
            token_issued_at: sql<Date>`CASE WHEN token_hash = ${rotation.onlyIfTokenIs} THEN now() ELSE token_issued_at END`,
          }
        : { token_hash: rotation.newTokenHash, token_issued_at: sql<Date>`now()` };
    const changes = {
      data: sql<string>`(data || ${patchJson}::jsonb) - ${[...input.removed]}::text[]`,
      ...touchColumns(idleTimeoutMs),
      ...tokenColumns,
      ...(input.userId !== undefined ? { user_id: input.userId } : {}),
    };
    const expectations = [...(input.expected ?? [])].map(([key, loadedJson]) =>
      loadedJson === undefined
        ? sql<boolean>`NOT jsonb_exists(data, ${key})`
        : sql<boolean>`(data -> ${key}) IS NOT DISTINCT FROM ${loadedJson}::jsonb`,
    );
    if (!rotation) {
      let query = db
        .updateTable('sessions.session')
        .set(changes)
        .where('tenant_id', '=', input.tenantId)
        .where('id', '=', input.id)
        .where(live);
      for (const expectation of expectations) query = query.where(expectation);
      // A change of data alone notifies after the COMMIT (see sessions.notify_deferred);
      // binding a user notifies inside it, as every security-relevant change does.
      const deferred = input.userId === undefined;
      if (deferred) query = query.where(deferNotification);
      const { rows, fence } = await runner.write(query.returning(returningRecord(this.expiry)), {
        notifyAfterCommit: deferred,
      });
      const row = rows[0] as SessionRow | undefined;
      return { record: row ? toRecord(row) : undefined, fence };
    }
    const query = db
      // The token being replaced is the row's newest, read under the row lock: a
      // concurrent rotation that committed first is recorded, never lost.
      .with('current', (qb) =>
        qb
          .selectFrom('sessions.session')
          .select(['id as locked_id', 'token_hash as replaced_hash'])
          .where('tenant_id', '=', input.tenantId)
          .where('id', '=', input.id)
          .where(live)
          .forUpdate(),
      )
      .with('saved', (qb) => {
        let update = qb
          .updateTable('sessions.session')
          .from('current')
          .set(changes)
          .where('tenant_id', '=', input.tenantId)
          .whereRef('id', '=', 'current.locked_id');
        for (const expectation of expectations) update = update.where(expectation);
        return update.returning(returningRecord(this.expiry));
      })
      .with('previous', (qb) =>
        qb
          .insertInto('sessions.previous_token')
          .columns([
            'tenant_id',
            'token_hash',
            'session_id',
            'grace_expires_at',
            'rotation_ip',
            'rotation_user_agent',
          ])
          .expression(
            qb
              .selectFrom('current')
              .innerJoin('saved', 'saved.id', 'current.locked_id')
              .select([
                'saved.tenant_id',
                'current.replaced_hash',
                'current.locked_id',
                sql<Date>`now() + ${interval(rotationGraceMs)}`.as('grace_expires_at'),
                sql<string | null>`${rotation.origin.ip}::inet`.as('rotation_ip'),
                sql<string | null>`${rotation.origin.userAgent}::text`.as('rotation_user_agent'),
              ])
              .whereRef('saved.token_hash', '<>', 'current.replaced_hash'),
          )
          .onConflict((conflict) => conflict.doNothing()),
      )
      .selectFrom('saved')
      .selectAll();
    const { rows, fence } = await runner.write(query);
    const row = rows[0] as SessionRow | undefined;
    return { record: row ? toRecord(row) : undefined, fence };
  }

  /**
   * A rotated-away token presented after its grace period: marks it reused (its
   * trigger logs both requests) and revokes its session with reason `token_reused`, in
   * one statement; the triggers notify every node. Returns the ended session.
   */
  async revokeReusedToken(
    runner: StatementRunner,
    tenantId: string,
    tokenHash: Buffer,
    origin: RequestOrigin,
  ): Promise<(EndedSession & { userId: string | null })[]> {
    const { rows } = await runner.write(
      db
        .with('reused', (qb) =>
          qb
            .updateTable('sessions.previous_token')
            .set({
              reused_at: sql`now()`,
              reused_ip: origin.ip,
              reused_user_agent: origin.userAgent,
            })
            .where('tenant_id', '=', tenantId)
            .where('token_hash', '=', tokenHash)
            .where('reused_at', 'is', null)
            .where(sql<boolean>`grace_expires_at <= now()`)
            .returning('session_id'),
        )
        .updateTable('sessions.session')
        .from('reused')
        .set({ revoked_at: sql`now()`, revoked_reason: 'token_reused' })
        .where('tenant_id', '=', tenantId)
        .whereRef('id', '=', 'reused.session_id')
        .where(live)
        .returning(['id', 'token_hash', 'user_id']),
    );
    return rows.map((row) => ({ id: row.id, tokenHash: row.token_hash, userId: row.user_id }));
  }

  /** Whether the session is still live (tells a strict-mode conflict from a vanished session). */
  async isLive(runner: StatementRunner, tenantId: string, id: string) {
    const { rows } = await runner.read(
      db
        .selectFrom('sessions.session')
        .select('id')
        .where('tenant_id', '=', tenantId)
        .where('id', '=', id)
        .where(live),
    );
    return rows.length > 0;
  }

  /** Slides the idle expiry of a live session; never moves last_seen_at backwards, never revives. */
  async touch(runner: StatementRunner, tenantId: string, id: string) {
    const { rows } = await runner.write(
      db
        .updateTable('sessions.session')
        .set(touchColumns(this.expiry.idleTimeoutMs))
        .where('tenant_id', '=', tenantId)
        .where('id', '=', id)
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
