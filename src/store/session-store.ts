import { CompiledQuery, type RawBuilder, sql } from 'kysely';
import { queryBuilder as db, type StatementRunner } from '../db/runner.js';
import {
  type CreatedRow,
  type DeviceSession,
  type EndedSession,
  type ExpiryPolicy,
  type PresentedRow,
  type PresentedSessionRow,
  type RequestOrigin,
  type SavedColumns,
  type SavedRow,
  type SessionRecord,
  savedColumns,
  toPresentedRow,
} from './records.js';
import {
  batchTicket,
  CREATE,
  CREATED,
  expectationsJson,
  interval,
  intervalsOf,
  LOOKUP,
  LOOKUP_LIVE,
  live,
  lockedLookup,
  reusedTokenRevocation,
  SAVE,
  SAVED,
} from './statements.js';

/** How a lookup runs: locked (lock mode), fenced (read-your-writes on replicas). */
export interface LookupOptions {
  /** Lock mode: the session's advisory lock, then the row (only in a request transaction). */
  readonly forUpdate?: boolean;
  /** The version the client is known to have seen: an older copy is re-read on the primary. */
  readonly minVersion?: number;
  /** The WAL position the client has seen, for the choice of replica. */
  readonly fence?: string;
  /**
   * With `forUpdate`: once the lock is held, set statement_timeout back to the value the
   * transaction saved in `sessions.statement_timeout` before it lengthened it for the wait.
   */
  readonly restoreStatementTimeout?: boolean;
  /** The session the presented token names (its routing part), if it names one. */
  readonly sessionId?: string;
}

/** A new session's row. */
export interface NewSession {
  /** The id its token names (undefined: the database draws one, for a token that names none). */
  readonly id?: string;
  readonly tokenHash: Buffer;
  readonly data: Readonly<Record<string, unknown>>;
  readonly userId: string | null;
  readonly origin: RequestOrigin;
  readonly actor: string;
}

/** A request's changes to its loaded session (see {@link SessionStore.save}). */
export interface SessionDelta {
  readonly loaded: SessionRecord;
  readonly patch: Readonly<Record<string, unknown>>;
  readonly removed: readonly string[];
  /** Strict mode: each changed key's JSON as loaded (undefined: absent at load). */
  readonly expected?: ReadonlyMap<string, string | undefined>;
  /** A new token; `onlyIfCurrent` (periodic rotation) yields to a concurrent rotation. */
  readonly rotation?: {
    readonly newTokenHash: Buffer;
    readonly onlyIfCurrent: boolean;
    readonly origin: RequestOrigin;
  };
  /** The user to bind (null unbinds); undefined leaves it. */
  readonly userId?: string | null;
  readonly actor: string;
}

/**
 * The session queries of one tenant, run by one {@link StatementRunner} (a pool, a
 * failover wrapper around it, or the request's transaction). Each is one statement;
 * a write that may be retried after a failover carries the check that tells whether
 * its first attempt committed, written beside it.
 */
export class SessionStore {
  constructor(
    readonly runner: StatementRunner,
    readonly tenantId: string,
    private readonly policy: ExpiryPolicy,
  ) {}

  /**
   * What a presented token finds, in one statement: the live row (marked `rotatedAway`
   * when found by a previous token), or the revoked or expired row with why it ended,
   * or undefined. `forUpdate` takes the session's advisory lock first (lock mode).
   */
  async lookup(tokenHash: Buffer, options: LookupOptions = {}): Promise<PresentedRow> {
    const row = await this.#lookupRow(tokenHash, options, false);
    return row ? toPresentedRow(row) : undefined;
  }

  /** The live session this token reaches, or undefined (the same statement, live rows only). */
  async load(tokenHash: Buffer, options: LookupOptions = {}): Promise<SessionRecord | undefined> {
    const row = await this.#lookupRow(tokenHash, options, true);
    return row ? (toPresentedRow(row)?.live ?? undefined) : undefined;
  }

