import type { Context } from 'koa';
import type { Transaction } from 'kysely';
import { clientAddress } from '../client-address.js';
import { FailoverRunner } from '../db/failover.js';
import { PoolRunner, TransactionRunner } from '../db/runner.js';
import type { SessionsDatabase } from '../db/schema.js';
import {
  SessionDataError,
  SessionStateError,
  SessionStoreUnavailableError,
  toSessionError,
} from '../errors.js';
import type { ConcurrencyMode } from '../options/types.js';
import { isStorableText } from '../serialize.js';
import {
  type CommitRequest,
  replaceData,
  Session,
  type SessionOwner,
  snapshotData,
} from '../session.js';
import type { RequestOrigin, SessionEnd, SessionRecord } from '../store/records.js';
import { SessionStore } from '../store/session-store.js';
import { generateToken, hashToken } from '../token.js';
import { commitSession } from './commit.js';
import { emitDeferred, type RequestServices } from './services.js';
import type { PresentedToken } from './transport.js';

/**
 * The session of one request, koa-session's `ContextSession`: the one place that holds
 * the request's session state. It answers `ctx.session`; the load (load.ts) and the
 * commit (commit.ts) read and update its fields, and `ctx.sessions` (control.ts) asks
 * it for the current session and its store.
 */
export class RequestSession implements SessionOwner {
  /** The loaded row; undefined for a new session or after the row vanished. */
  record: SessionRecord | undefined;
  /** Materialised on first access of ctx.session (or on assignment). */
  session: Session | undefined;
  /** The token to hand out: the presented one, a fresh one, or the rotated one. */
  token: string | undefined;
  /** genid's non-secret label before the token in the key handed out. */
  label: string | undefined;
  /** ctx.session = null or destroy(): the loaded row is deleted at commit. */
  destroyed = false;
  /** ctx.sessions.revoke…() ended this very session. */
  revokedSelf = false;
  /** regenerate(): the next write swaps in `token`. */
  rotate = false;
  /** The rotation is the periodic one: it yields to a concurrent request that rotated first. */
  periodicRotation = false;
  /**
   * The presented token was rotated away by another request and is within its grace
   * period: the session is served, but this response hands out no token (it never
   * knew the new one, and must not send the old one again).
   */
  inGrace = false;
  /** A rotated-away token presented after its grace, found under this request's lock: revoked after the transaction. */
  stolen: { tokenHash: Buffer; record: SessionRecord } | undefined;
  /** bindUser(): the user to write (null unbinds), undefined when unchanged. */
  pendingUserId: string | null | undefined;
  /** The commit LSN of this request's last write, for read-your-writes on replicas. */
  fence: string | undefined;
  /** The loaded session's last_seen_at is older than touchInterval: its expiry slides at commit. */
  touchDue = false;
  /** The loaded session's token is older than rotateInterval: periodic rotation at commit. */
  rotationDue = false;
  /** The presented token's session was revoked or has expired (ctx.sessions.ended). */
  ended: SessionEnd | undefined;
  /** Statements run in the request's transaction: the cache is neither read nor filled. */
  inTransaction = false;
  /** This response carries the session's key (a write, or rolling/renew). */
  keySent = false;
  #store: SessionStore | undefined;
  #transactionStore: SessionStore | undefined;
  /** The commit under way (one started by `ctx.session.save()`, say): the next waits for it. */
  #committing: Promise<void> | undefined;
  /** The last token hashed and its SHA-256: the load, the save and the key check share it. */
  #hashed: { readonly token: string; readonly hash: Buffer } | undefined;

  constructor(
    readonly services: RequestServices,
    readonly ctx: Context,
    readonly tenantId: string,
    readonly mode: ConcurrencyMode,
    readonly presented: PresentedToken,
  ) {
    this.label = presented.label;
  }

  /** The store on the pool (following failovers), made at the first statement: a cache hit runs none. */
  get poolStore(): SessionStore {
    if (!this.#store) {
      const { database, metrics, logger, replicas, policy, failover, topology } = this.services;
      const pool = new PoolRunner(
        database,
        this.tenantId,
        metrics,
        logger,
        replicas,
        topology.citus,
      );
      const runner = failover ? new FailoverRunner(pool, database, logger) : pool;
      this.#store = new SessionStore(runner, this.tenantId, policy);
    }
    return this.#store;
  }

  /** Where this request's statements run: its transaction, or the pool. */
  get store(): SessionStore {
    return this.#transactionStore ?? this.poolStore;
  }

  /** A token's SHA-256, computed once per request for the token it holds. */
  hashOf(token: string): Buffer {
    const hashed = this.#hashed;
    if (hashed?.token === token) return hashed.hash;
    const hash = hashToken(token);
    this.#hashed = { token, hash };
    return hash;
  }

  /** Who the event log names for a write, given the bound user. */
  actor(): string {
    return this.services.options.actor(this.ctx, this.userId);
  }

  /** This request's client, as the audit log records it. */
  origin(): RequestOrigin {
    return {
      ip: clientAddress(this.ctx.ip),
      userAgent: this.ctx.get('user-agent').slice(0, 1024) || null,
    };
  }

  emit(event: string, payload: Record<string, unknown>): void {
    emitDeferred(this.ctx.app, this.services.logger, event, { ...payload, ctx: this.ctx });
  }

  // --- SessionOwner: what ctx.session asks of its request ---------------------

  /** The configured cookie lifetime, what `session.maxAge` reads when not set. */
  get configuredMaxAge(): number | 'session' {
    return this.services.options.cookie.maxAge;
  }

