import type { Context } from 'koa';
import type { Transaction } from 'kysely';
import { clientAddress } from './client-address.js';
import { type CommitPlan, planCommit } from './commit-plan.js';
import {
  clearCookie,
  keyValue,
  type PresentedToken,
  readVersionFence,
  writeCookie,
  writeVersionFence,
} from './cookie.js';
import { type StatementRunner, TransactionRunner } from './db/runner.js';
import type { SessionsDatabase } from './db/schema.js';
import type { SessionEngine } from './engine.js';
import {
  SessionConflictError,
  SessionDataError,
  SessionStateError,
  SessionStoreUnavailableError,
  SessionTooLargeError,
  toSessionError,
} from './errors.js';
import type { Logger } from './logger.js';
import type { ConcurrencyMode } from './options.js';
import { isStorableText } from './serialize.js';
import {
  type CommitRequest,
  collectChanges,
  isForcedSave,
  markSaved,
  replaceData,
  Session,
  type SessionChanges,
  type SessionOwner,
  sessionMaxAge,
  snapshotData,
} from './session.js';
import type { DeviceSession, RequestOrigin, SessionEnd, SessionRecord } from './store.js';
import { generateToken, hashesEqual, hashToken } from './token.js';

/** Safety margin against clock skew between Node and the database for cached rows. */
const CACHE_EXPIRY_MARGIN_MS = 1_000;

/**
 * Emits an app event off the request path (as koa-session does): a listener that
 * throws is logged, and never turns the response into a 500.
 */
export function emitDeferred(
  app: { emit(event: string, payload: unknown): boolean },
  logger: Logger,
  event: string,
  payload: Record<string, unknown>,
): void {
  setImmediate(() => {
    try {
      app.emit(event, payload);
    } catch (error) {
      logger.error({ err: error, event }, 'a session event listener threw');
    }
  });
}

/**
 * The session of one request, koa-session's `ContextSession`: it alone holds the
 * request's session state, answers `ctx.session` and the `ctx.sessions` operations,
 * loads the row, and at the end plans and performs the one write.
 */
export class ContextSession implements SessionOwner {
  /** The loaded row; undefined for a new session or after the row vanished. */
  #record: SessionRecord | undefined;
  /** Materialised on first access of ctx.session (or on assignment). */
  #session: Session | undefined;
  /** The token to write back: the presented one, a fresh one, or the rotated one. */
  #token: string | undefined;
  /** ctx.session = null or destroy(): the loaded row is deleted at commit. */
  #destroyed = false;
  /** ctx.sessions.revoke…() ended this very session. */
  #revokedSelf = false;
  /** regenerate(): the next write swaps in `#token`. */
  #rotate = false;
  /** The rotation is the periodic one: it yields to a concurrent request that rotated first. */
  #periodicRotation = false;
  /**
   * The presented token was rotated away by another request and is within its grace
   * period: the session is served, but this response hands out no token (it never
   * knew the new one, and must not send the old one again).
   */
  #inGrace = false;
  /** A rotated-away token presented after its grace, found under this request's session lock: revoked once the transaction ends. */
  #stolenPending: { tokenHash: Buffer; record: SessionRecord } | undefined;
  /** bindUser(): the user to write (null unbinds), undefined when unchanged. */
  #pendingUserId: string | null | undefined;
  /** The commit LSN of this request's last write, for read-your-writes on replicas. */
  #fence: string | undefined;
  /** Statements run in the request's transaction: the cache is neither read nor filled. */
  #inTransaction = false;
  /** The request's transaction once it has one; else statements go to {@link #pool}. */
  #transactionRunner: TransactionRunner | undefined;
  /** The presented token's session was revoked or has expired (ctx.sessions.ended). */
  #ended: SessionEnd | undefined;
  /** Statements on the pool, made at the first statement: a cache hit runs none. */
  #poolRunner: StatementRunner | undefined;
  /** genid's non-secret label before the token in the key handed out. */
  #label: string | undefined;
  /** The commit under way (one started by `ctx.session.save()`, say): the next waits for it. */
  #committing: Promise<void> | undefined;

  constructor(
    private readonly engine: SessionEngine,
    readonly ctx: Context,
    readonly tenantId: string,
    readonly mode: ConcurrencyMode,
    readonly presented: PresentedToken,
  ) {
    this.#label = presented.label;
  }