  async #lookupRow(
    tokenHash: Buffer,
    options: LookupOptions,
    live: boolean,
  ): Promise<PresentedSessionRow | undefined> {
    const parameters = [
      this.tenantId,
      tokenHash,
      ...intervalsOf(this.policy).lookup,
      options.sessionId ?? null,
    ];
    const query = options.forUpdate
      ? CompiledQuery.raw(lockedLookup(live), [
          ...parameters,
          options.restoreStatementTimeout === true,
        ])
      : CompiledQuery.raw(live ? LOOKUP_LIVE : LOOKUP, parameters);
    const { runner } = this;
    // A token that names its session is looked up by itself (on Citus, on its worker); an
    // older one after the tenant's settings, on every shard.
    const scoped = options.sessionId !== undefined;
    const { rows, fromReplica } = await runner.read<PresentedSessionRow>(query, {
      fence: options.fence,
      scoped,
    });
    let row = rows[0];
    // A replica may not have replayed this session's creation or the client's own
    // last write yet: then the primary answers (read-your-writes). Nor, perhaps, a
    // touch that slid the expiry (touches keep the version): only the primary may
    // call a row expired. A revocation is final wherever it is seen.
    if (
      fromReplica &&
      (!row || Number(row.version) < (options.minVersion ?? 0) || row.ended === 'expired')
    ) {
      row = (await runner.readPrimary<PresentedSessionRow>(query, { staleReplica: true, scoped }))
        .rows[0];
    }
    return row;
  }

  /** On Citus: a new session id on the shard of `near` (see sessions.citus_colocated_id). */
  async colocatedId(near: string): Promise<string> {
    const { rows } = await this.runner.read<{ id: string }>(
      CompiledQuery.raw('SELECT sessions.citus_colocated_id($1::uuid) AS id', [near]),
    );
    return rows[0]!.id;
  }

  /** Inserts a new session (never an upsert: a token is created once). */
  async create(input: NewSession): Promise<{ record: SessionRecord; fence?: string }> {
    const { policy, tenantId } = this;
    const relaxed = policy.relaxed === true;
    const { rows, fence } = await this.runner.write<CreatedRow>(
      CompiledQuery.raw(CREATE, [
        tenantId,
        input.actor,
        input.tokenHash,
        JSON.stringify(input.data),
        input.userId,
        input.origin.ip,
        input.origin.userAgent,
        ...intervalsOf(policy).create,
        relaxed,
        input.id ?? null,
      ]),
      {
        actor: input.actor,
        scoped: true,
        // Its announcement (session:created on every node) follows the commit.
        notifyAfterCommit: true,
        batch: batchTicket(policy, 'create', '', relaxed && input.userId === null),
        appliedCheck: CompiledQuery.raw(CREATED, [tenantId, input.tokenHash]),
      },
    );
    const row = rows[0]!;
    const record: SessionRecord = {
      id: row.id,
      tenantId,
      tokenHash: input.tokenHash,
      userId: input.userId,
      data: input.data,
      version: Number(row.version),
      createdAt: new Date(row.created_ms),
      lastSeenAt: new Date(row.last_seen_ms),
      idleExpiresAt: new Date(row.idle_expires_ms),
      absoluteExpiresAt: new Date(row.absolute_expires_ms),
      tokenIssuedAt: new Date(row.token_issued_ms),
      touchDue: false,
      rotationDue: false,
    };
    return { record, fence };
  }

  /**
   * Writes the request's changes in one statement (`sessions.save_session`): `data ||
   * patch - removed`, a touch, the optional rotation and user. Matches the live row by
   * its public id, whatever happened to its token meanwhile, so a destroyed, revoked or
   * expired session is never brought back. Undefined when no row matched (ended, or a
   * strict-mode conflict). Every notification is deferred to right after the commit.
   */
  async save(delta: SessionDelta): Promise<{ saved?: SavedColumns; fence?: string }> {
    const { policy, tenantId } = this;
    const { loaded, rotation } = delta;
    const patch = JSON.stringify(delta.patch);
    const removed = [...delta.removed];
    const binds = delta.userId !== undefined;
    const newTokenHash = rotation?.newTokenHash ?? null;
    const { rows, fence } = await this.runner.write<SavedRow>(
      CompiledQuery.raw(SAVE, [
        tenantId,
        delta.actor,
        loaded.id,
        loaded.version,
        patch,
        removed,
        delta.expected ? expectationsJson(delta.expected) : null,
        binds,
        delta.userId ?? null,
        newTokenHash,
        rotation?.onlyIfCurrent ? loaded.tokenHash : null,
        rotation?.origin.ip ?? null,
        rotation?.origin.userAgent ?? null,
        ...intervalsOf(policy).save,
        policy.relaxed === true,
      ]),
      {
        actor: delta.actor,
        scoped: true,
        notifyAfterCommit: true,
        // Rotations and bindings commit durably whatever the policy.
        batch: batchTicket(policy, 'save', loaded.id, newTokenHash === null && !binds),
        appliedCheck: CompiledQuery.raw(SAVED, [
          tenantId,
          loaded.id,
          loaded.version,
          patch,
          removed,
          newTokenHash,
          binds,
          delta.userId ?? null,
        ]),
      },
    );
    const row = rows[0];
    return row ? { saved: savedColumns(row), fence } : { fence };
  }

  /**
   * A rotated-away token presented after its grace period: marks it reused (its
   * trigger logs both requests) and revokes its session with reason `token_reused`, in
   * one statement; the triggers notify every node. Returns the ended session.
   */
  async revokeReusedToken(
    sessionId: string,
    tokenHash: Buffer,
    origin: RequestOrigin,
    actor: string,
  ): Promise<(EndedSession & { userId: string | null })[]> {
    const { rows } = await this.runner.write(
      reusedTokenRevocation(this.tenantId, sessionId, tokenHash, origin),
      { actor },
    );
    return rows.map((row) => ({ id: row.id, tokenHash: row.token_hash, userId: row.user_id }));
  }

  /** Whether the session is still live (tells a strict-mode conflict from a vanished session). */
  async isLive(id: string): Promise<boolean> {
    const { rows } = await this.runner.readPrimary(
      db
        .selectFrom('sessions.session')
        .select('id')
        .where('tenant_id', '=', this.tenantId)
        .where('id', '=', id)
        .where(live),
    );
    return rows.length > 0;
  }

  /**
   * Slides the idle expiry of many sessions in one statement (the batched touches);
   * only live rows match, so a revoked or expired session is never extended, and
   * last_seen_at never moves backwards.
   */
  async touchMany(ids: readonly string[], actor: string): Promise<number> {
    if (this.runner.oneSessionPerWrite && ids.length > 1) {
      let touched = 0;
      for (const id of ids) touched += await this.touchMany([id], actor);
      return touched;
    }
    const { rows } = await this.runner.write(
      db
        .updateTable('sessions.session')
        .set({
          last_seen_at: sql<Date>`greatest(last_seen_at, now())`,
          idle_expires_at: sql<Date>`greatest(idle_expires_at, least(now() + ${interval(this.policy.idleTimeoutMs)}::interval, absolute_expires_at))`,
        })
        .where('tenant_id', '=', this.tenantId)
        .where(sql<boolean>`id = ANY(${[...ids]}::uuid[])`)
        .where(live)
        .returning('id'),
      { actor },
    );
    return rows.length;
  }

  /** Deletes the session row (event `destroyed`); notifies inside its commit. */
  async destroy(id: string, actor: string): Promise<boolean> {
    const { rows } = await this.runner.write(
      db
        .deleteFrom('sessions.session')
        .where('tenant_id', '=', this.tenantId)
        .where('id', '=', id)
        .returning('id'),
      { actor },
    );
    return rows.length > 0;
  }

  /** Revokes one session by its public id (event `revoked`); the ended sessions. */
  revoke(id: string, reason: string, actor: string): Promise<EndedSession[]> {
    return this.#revokeWhere(sql<boolean>`id = ${id}::uuid`, reason, actor);
  }

  /** Revokes every live session of a user, optionally but one; returns the ended sessions. */
  revokeUser(
    userId: string,
    reason: string,
    actor: string,
    exceptId?: string,
  ): Promise<EndedSession[]> {
    const except =
      exceptId === undefined ? sql<boolean>`true` : sql<boolean>`id <> ${exceptId}::uuid`;
    return this.#revokeWhere(sql<boolean>`user_id = ${userId} AND ${except}`, reason, actor);
  }

  /**
   * Keeps a user's `max` newest live sessions (and always `keepId`): revokes the rest,
   * oldest first, with reason `max_sessions`.
   */
  enforceMaxSessions(
    userId: string,
    max: number,
    keepId: string,
    actor: string,
  ): Promise<EndedSession[]> {
    const surplus = db
      .selectFrom('sessions.session')
      .select('id')
      .where('tenant_id', '=', this.tenantId)
      .where('user_id', '=', userId)
      .where('id', '!=', keepId)
      .where(live)
      .orderBy('created_at', 'desc')
      .orderBy('id', 'desc')
      .offset(Math.max(0, max - 1));
    return this.#revokeWhere(sql<boolean>`id IN (${surplus})`, 'max_sessions', actor);
  }

  /** The one revocation statement: live rows of this tenant matching `which`. */
  async #revokeWhere(
    which: RawBuilder<boolean>,
    reason: string,
    actor: string,
  ): Promise<EndedSession[]> {
    if (this.runner.oneSessionPerWrite) return this.#revokeEach(which, reason, actor);
    return this.#revokeMatching(which, reason, actor);
  }

  /**
   * On Citus: the matching sessions first, then each revoked by its id in a transaction
   * of its own (on its worker). Not one atomic statement: a failure part way leaves the
   * rest live, and running it again finishes (revocation is idempotent).
   */
  async #revokeEach(
    which: RawBuilder<boolean>,
    reason: string,
    actor: string,
  ): Promise<EndedSession[]> {
    const { rows } = await this.runner.readPrimary(
      db
        .selectFrom('sessions.session')
        .select('id')
        .where('tenant_id', '=', this.tenantId)
        .where(which)
        .where(live),
    );
    const ended: EndedSession[] = [];
    for (const { id } of rows) {
      ended.push(...(await this.#revokeMatching(sql<boolean>`id = ${id}::uuid`, reason, actor)));
    }
    return ended;
  }

  async #revokeMatching(
    which: RawBuilder<boolean>,
    reason: string,
    actor: string,
  ): Promise<EndedSession[]> {
    const { rows } = await this.runner.write(
      db
        .updateTable('sessions.session')
        .set({ revoked_at: sql`now()`, revoked_reason: reason })
        .where('tenant_id', '=', this.tenantId)
        .where(which)
        .where(live)
        .returning(['id', 'token_hash']),
      { actor },
    );
    return rows.map((row) => ({ id: row.id, tokenHash: row.token_hash }));
  }

  /** A user's live sessions, newest activity first. */
  async listForUser(userId: string, fence?: string): Promise<DeviceSession[]> {
    const { rows } = await this.runner.read(
      db
        .selectFrom('sessions.session')
        .select([
          'id',
          'created_at',
          'last_seen_at',
          'expires_at',
          'ip',
          'user_agent',
          'device_name',
        ])
        .where('tenant_id', '=', this.tenantId)
        .where('user_id', '=', userId)
        .where(live)
        .orderBy('last_seen_at', 'desc')
        .orderBy('id'),
      { fence },
    );
    return rows.map((row) => ({
      id: row.id,
      createdAt: row.created_at,
      lastSeenAt: row.last_seen_at,
      expiresAt: row.expires_at,
      ip: row.ip,
      userAgent: row.user_agent,
      name: row.device_name,
    }));
  }
}
