import { clearCookie, readVersionFence, writeCookie, writeVersionFence } from './cookie.js';
import type { SessionEngine } from './engine.js';
import { SessionConflictError, SessionTooLargeError } from './errors.js';
import type { RequestState } from './request-state.js';
import { collectChanges, isForcedSave, markSaved } from './session.js';
import type { SessionRecord } from './store.js';
import { generateToken, hashesEqual, hashToken } from './token.js';

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
    // The key already is the hash; comparing the stored hash too costs nothing and
    // keeps a cache-key mistake from ever handing out another session.
    if (
      cached &&
      hashesEqual(cached.tokenHash, tokenHash) &&
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
  if (engine.hasReplicas && state.presented.via === 'cookie') {
    state.minVersion = readVersionFence(state.ctx, engine.options.cookie);
  }
  // A version announced by a notification is newer than any lagging replica's copy.
  const minVersion = Math.max(
    state.minVersion,
    cache?.announcedVersion(state.tenantId, tokenHash) ?? 0,
  );
  const record = await engine.withFailover(() =>
    engine.store.load(state.runner, state.tenantId, tokenHash, { forUpdate, minVersion }),
  );
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
    const doomed = state.record;
    await engine.withFailover(() => store.destroy(state.runner, state.tenantId, doomed.id));
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
    const tokenHash = hashToken(state.token);
    const { record, fence } = await engine.withFailover(async (retry) => {
      try {
        return await store.create(state.runner, {
          tenantId: state.tenantId,
          tokenHash,
          data: session.toJSON(),
          userId: state.pendingUserId ?? null,
          ip: ctx.ip || null,
          userAgent: ctx.get('user-agent').slice(0, 1024) || null,
        });
      } catch (error) {
        // The first attempt's commit landed before the primary went away: not twice.
        if (!retry || (error as { code?: string }).code !== '23505') throw error;
        const landed = await store.load(state.runner, state.tenantId, tokenHash, { minVersion: 1 });
        if (!landed) throw error;
        return { record: landed, fence: undefined };
      }
    });
    metrics.increment('creates');
    metrics.time('save', startedAt);
    state.record = record;
    state.destroyed = false;
    state.fence = fence;
    markSaved(session, changes.baseline);
    remember(engine, state, record, epoch);
    if (cookieTransport) writeCookie(ctx, options.cookie, state.token, session.maxAge);
    if (cookieTransport && engine.hasReplicas)
      writeVersionFence(ctx, options.cookie, record.version, session.maxAge);
    await enforceMaxSessions(engine, state);
    return;
  }

  if (!changed) {
    if (state.record.touchDue) touch(engine, state, state.record);
    return;
  }
  const loaded = state.record;
  const newTokenHash = state.rotate && state.token ? hashToken(state.token) : undefined;
  const { record: saved, fence } = await engine.withFailover(async (retry) => {
    if (retry) {
      // The first attempt may have committed just before the primary went away: a
      // newer version that already holds this delta means it did. Never apply twice.
      const current = await store.loadById(state.runner, state.tenantId, loaded.id);
      if (
        current &&
        current.version > loaded.version &&
        holdsDelta(current, changes, newTokenHash, state.pendingUserId)
      ) {
        return { record: current, fence: undefined };
      }
    }
    return store.saveDelta(state.runner, {
      tenantId: state.tenantId,
      id: loaded.id,
      tokenHash: loaded.tokenHash,
      patch: changes.patch,
      removed: changes.removed,
      newTokenHash,
      userId: state.pendingUserId,
      expected: state.mode === 'strict' ? changes.expected : undefined,
    });
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
  markSaved(session, changes.baseline);
  remember(engine, state, saved, epoch);
  if (cookieTransport && (state.rotate || isForcedSave(session) || session.maxAge !== undefined)) {
    writeCookie(ctx, options.cookie, state.token!, session.maxAge);
  }
  if (cookieTransport && engine.hasReplicas)
    writeVersionFence(ctx, options.cookie, saved.version, session.maxAge);
  state.rotate = false;
  if (state.pendingUserId) await enforceMaxSessions(engine, state);
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