  /** Who the event log names for a write, given the bound user. */
  #actor(userId: string | null): string {
    return this.engine.options.actor(this.ctx, userId);
  }

  /** Statements on the pool, also while the request has its own transaction. */
  get #pool(): StatementRunner {
    this.#poolRunner ??= this.engine.runner(
      () => ({ tenant: this.tenantId, actor: this.#actor(this.userId) }),
      () => this.#fence,
    );
    return this.#poolRunner;
  }

  /** Where this request's statements run: its transaction, or the pool. */
  get #runner(): StatementRunner {
    return this.#transactionRunner ?? this.#pool;
  }

  // --- SessionOwner: what ctx.session asks of its request ---------------------

  /** The configured cookie lifetime, what `session.maxAge` reads when not set. */
  get configuredMaxAge(): number | 'session' {
    return this.engine.options.cookie.maxAge;
  }

  /** When the loaded session expires: the sooner of its idle and absolute expiry. */
  get expiresAt(): number | undefined {
    const record = this.#record;
    if (!record || this.#destroyed) return undefined;
    return Math.min(record.idleExpiresAt.getTime(), record.absoluteExpiresAt.getTime());
  }

  /** koa-session's `externalKey`: the key as handed to the client. */
  externalKey(): string | undefined {
    if (this.#destroyed && !this.#session) return undefined;
    if (this.#inGrace && this.#token === undefined) return undefined;
    this.#token ??= generateToken();
    return this.#key();
  }

  /** The key as handed to the client: prefix, genid's label, the token. */
  #key(): string {
    return keyValue(this.engine.options.koa, this.#token!, this.#label);
  }

  /** A new session's key decoration: koa-session calls genid when it creates a session. */
  #newLabel(): void {
    const { genid } = this.engine.options.koa;
    this.#label = genid ? String(genid(this.ctx)) : undefined;
  }

  #emit(event: string, payload: Record<string, unknown>): void {
    emitDeferred(this.ctx.app, this.engine.options.logger, event, { ...payload, ctx: this.ctx });
  }

  // --- ctx.session ------------------------------------------------------------

  /** ctx.session's value: null once destroyed (until a new session is assigned). */
  get(): Session | null {
    if (this.#destroyed && !this.#session) return null;
    if (!this.#session) {
      if (this.#record) {
        const loaded = this.#record.snapshot ?? snapshotData(this.#record.data);
        this.#session = new Session(loaded, false, undefined, this);
      } else {
        this.#newLabel();
        this.#session = new Session(new Map(), true, undefined, this);
      }
    }
    return this.#session;
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
    if (this.#destroyed || !this.#record) {
      // A brand-new session replaces whatever this request had, with a fresh token.
      // Its baseline is empty: every assigned key is a change to save.
      if (this.#record) this.#destroyed = true;
      this.#newLabel();
      this.#session = new Session(new Map(), true, data, this);
      this.#token = generateToken();
      this.#rotate = false;
    } else {
      replaceData(this.get()!, data);
    }
  }

  // --- ctx.sessions -----------------------------------------------------------

  /** The public, non-secret id of the current session (null until it is first saved). */
  get id(): string | null {
    return this.#destroyed ? null : (this.#record?.id ?? null);
  }

  get version(): number | null {
    return this.#destroyed ? null : (this.#record?.version ?? null);
  }

  get userId(): string | null {
    if (this.#pendingUserId !== undefined) return this.#pendingUserId;
    return this.#destroyed ? null : (this.#record?.userId ?? null);
  }

  get token(): string | undefined {
    return this.#token;
  }

  get ended(): SessionEnd | undefined {
    return this.#ended;
  }

  get fence(): string | undefined {
    return this.#fence;
  }

  regenerate(): void {
    if (this.#destroyed && !this.#session) {
      throw new SessionStateError('cannot regenerate a destroyed session');
    }
    this.get();
    // The token this request presented was rotated away moments ago by another request,
    // whose response carries the new one: this request rotates nothing and hands out no token.
    if (this.#inGrace && this.#record && !this.#destroyed) return;
    this.#token = generateToken();
    this.#rotate = this.#record !== undefined;
    if (this.engine.options.koa.genid) this.#newLabel();
  }

  destroy(): void {
    this.#destroyed = true;
    this.#session = undefined;
    this.#pendingUserId = undefined;
  }

  bindUser(userId: string | null, regenerate: boolean): void {
    if (userId !== null && (typeof userId !== 'string' || userId.length === 0)) {
      throw new TypeError('bindUser expects a non-empty string user id, or null');
    }
    if (userId !== null && !isStorableText(userId)) {
      throw new SessionDataError('a user id with NUL or an unpaired surrogate', 'userId');
    }
    this.#pendingUserId = userId;
    // Marked, not saved: the binding is part of the request's one write at the end.
    const session = this.get();
    if (session) session._requireSave = true;
    if (regenerate) this.regenerate();
  }

  async listForUser(userId: string | null): Promise<(DeviceSession & { current: boolean })[]> {
    if (userId === null) return [];
    const devices = await this.engine.store.listForUser(this.#runner, this.tenantId, userId);
    return devices.map((device) => ({ ...device, current: device.id === this.id }));
  }

  async revoke(sessionId: string, reason: string): Promise<boolean> {
    checkReason(reason);
    if (!/^[0-9a-f-]{36}$/i.test(sessionId)) return false;
    const ended = await this.engine.store.revoke(this.#runner, this.tenantId, sessionId, reason);
    this.engine.forgetEnded(this.tenantId, ended);
    if (ended.length > 0 && sessionId === this.#record?.id) this.#endedBySelf();
    return ended.length > 0;
  }

  async revokeUser(userId: string, reason: string, exceptCurrent: boolean): Promise<number> {
    checkReason(reason);
    // No stored user id holds such text: nothing to end, and nothing to send.
    if (!isStorableText(userId)) return 0;
    const exceptId = exceptCurrent ? this.#record?.id : undefined;
    const ended = await this.engine.store.revokeUser(
      this.#runner,
      this.tenantId,
      userId,
      reason,
      exceptId,
    );
    this.engine.forgetEnded(this.tenantId, ended);
    if (this.#record && ended.some((session) => session.id === this.#record?.id)) {
      this.#endedBySelf();
    }
    return ended.length;
  }

  #endedBySelf(): void {
    this.#revokedSelf = true;
    this.#session = undefined;
  }

  // --- request transactions ---------------------------------------------------

  /**
   * From now on every statement runs in the request's transaction. `settings` (the
   * transaction's set_config statements) travel with its first statement; {@link settle}
   * sends them if the load did not.
   */
  useTransaction(trx: Transaction<SessionsDatabase>, settings: string): void {
    this.#transactionRunner = new TransactionRunner(trx, this.engine.metrics, {
      prelude: settings,
      actor: () => this.#actor(this.userId),
    });
    this.#inTransaction = true;
  }

  /** The request transaction's settings are in effect (before the handler's own SQL). */
  async settle(): Promise<void> {
    await this.#transactionRunner?.settle();
  }

  /**
   * After the request's transaction ended (committed or not): a stolen token found
   * under its session lock is revoked now, on the pool, whatever the handler did.
   */
  async afterTransaction(): Promise<void> {
    const stolen = this.#stolenPending;
    this.#stolenPending = undefined;
    if (stolen) await this.#revokeStolen(stolen.tokenHash, stolen.record);
  }

  // --- load -------------------------------------------------------------------

  /**
   * Loads the presented token's session: from the cache when it is trusted, the request
   * is not locking and the cached version is at least the client's fence (the version it
   * last wrote, through any process), else with one statement (which then fills the cache).
   */
  async load(forUpdate = false): Promise<void> {
    const token = this.presented.token;
    if (!token) return;
    const tokenHash = hashToken(token);
    const { cache, metrics, options } = this.engine;
    const cacheUsable = cache !== undefined && !forUpdate && !this.#inTransaction;
    // The version this client last wrote (through any app process): a copy older than
    // that, a replica's or this process's cache, would undo its own write.
    const fenceVersion =
      this.engine.hasReplicas && this.presented.via === 'cookie'
        ? readVersionFence(this.ctx, options.cookie)
        : 0;
    if (cacheUsable && this.engine.cacheTrusted) {
      const cached = cache.get(this.tenantId, tokenHash);
      // The key already is the hash; comparing the stored hash too costs nothing and
      // keeps a cache-key mistake from ever handing out another session.
      if (
        cached &&
        cached.version >= fenceVersion &&
        hashesEqual(cached.tokenHash, tokenHash) &&
        Math.min(cached.idleExpiresAt.getTime(), cached.absoluteExpiresAt.getTime()) -
          CACHE_EXPIRY_MARGIN_MS >
          Date.now()
      ) {
        metrics.increment('cacheHits');
        this.#record = {
          ...cached,
          touchDue: cached.lastSeenAt.getTime() < Date.now() - options.touchInterval,
          rotationDue:
            options.rotateInterval !== false &&
            cached.tokenIssuedAt.getTime() <= Date.now() - options.rotateInterval,
        };
        this.#token = token;
        this.#checkValid();
        return;
      }
      metrics.increment('cacheMisses');
    }
    const epoch = cache?.epoch ?? 0;
    const startedAt = performance.now();
    metrics.increment('loads');
    // A version announced by a notification is newer than any lagging replica's copy.
    const minVersion = Math.max(
      fenceVersion,
      cache?.announcedVersion(this.tenantId, tokenHash) ?? 0,
    );
    const found = await this.engine.withFailover(() =>
      this.engine.store.loadPresented(this.#runner, this.tenantId, tokenHash, {
        forUpdate,
        minVersion,
        // The middleware lengthened statement_timeout for the lock wait (see there).
        restoreStatementTimeout: forUpdate,
      }),
    );
    metrics.time('load', startedAt);
    if (found?.live) {
      const { rotatedAway, ...current } = found.live;
      if (rotatedAway === 'reused') {
        // A token rotated away longer ago than the grace period: a copy. The presenter
        // gets a fresh session; the session is revoked everywhere (after this request's
        // transaction when this request holds its session lock).
        if (forUpdate) this.#stolenPending = { tokenHash, record: current };
        else await this.#revokeStolen(tokenHash, current);
        return;
      }
      this.#record = current;
      if (rotatedAway === 'grace') this.#inGrace = true;
      else this.#token = token;
      // Cached under the session's current hash, never the rotated-away one.
      if (cacheUsable && this.engine.cacheTrusted) cache.set(current, epoch);
      this.#checkValid();
      return;
    }
    metrics.increment('misses');
    if (found) {
      // Revoked or expired: a fresh session starts, and the app may say why.
      this.#ended = found.ended;
      if (found.ended.reason === 'expired') {
        this.#emit('session:expired', {
          key: found.ended.id,
          value: found.data,
          via: this.presented.via,
          ended: found.ended,
        });
      } else {
        // koa-session has no revoked event: missed, keyed as an unknown token is.
        this.#emit('session:missed', {
          key: tokenHash.toString('hex'),
          via: this.presented.via,
          ended: found.ended,
        });
      }
    } else {
      // No row, so no public id: the key is what the store looks up, the token's SHA-256.
      this.#emit('session:missed', { key: tokenHash.toString('hex'), via: this.presented.via });
    }
  }

  /** koa-session's `valid(ctx, session)`: a refused session is dropped and a new one starts. */
  #checkValid(): void {
    const { valid } = this.engine.options.koa;
    const record = this.#record;
    if (!valid || !record) return;
    const session = this.get()!;
    if (valid(this.ctx, session as Record<string, unknown>)) return;
    this.#record = undefined;
    this.#session = undefined;
    this.#token = undefined;
    this.#label = undefined;
    this.#inGrace = false;
    this.#emit('session:invalid', { key: record.id, value: record.data, via: this.presented.via });
  }

  /** Revokes the session of a reused token, counts it and tells the app (`session:stolen`). */
  async #revokeStolen(tokenHash: Buffer, record: SessionRecord): Promise<void> {
    const { engine } = this;
    const ended = await engine.withFailover(() =>
      engine.store.revokeReusedToken(this.#pool, this.tenantId, tokenHash, this.#origin()),
    );
    engine.forgetEnded(this.tenantId, ended);
    if (ended.length === 0) return;
    engine.metrics.increment('stolenTokens');
    engine.options.logger.warn(
      { sessionId: record.id, tenant: this.tenantId },
      'pg-sessions: a rotated-away token was presented after its grace period; session revoked',
    );
    this.#emit('session:stolen', {
      id: record.id,
      userId: record.userId,
      via: this.presented.via,
    });
  }

  /** This request's client, as the audit log records it. */
  #origin(): RequestOrigin {
    return {
      ip: clientAddress(this.ctx.ip),
      userAgent: this.ctx.get('user-agent').slice(0, 1024) || null,
    };
  }

  /**
   * Periodic rotation (`rotateInterval`): a loaded session whose token is due gets a new
   * one at this request's write, when the client can take it transparently (a cookie or
   * an external key; never a bearer client, nor a request in a grace period).
   */
  #rotateIfDue(): void {
    const record = this.#record;
    if (
      !record?.rotationDue ||
      this.#inGrace ||
      this.#destroyed ||
      this.#revokedSelf ||
      this.#rotate ||
      (this.presented.via !== 'cookie' && this.presented.via !== 'external')
    ) {
      return;
    }
    this.get();
    this.#token = generateToken();
    this.#rotate = true;
    this.#periodicRotation = true;
  }

  // --- commit -----------------------------------------------------------------

  /** What the end of the request will do, given the handler's changes. */
  plan(changes: SessionChanges | undefined): CommitPlan {
    const session = this.#session;
    const { koa, cookie } = this.engine.options;
    const record = this.#record;
    const cookieMaxAge = (session && sessionMaxAge(session)) ?? cookie.maxAge;
    return planCommit({
      loaded: this.#record !== undefined,
      // Malformed cookies count too: the client's cookie is cleared.
      stale: this.presented.via !== 'none' && this.#record === undefined,
      presented: this.presented.token !== undefined,
      destroyRequested: this.#destroyed,
      revokedSelf: this.#revokedSelf,
      sessionInUse: session !== undefined,
      dataChanged:
        changes !== undefined &&
        (Object.keys(changes.patch).length > 0 || changes.removed.length > 0),
      forcedSave: session !== undefined && isForcedSave(session),
      rotate: this.#rotate,
      bindUser: this.#pendingUserId !== undefined,
      touchDue: this.#record?.touchDue === true,
      saveUninitialized: this.engine.options.saveUninitialized,
      rolling: koa.rolling,
      renew: koa.renew,
      // The key was last sent at the last write (or renewing touch), which set last_seen_at.
      renewDue:
        koa.renew &&
        record !== undefined &&
        typeof cookieMaxAge === 'number' &&
        Date.now() - record.lastSeenAt.getTime() > cookieMaxAge / 2,
    });
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
    const run = this.#commitOnce();
    this.#committing = run;
    try {
      await run;
    } catch (error) {
      const translated = toSessionError(error);
      if (translated instanceof SessionStoreUnavailableError) {
        this.engine.metrics.increment('unavailable');
      }
      throw translated;
    } finally {
      if (this.#committing === run) this.#committing = undefined;
    }
  }

  /**
   * Writes what the request changed, in one statement: create, delta save (with the
   * rotation and the user binding), destroy, or a batched touch when nothing changed.
   */
  async #commitOnce(): Promise<void> {
    const { options } = this.engine;
    this.#rotateIfDue();
    let changes = this.#session ? collectChanges(this.#session) : undefined;
    const plan = this.plan(changes);
    const writes = plan.action === 'create' || plan.action === 'save' || plan.action === 'rotate';
    if (writes && options.koa.beforeSave && this.#session) {
      // koa-session's hook runs once the write is decided, and may change the session.
      options.koa.beforeSave(this.ctx, this.#session as Record<string, unknown>);
      changes = collectChanges(this.#session);
    }
    if (changes && changes.size > options.maxSize) {
      throw new SessionTooLargeError(changes.size, options.maxSize);
    }
    const loaded = this.#record;
    if (plan.action === 'revoked' && loaded) this.#forget(loaded);
    if ((plan.destroyFirst || plan.action === 'destroy') && loaded) await this.#destroyRow(loaded);
    if (plan.action === 'touch' && loaded) this.#touch(loaded);
    if (plan.action === 'create' && changes) await this.#create(changes);
    if ((plan.action === 'save' || plan.action === 'rotate') && changes && loaded) {
      await this.#save(loaded, changes);
    }
    if (plan.clearCookie && this.#cookieTransport) clearCookie(this.ctx, options.cookie);
    // rolling / renew: the key again, with a fresh expiry, without a statement.
    if (plan.sendCookie && !writes && this.#record && this.#token) this.#sendKey();
  }

  /** Cookie transport: not bearer (the client keeps the token) nor an external key. */
  get #cookieTransport(): boolean {
    return this.presented.via !== 'bearer' && !this.engine.options.koa.externalKey;
  }

  /**
   * True when the token this request holds is the session's current one: a request in a
   * grace period, or one that lost its token to a concurrent rotation, holds none that
   * may be handed out.
   */
  get #tokenIsCurrent(): boolean {
    if (this.#token === undefined) return false;
    return !this.#record || hashesEqual(hashToken(this.#token), this.#record.tokenHash);
  }

  /** Hands the key to the client: the cookie, or koa-session's `externalKey.set`. */
  #sendKey(): void {
    if (!this.#tokenIsCurrent) return;
    const { koa, cookie } = this.engine.options;
    if (koa.externalKey) {
      koa.externalKey.set(this.ctx, this.#key());
      return;
    }
    if (!this.#cookieTransport) return;
    writeCookie(this.ctx, cookie, this.#key(), this.#session && sessionMaxAge(this.#session));
  }

  async #destroyRow(loaded: SessionRecord): Promise<void> {
    const { store, metrics } = this.engine;
    await this.engine.withFailover(() => store.destroy(this.#runner, this.tenantId, loaded.id));
    metrics.increment('destroys');
    this.#forget(loaded);
    this.#record = undefined;
  }

  async #create(changes: SessionChanges): Promise<void> {
    const { ctx, engine } = this;
    const { store, metrics, options } = engine;
    const session = this.#session!;
    const epoch = engine.cache?.epoch ?? 0;
    const startedAt = performance.now();
    this.#token ??= generateToken();
    const tokenHash = hashToken(this.#token);
    const { record, fence } = await engine.withFailover(async (retry) => {
      try {
        return await store.create(this.#runner, {
          tenantId: this.tenantId,
          tokenHash,
          data: session.toJSON(),
          userId: this.#pendingUserId ?? null,
          ...this.#origin(),
        });
      } catch (error) {
        // The first attempt's commit landed before the primary went away: not twice.
        if (!retry || (error as { code?: string }).code !== '23505') throw error;
        const landed = await store.load(this.#runner, this.tenantId, tokenHash, { minVersion: 1 });
        if (!landed) throw error;
        return { record: landed, fence: undefined };
      }
    });
    metrics.increment('creates');
    metrics.time('save', startedAt);
    this.#record = record;
    this.#destroyed = false;
    this.#fence = fence;
    markSaved(session, changes.baseline);
    this.#remember(record, epoch);
    this.#sendKey();
    if (this.#cookieTransport && engine.hasReplicas) {
      writeVersionFence(ctx, options.cookie, record.version, sessionMaxAge(session));
    }
    await this.#enforceMaxSessions();
  }

  async #save(loaded: SessionRecord, changes: SessionChanges): Promise<void> {
    const { ctx, engine } = this;
    const { store, metrics, options } = engine;
    const session = this.#session!;
    const epoch = engine.cache?.epoch ?? 0;
    const startedAt = performance.now();
    const newTokenHash = this.#rotate && this.#token ? hashToken(this.#token) : undefined;
    const userId = this.#pendingUserId;
    const { record: saved, fence } = await engine.withFailover(async (retry) => {
      if (retry) {
        // The first attempt may have committed just before the primary went away: a
        // newer version that already holds this delta means it did. Never apply twice.
        const current = await store.loadById(this.#runner, this.tenantId, loaded.id);
        if (
          current &&
          current.version > loaded.version &&
          holdsDelta(current, changes, newTokenHash, userId)
        ) {
          return { record: current, fence: undefined };
        }
      }
      return store.saveDelta(this.#runner, {
        tenantId: this.tenantId,
        id: loaded.id,
        patch: changes.patch,
        removed: changes.removed,
        rotation: newTokenHash && {
          newTokenHash,
          onlyIfTokenIs: this.#periodicRotation ? loaded.tokenHash : undefined,
          origin: this.#origin(),
        },
        userId,
        expected: this.mode === 'strict' ? changes.expected : undefined,
      });
    });
    metrics.time('save', startedAt);
    if (!saved) {
      await this.#saveMatchedNothing(loaded, changes);
      return;
    }
    metrics.increment('saves');
    if (newTokenHash && hashesEqual(saved.tokenHash, newTokenHash)) {
      metrics.increment('rotations');
    } else if (this.#rotate) {
      // A periodic rotation that a concurrent request's rotation beat: that response
      // carries the new token; this one hands out none.
      this.#token = undefined;
    }
    // The loaded token is no longer the session's (rotated by this request or another).
    if (!hashesEqual(saved.tokenHash, loaded.tokenHash)) this.#forget(loaded);
    this.#record = saved;
    this.#fence = fence;
    markSaved(session, changes.baseline);
    this.#remember(saved, epoch);
    // Every save sends the key again: the cookie's expiry slides with the session's.
    this.#sendKey();
    if (this.#cookieTransport && engine.hasReplicas) {
      writeVersionFence(ctx, options.cookie, saved.version, sessionMaxAge(session));
    }
    this.#rotate = false;
    this.#periodicRotation = false;
    if (userId) await this.#enforceMaxSessions();
  }

  /** A strict-mode conflict, or a session destroyed, revoked or expired while this request ran. */
  async #saveMatchedNothing(loaded: SessionRecord, changes: SessionChanges): Promise<void> {
    const { ctx, engine } = this;
    this.#forget(loaded);
    if (
      this.mode === 'strict' &&
      (await engine.store.isLive(this.#runner, this.tenantId, loaded.id))
    ) {
      engine.metrics.increment('conflicts');
      const keys = [...changes.expected.keys()];
      this.#emit('session:conflict', { id: loaded.id, keys });
      throw new SessionConflictError(keys);
    }
    // It stays ended: never brought back.
    this.#record = undefined;
    this.#emit('session:missed', { key: loaded.id, via: this.presented.via });
    if (this.#cookieTransport) clearCookie(ctx, engine.options.cookie);
  }

  /** Queues a sliding-expiry touch; the cached copy counts as touched at once. */
  #touch(record: SessionRecord): void {
    this.engine.touches.add(this.tenantId, record.id);
    this.engine.cache?.touched(record, new Date());
  }

  /** A row this process just wrote is the newest version: cache it (outside transactions). */
  #remember(record: SessionRecord, epoch: number): void {
    const { cache } = this.engine;
    if (!this.#inTransaction && this.engine.cacheTrusted) cache?.set(record, epoch);
    else cache?.delete(record.tenantId, record.tokenHash.toString('hex'));
  }

  /** The token is dead (destroyed, revoked, rotated away): never cache it again. */
  #forget(record: SessionRecord): void {
    this.engine.forgetEnded(this.tenantId, [record]);
  }

  async #enforceMaxSessions(): Promise<void> {
    const max = this.engine.options.maxSessionsPerUser;
    const record = this.#record;
    if (max === undefined || !record?.userId) return;
    const ended = await this.engine.store.enforceMaxSessions(
      this.#runner,
      this.tenantId,
      record.userId,
      max,
      record.id,
    );
    this.engine.forgetEnded(this.tenantId, ended);
  }
}

/** A revocation is never silently skipped: a reason PostgreSQL cannot store is an error. */
function checkReason(reason: string): void {
  if (!isStorableText(reason)) {
    throw new SessionDataError('a revocation reason with NUL or an unpaired surrogate', 'reason');
  }
}

/** Whether a row already carries this request's delta (the failover retry's check). */
function holdsDelta(
  record: SessionRecord,
  changes: { patch: Record<string, unknown>; removed: readonly string[] },
  newTokenHash: Buffer | undefined,
  userId: string | null | undefined,
): boolean {
  if (newTokenHash && !record.tokenHash.equals(newTokenHash)) return false;
  if (userId !== undefined && record.userId !== userId) return false;
  for (const [key, value] of Object.entries(changes.patch)) {
    if (JSON.stringify(record.data[key]) !== JSON.stringify(value)) return false;
  }
  return changes.removed.every((key) => !(key in record.data));
}
