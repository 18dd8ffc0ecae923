import { clearCookie, writeCookie } from './cookie.js';
import type { SessionEngine } from './engine.js';
import { SessionConflictError, SessionTooLargeError } from './errors.js';
import type { RequestState } from './request-state.js';
import { collectChanges, isForcedSave, markSaved } from './session.js';
import type { SessionRecord } from './store.js';
import { generateToken, hashToken } from './token.js';

/** Safety margin against clock skew between Node and the database for cached rows. */
const CACHE_EXPIRY_MARGIN_MS = 1_000;

/**
 * Loads the presented token's session: from the cache when it is trusted and the
 * request is not locking, else with one statement (which then fills the cache).
 */
export async function loadSession(
  engine: SessionEngine,
  state: RequestState,
  forUpdate = false,
): Promise<void> {
  const token = state.presented.token;
  if (!token) return;
  const tokenHash = hashToken(token);
  const { cache, metrics } = engine;
  const cacheUsable = cache !== undefined && !forUpdate && !state.inTransaction;
  if (cacheUsable && engine.cacheTrusted) {
    const cached = cache.get(state.tenantId, tokenHash);
    if (
      cached &&
      Math.min(cached.idleExpiresAt.getTime(), cached.absoluteExpiresAt.getTime()) -
        CACHE_EXPIRY_MARGIN_MS >
        Date.now()
    ) {
      metrics.increment('cacheHits');
      state.record = {
        ...cached,
        touchDue: cached.lastSeenAt.getTime() < Date.now() - engine.options.touchInterval,
      };
      state.token = token;
      return;
    }
    metrics.increment('cacheMisses');
  }
  const epoch = cache?.epoch ?? 0;
  const startedAt = performance.now();
  metrics.increment('loads');
  const record = await engine.store.load(state.runner, state.tenantId, tokenHash, { forUpdate });
  metrics.time('load', startedAt);
  if (record) {
    state.record = record;
    state.token = token;
    if (cacheUsable && engine.cacheTrusted) cache.set(record, epoch);
  } else {
    metrics.increment('misses');
    state.ctx.app.emit('session:missed', { ctx: state.ctx, via: state.presented.via });
  }
}

/**
 * Writes what the request changed, in one statement: create, delta save (with the
 * rotation and the user binding), destroy, or a batched touch when nothing changed.
 */
