import type { PresentedRow, SessionRecord } from '../store/records.js';
import { sessionIdOf } from '../token.js';
import type { RequestSession } from './request-session.js';

/**
 * Loads the presented token's session into the request: from the node's cache when it
 * is trusted, the request runs outside a transaction and the cached copy is fresh
 * enough (SessionCache.fresh), else with one statement, which then fills the cache. A
 * token rotated away past its grace is a stolen copy: its session is revoked (after
 * the request's transaction when the load holds the session's lock), and the request
 * starts a fresh session, as it does for an unknown, revoked or expired token.
 */
export async function loadSession(request: RequestSession, forUpdate = false): Promise<void> {
  const { token } = request.presented;
  if (!token) return;
  const tokenHash = request.hashOf(token);
  const { cache, cacheTrust, metrics, transport } = request.services;
  const cacheUsable = cache !== undefined && !forUpdate && !request.inTransaction;
  // The version this client last wrote (through any app process): a copy older than
  // that, a replica's or a cache's, would undo its own write.
  const fenceVersion = transport.fence(request.ctx, request.presented);
  if (cacheUsable && cacheTrust?.healthy) {
    const cached = cache.fresh(request.tenantId, tokenHash, fenceVersion);
    if (cached) {
      metrics.increment('cacheHits');
      // The row's due flags were computed when it was read: judge them by this moment.
      const { touchInterval, rotateInterval } = request.services.options;
      const now = Date.now();
      request.touchDue = cached.lastSeenAt.getTime() < now - touchInterval;
      request.rotationDue =
        rotateInterval !== false && cached.tokenIssuedAt.getTime() <= now - rotateInterval;
      use(request, cached, token);
      return;
    }
    metrics.increment('cacheMisses');
  }
  const epoch = cache?.epoch ?? 0;
  const startedAt = performance.now();
  metrics.increment('loads');
  const found = await request.store.lookup(tokenHash, {
    forUpdate,
    // A version announced by a notification is newer than any lagging replica's copy.
    minVersion: Math.max(fenceVersion, cache?.announcedVersion(request.tenantId, tokenHash) ?? 0),
    fence: request.fence,
    // The middleware lengthened statement_timeout for the lock wait (see there).
    restoreStatementTimeout: forUpdate,
    sessionId: sessionIdOf(token),
  });
  metrics.time('load', startedAt);
  if (found?.live) {
    const { rotatedAway, ...current } = found.live;
    if (rotatedAway === 'reused') {
      if (forUpdate) request.stolen = { tokenHash, record: current };
      else await revokeStolen(request, tokenHash, current);
      return;
    }
    // Cached under the session's current hash, never the rotated-away one.
    if (cacheUsable && cacheTrust?.healthy) cache.set(current, epoch);
    request.touchDue = current.touchDue;
    request.rotationDue = current.rotationDue;
    if (rotatedAway === 'grace') {
      request.inGrace = true;
      use(request, current, undefined);
    } else {
      use(request, current, token);
    }
    return;
  }
  metrics.increment('misses');
  missed(request, tokenHash, found);
}

/** No live session for the token: a fresh one starts, and the app is told why (koa-session's events). */
function missed(request: RequestSession, tokenHash: Buffer, found: PresentedRow): void {
  const via = request.presented.via;
  const key = tokenHash.toString('hex');
  if (!found?.ended) {
    // No row, so no public id: the key is what the store looks up, the token's SHA-256.
    request.emit('session:missed', { key, via });
    return;
  }
  // Revoked or expired: the app may say why (ctx.sessions.ended).
  request.ended = found.ended;
  if (found.ended.reason === 'expired') {
    request.emit('session:expired', {
      key: found.ended.id,
      value: found.data,
      via,
      ended: found.ended,
    });
  } else {
    // koa-session has no revoked event: missed, keyed as an unknown token is.
    request.emit('session:missed', { key, via, ended: found.ended });
  }
}

/**
 * The request has its session, unless koa-session's `valid(ctx, session)` refuses it:
 * then it is dropped and a new one starts (`session:invalid`).
 */
function use(request: RequestSession, record: SessionRecord, token: string | undefined): void {
  request.record = record;
  request.token = token;
  const { valid } = request.services.options.koa;
  if (!valid || valid(request.ctx, request.get() as Record<string, unknown>)) return;
  request.record = undefined;
  request.session = undefined;
  request.token = undefined;
  request.label = undefined;
  request.inGrace = false;
  request.emit('session:invalid', {
    key: record.id,
    value: record.data,
    via: request.presented.via,
  });
}

/**
 * After the request's transaction ended (committed or not): a stolen token found under
 * its session lock is revoked now, on the pool, whatever the handler did.
 */
export async function revokeStolenAfterTransaction(request: RequestSession): Promise<void> {
  const { stolen } = request;
  request.stolen = undefined;
  if (stolen) await revokeStolen(request, stolen.tokenHash, stolen.record);
}

/** Revokes the session of a reused token, counts it and tells the app (`session:stolen`). */
async function revokeStolen(
  request: RequestSession,
  tokenHash: Buffer,
  record: SessionRecord,
): Promise<void> {
  const { services } = request;
  const ended = await request.poolStore.revokeReusedToken(
    record.id,
    tokenHash,
    request.origin(),
    request.actor(),
  );
  services.cache?.forgetEnded(request.tenantId, ended);
  if (ended.length === 0) return;
  services.metrics.increment('stolenTokens');
  services.logger.warn(
    { sessionId: record.id, tenant: request.tenantId },
    'pg-sessions: a rotated-away token was presented after its grace period; session revoked',
  );
  request.emit('session:stolen', {
    id: record.id,
    userId: record.userId,
    via: request.presented.via,
  });
}