  /** When the loaded session expires: the sooner of its idle and absolute expiry. */
  get expiresAt(): number | undefined {
    const { record } = this;
    if (!record || this.destroyed) return undefined;
    return Math.min(record.idleExpiresAt.getTime(), record.absoluteExpiresAt.getTime());
  }

  /** koa-session's `externalKey`: the key as handed to the client. */
  externalKey(): string | undefined {
    if (this.destroyed && !this.session) return undefined;
    if (this.inGrace && this.token === undefined) return undefined;
    this.token ??= generateToken();
    return this.services.transport.key(this.token, this.label);
  }

  /**
   * Commits now: the middleware's commit at the end of the request, or one the
   * handler asked for (`ctx.session.save()`, `regenerate()`, `commit()`, koa-session's
   * API). Commits of one request run one after another, never side by side, so a save
   * the handler did not await still lands before the request's own commit looks.
   */
  async commit(request?: CommitRequest): Promise<void> {
    while (this.#committing) await this.#committing.catch(() => undefined);
    if (request?.save || request?.regenerate) {
      const session = this.get();
      if (!session) throw new SessionStateError('cannot save a destroyed session');
      if (request.regenerate) this.regenerate();
      session._requireSave = true;
    }
    const run = commitSession(this);
    this.#committing = run;
    try {
      await run;
    } catch (error) {
      const translated = toSessionError(error);
      if (translated instanceof SessionStoreUnavailableError) {
        this.services.metrics.increment('unavailable');
      }
      throw translated;
    } finally {
      if (this.#committing === run) this.#committing = undefined;
    }
  }

  // --- ctx.session ------------------------------------------------------------

  /** ctx.session's value: null once destroyed (until a new session is assigned). */
  get(): Session | null {
    if (this.destroyed && !this.session) return null;
    if (!this.session) {
      const { record } = this;
      if (record) {
        this.session = new Session(
          record.snapshot ?? snapshotData(record.data),
          false,
          undefined,
          this,
        );
      } else {
        this.newLabel();
        this.session = new Session(new Map(), true, undefined, this);
      }
    }
    return this.session;
  }

  /** `ctx.session = null` destroys; `ctx.session = { … }` replaces the data. */
  set(value: unknown): void {
    if (value === null || value === undefined) {
      this.destroy();
      return;
    }
    if (typeof value !== 'object' || Array.isArray(value)) {
      throw new TypeError('ctx.session can only be set to an object or null');
    }
    const data = { ...(value as Record<string, unknown>) };
    if (this.destroyed || !this.record) {
      // A brand-new session replaces whatever this request had, with a fresh token.
      // Its baseline is empty: every assigned key is a change to save.
      if (this.record) this.destroyed = true;
      this.newLabel();
      this.session = new Session(new Map(), true, data, this);
      this.token = generateToken();
      this.rotate = false;
    } else {
      replaceData(this.get()!, data);
    }
  }

  /** A new session's key decoration: koa-session calls genid when it creates a session. */
  newLabel(): void {
    const { genid } = this.services.options.koa;
    this.label = genid ? String(genid(this.ctx)) : undefined;
  }

  // --- what ctx.sessions changes about the current session ---------------------

  get id(): string | null {
    return this.destroyed ? null : (this.record?.id ?? null);
  }

  get userId(): string | null {
    if (this.pendingUserId !== undefined) return this.pendingUserId;
    return this.destroyed ? null : (this.record?.userId ?? null);
  }

  /** A new token at the next write; in a grace period, none (another request has the new one). */
  regenerate(): void {
    if (this.destroyed && !this.session) {
      throw new SessionStateError('cannot regenerate a destroyed session');
    }
    this.get();
    if (this.inGrace && this.record && !this.destroyed) return;
    // The same session keeps its id (a rotation); a new one gets its own.
    this.token = generateToken(this.record && !this.destroyed ? this.record.id : undefined);
    this.rotate = this.record !== undefined;
    if (this.services.options.koa.genid) this.newLabel();
  }

  destroy(): void {
    this.destroyed = true;
    this.session = undefined;
    this.pendingUserId = undefined;
  }

  /** Binds (or with null unbinds) the user at the next write, rotating the token unless told not to. */
  bindUser(userId: string | null, regenerate: boolean): void {
    if (userId !== null && (typeof userId !== 'string' || userId.length === 0)) {
      throw new TypeError('bindUser expects a non-empty string user id, or null');
    }
    if (userId !== null && !isStorableText(userId)) {
      throw new SessionDataError('a user id with NUL or an unpaired surrogate', 'userId');
    }
    this.pendingUserId = userId;
    // Marked, not saved: the binding is part of the request's one write at the end.
    const session = this.get();
    if (session) session._requireSave = true;
    if (regenerate) this.regenerate();
  }

  /** A revocation by this request ended its own session: the cookie goes at commit. */
  endedBySelf(): void {
    this.revokedSelf = true;
    this.session = undefined;
  }

  // --- request transactions ---------------------------------------------------

  /**
   * From now on every statement runs in the request's transaction. `settings` (the
   * transaction's set_config statements) travel with its first statement; {@link settle}
   * sends them if the load did not.
   */
  useTransaction(trx: Transaction<SessionsDatabase>, settings: string): TransactionRunner {
    const runner = new TransactionRunner(
      trx,
      this.services.metrics,
      settings,
      this.services.topology.citus,
    );
    this.#transactionStore = new SessionStore(runner, this.tenantId, {
      ...this.services.policy,
      // The transaction commits the application's writes too: never asynchronously.
      relaxed: false,
    });
    this.inTransaction = true;
    return runner;
  }
}