export async function commitSession(engine: SessionEngine, state: RequestState): Promise<void> {
  const { ctx } = state;
  const { options, store, metrics } = engine;
  const cookieTransport = state.presented.via !== 'bearer';
  const staleCookie = state.presented.via === 'cookie' && !state.record;
  if (state.revokedSelf) {
    if (state.record) forget(engine, state.record);
    if (cookieTransport) clearCookie(ctx, options.cookie);
    return;
  }
  if (state.destroyed && state.record) {
    await store.destroy(state.runner, state.tenantId, state.record.id);
    metrics.increment('destroys');
    forget(engine, state.record);
    state.record = undefined;
    if (!state.session && cookieTransport) clearCookie(ctx, options.cookie);
  }
  const session = state.session;
  if (!session) {
    if (state.record?.touchDue) touch(engine, state, state.record);
    if (staleCookie && !state.destroyed) clearCookie(ctx, options.cookie);
    if (state.destroyed && state.presented.token && cookieTransport)
      clearCookie(ctx, options.cookie);
    return;
  }
  const changes = collectChanges(session);
  if (changes.size > options.maxSize) throw new SessionTooLargeError(changes.size, options.maxSize);
  const dataChanged = Object.keys(changes.patch).length > 0 || changes.removed.length > 0;
  const changed =
    dataChanged || isForcedSave(session) || state.rotate || state.pendingUserId !== undefined;
  const epoch = engine.cache?.epoch ?? 0;
  const startedAt = performance.now();

  if (!state.record) {
    if (!changed && !options.saveUninitialized) {
      if (staleCookie) clearCookie(ctx, options.cookie);
      return;
    }
    state.token ??= generateToken();
    const { record, fence } = await store.create(state.runner, {
      tenantId: state.tenantId,
      tokenHash: hashToken(state.token),
      data: session.toJSON(),
      userId: state.pendingUserId ?? null,
      ip: ctx.ip || null,
      userAgent: ctx.get('user-agent').slice(0, 1024) || null,
    });
    metrics.increment('creates');
    metrics.time('save', startedAt);
    state.record = record;
    state.destroyed = false;
    state.fence = fence;
    markSaved(session);
    remember(engine, state, record, epoch);
    if (cookieTransport) writeCookie(ctx, options.cookie, state.token, session.maxAge);
    await enforceMaxSessions(engine, state);
    return;
  }

  if (!changed) {
    if (state.record.touchDue) touch(engine, state, state.record);
    return;
  }
  const loaded = state.record;
  const { record: saved, fence } = await store.saveDelta(state.runner, {
    tenantId: state.tenantId,
    id: loaded.id,
    tokenHash: loaded.tokenHash,
    patch: changes.patch,
    removed: changes.removed,
    newTokenHash: state.rotate && state.token ? hashToken(state.token) : undefined,
    userId: state.pendingUserId,
    expected: state.mode === 'strict' ? changes.expected : undefined,
  });
  metrics.time('save', startedAt);
  if (!saved) {
    forget(engine, loaded);
    if (
      state.mode === 'strict' &&
      (await store.isLive(state.runner, state.tenantId, loaded.id, loaded.tokenHash))
    ) {
      metrics.increment('conflicts');
      const keys = [...changes.expected.keys()];
      ctx.app.emit('session:conflict', { ctx, id: loaded.id, keys });
      throw new SessionConflictError(keys);
    }
    // Destroyed, revoked or expired while this request ran: it stays that way.
    state.record = undefined;
    ctx.app.emit('session:missed', { ctx, via: state.presented.via });
    if (cookieTransport) clearCookie(ctx, options.cookie);
    return;
  }
  metrics.increment('saves');
  if (state.rotate) forget(engine, loaded);
  state.record = saved;
  state.fence = fence;
  markSaved(session);
  remember(engine, state, saved, epoch);
  if (cookieTransport && (state.rotate || isForcedSave(session) || session.maxAge !== undefined)) {
    writeCookie(ctx, options.cookie, state.token!, session.maxAge);
  }
  state.rotate = false;
  if (state.pendingUserId) await enforceMaxSessions(engine, state);
}

/** Queues a sliding-expiry touch; the cached copy counts as touched at once. */
function touch(engine: SessionEngine, state: RequestState, record: SessionRecord): void {
  engine.touches.add(state.tenantId, record.id);
  engine.cache?.touched(record, new Date());
}

/** A row this process just wrote is the newest version: cache it (outside transactions). */
function remember(
  engine: SessionEngine,
  state: RequestState,
  record: SessionRecord,
  epoch: number,
): void {
  if (!state.inTransaction && engine.cacheTrusted) engine.cache?.set(record, epoch);
  else engine.cache?.delete(record.tenantId, record.tokenHash.toString('hex'));
}

/** The token is dead (destroyed, revoked, rotated away): never cache it again. */
function forget(engine: SessionEngine, record: SessionRecord): void {
  engine.cache?.invalidate(
    record.tenantId,
    record.tokenHash.toString('hex'),
    Number.POSITIVE_INFINITY,
    true,
  );
}

async function enforceMaxSessions(engine: SessionEngine, state: RequestState): Promise<void> {
  const max = engine.options.maxSessionsPerUser;
  const userId = state.record?.userId;
  if (max === undefined || !userId || !state.record) return;
  const ended = await engine.store.enforceMaxSessions(
    state.runner,
    state.tenantId,
    userId,
    max,
    state.record.id,
  );
  engine.forgetEnded(state.tenantId, ended);
}
