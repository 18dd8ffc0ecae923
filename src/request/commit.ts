import { SessionConflictError, SessionStateError, SessionTooLargeError } from '../errors.js';
import {
  collectChanges,
  isForcedSave,
  markSaved,
  type SessionChanges,
  sessionMaxAge,
  valuesOf,
} from '../session.js';
import type { SessionRecord } from '../store/records.js';
import { generateToken, hashesEqual, sessionIdOf } from '../token.js';
import { type CommitPlan, planCommit } from './commit-plan.js';
import type { RequestSession } from './request-session.js';

/**
 * The end of a request's session (or a commit the handler asked for): decide with the
 * pure {@link planCommit}, perform the one statement it calls for (create, delta save
 * with rotation and user binding, destroy, or a batched touch), then hand the key to
 * the client, update this node's cache and tell the app.
 */
export async function commitSession(request: RequestSession): Promise<void> {
  const { options } = request.services;
  rotateIfDue(request);
  let changes = request.session ? collectChanges(request.session) : undefined;
  const plan = planFor(request, changes);
  const writes = plan.action === 'create' || plan.action === 'save' || plan.action === 'rotate';
  if (writes && options.koa.beforeSave && request.session) {
    // koa-session's hook runs once the write is decided, and may change the session.
    options.koa.beforeSave(request.ctx, request.session as Record<string, unknown>);
    changes = collectChanges(request.session);
  }
  if (changes && changes.size > options.maxSize) {
    throw new SessionTooLargeError(changes.size, options.maxSize);
  }
  const loaded = request.record;
  if (plan.action === 'revoked' && loaded) forget(request, loaded);
  if ((plan.destroyFirst || plan.action === 'destroy') && loaded) await destroy(request, loaded);
  if (plan.action === 'touch' && loaded) touch(request, loaded);
  if (plan.action === 'create' && changes) await create(request, changes);
  if ((plan.action === 'save' || plan.action === 'rotate') && changes && loaded) {
    await save(request, loaded, changes);
  }
  if (plan.clearCookie) request.services.transport.clear(request.ctx, request.presented);
  // rolling / renew: the key again, with a fresh expiry, without a statement.
  if (plan.sendCookie && !writes && request.record) sendKey(request, undefined);
}

/** What the end of the request will do, given the handler's changes. */
function planFor(request: RequestSession, changes: SessionChanges | undefined): CommitPlan {
  const { session, record } = request;
  const { koa, cookie, saveUninitialized } = request.services.options;
  const cookieMaxAge = (session && sessionMaxAge(session)) ?? cookie.maxAge;
  return planCommit({
    loaded: record !== undefined,
    // Malformed cookies count too: the client's cookie is cleared.
    stale: request.presented.via !== 'none' && record === undefined,
    presented: request.presented.token !== undefined,
    destroyRequested: request.destroyed,
    revokedSelf: request.revokedSelf,
    sessionInUse: session !== undefined,
    dataChanged:
      changes !== undefined &&
      (Object.keys(changes.patch).length > 0 || changes.removed.length > 0),
    forcedSave: session !== undefined && isForcedSave(session),
    rotate: request.rotate,
    bindUser: request.pendingUserId !== undefined,
    touchDue: record !== undefined && request.touchDue,
    saveUninitialized,
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
 * Periodic rotation (`rotateInterval`): a loaded session whose token is due gets a new
 * one at this request's write, when the client can take it transparently (a cookie or
 * an external key; never a bearer client, nor a request in a grace period).
 */
function rotateIfDue(request: RequestSession): void {
  const via = request.presented.via;
  if (
    !request.record ||
    !request.rotationDue ||
    request.inGrace ||
    request.destroyed ||
    request.revokedSelf ||
    request.rotate ||
    (via !== 'cookie' && via !== 'external')
  ) {
    return;
  }
  request.get();
  request.token = generateToken(request.record.id);
  request.rotate = true;
  request.periodicRotation = true;
}

/**
 * Hands the key to the client, if the token this request holds is the session's
 * current one: a request in a grace period, or one that lost its token to a
 * concurrent rotation, holds none that may be handed out; nor does one whose session
 * ended while it ran.
 */
function sendKey(request: RequestSession, version: number | undefined): void {
  const { token, record, session } = request;
  if (token === undefined || !record) return;
  if (!hashesEqual(request.hashOf(token), record.tokenHash)) return;
  const key = request.services.transport.key(token, request.label);
  const maxAge = session && sessionMaxAge(session);
  request.services.transport.send(request.ctx, request.presented, key, maxAge, version);
  request.keySent = true;
}

/**
 * Just before the response goes out (after the request's transaction, in lock mode): a
 * key this response carries whose session this node has seen end since (a logout that
 * was waiting for this request's lock, say) is withdrawn, and the cookie cleared
 * instead, so that the browser is not handed a dead token after the logout's answer.
 */
export function withdrawEndedKey(request: RequestSession): void {
  const { cache, transport } = request.services;
  const { token } = request;
  if (!cache || !request.keySent || token === undefined) return;
  if (
    cache.announcedVersion(request.tenantId, request.hashOf(token)) !== Number.POSITIVE_INFINITY
  ) {
    return;
  }
  request.keySent = false;
  transport.clear(request.ctx, request.presented);
}

async function destroy(request: RequestSession, loaded: SessionRecord): Promise<void> {
  await request.store.destroy(loaded.id, request.actor());
  request.services.metrics.increment('destroys');
  forget(request, loaded);
  request.record = undefined;
}

async function create(request: RequestSession, changes: SessionChanges): Promise<void> {
  const { services } = request;
  const session = request.session!;
  const epoch = services.cache?.epoch ?? 0;
  const startedAt = performance.now();
  // A new session's token was made for it (set(), externalKey()), or is made now; the
  // id it names is the new row's. On Citus, a request transaction that loaded the
  // presented token's session ran on its worker: the new one is made on the same shard.
  const near =
    request.inTransaction && services.topology.citus && sessionIdOf(request.presented.token ?? '');
  if (near) request.token = generateToken(await request.store.colocatedId(near));
  request.token ??= generateToken();
  const id = sessionIdOf(request.token);
  if (id === undefined) throw new SessionStateError('a new session needs a token that names it');
  const { record, fence } = await request.store.create({
    id,
    tokenHash: request.hashOf(request.token),
    data: valuesOf(changes.baseline),
    userId: request.pendingUserId ?? null,
    origin: request.origin(),
    actor: request.actor(),
  });
  services.metrics.increment('creates');
  services.metrics.time('save', startedAt);
  request.record = { ...record, snapshot: changes.baseline };
  request.destroyed = false;
  request.fence = fence ?? request.fence;
  markSaved(session, changes.baseline);
  remember(request, request.record, epoch);
  sendKey(request, record.version);
  await enforceMaxSessions(request);
}

async function save(
  request: RequestSession,
  loaded: SessionRecord,
  changes: SessionChanges,
): Promise<void> {
  const { services } = request;
  const session = request.session!;
  const epoch = services.cache?.epoch ?? 0;
  const startedAt = performance.now();
  const newTokenHash = request.rotate && request.token ? request.hashOf(request.token) : undefined;
  const userId = request.pendingUserId;
  const { saved, fence } = await request.store.save({
    loaded,
    patch: changes.patch,
    removed: changes.removed,
    expected: request.mode === 'strict' ? changes.expected : undefined,
    rotation: newTokenHash && {
      newTokenHash,
      onlyIfCurrent: request.periodicRotation,
      origin: request.origin(),
    },
    userId,
    actor: request.actor(),
  });
  services.metrics.time('save', startedAt);
  if (!saved) {
    await saveMatchedNothing(request, loaded, changes);
    return;
  }
  services.metrics.increment('saves');
  if (newTokenHash && hashesEqual(saved.tokenHash, newTokenHash)) {
    services.metrics.increment('rotations');
  } else if (request.rotate) {
    // A periodic rotation that a concurrent request's rotation beat: that response
    // carries the new token; this one hands out none.
    request.token = undefined;
  }
  // The loaded token is no longer the session's (rotated by this request or another).
  if (!hashesEqual(saved.tokenHash, loaded.tokenHash)) forget(request, loaded);
  // The stored data is the loaded data with this delta, unless another request wrote too.
  const record: SessionRecord = {
    ...loaded,
    ...saved,
    data: saved.data ?? valuesOf(changes.baseline),
    snapshot: saved.data ? undefined : changes.baseline,
    // Just written: its expiry slid now, and the token is the newest a rotation could give.
    touchDue: false,
    rotationDue: false,
  };
  request.touchDue = false;
  request.rotationDue = false;
  request.record = record;
  request.fence = fence ?? request.fence;
  markSaved(session, changes.baseline);
  remember(request, record, epoch);
  // Every save sends the key again: the cookie's expiry slides with the session's.
  sendKey(request, record.version);
  request.rotate = false;
  request.periodicRotation = false;
  if (userId) await enforceMaxSessions(request);
}

/** A strict-mode conflict, or a session destroyed, revoked or expired while this request ran. */
async function saveMatchedNothing(
  request: RequestSession,
  loaded: SessionRecord,
  changes: SessionChanges,
): Promise<void> {
  forget(request, loaded);
  if (request.mode === 'strict' && (await request.store.isLive(loaded.id))) {
    request.services.metrics.increment('conflicts');
    const keys = [...changes.expected.keys()];
    request.emit('session:conflict', { id: loaded.id, keys });
    throw new SessionConflictError(keys);
  }
  // It stays ended: never brought back, and its token is never handed out again.
  request.record = undefined;
  request.token = undefined;
  request.emit('session:missed', { key: loaded.id, via: request.presented.via });
  request.services.transport.clear(request.ctx, request.presented);
}

/** Queues a sliding-expiry touch; the cached copy counts as touched at once. */
function touch(request: RequestSession, record: SessionRecord): void {
  request.services.touches.add(request.tenantId, record.id);
  request.services.cache?.touched(record, new Date());
}

/** A row this process just wrote is the newest version: cache it (outside transactions). */
function remember(request: RequestSession, record: SessionRecord, epoch: number): void {
  const { cache, cacheTrust } = request.services;
  if (!cache) return;
  if (!request.inTransaction && cacheTrust?.healthy) cache.set(record, epoch);
  else cache.delete(record.tenantId, record.tokenHash.toString('hex'));
}

/** The token is dead (destroyed, revoked, rotated away): never cache it again. */
function forget(request: RequestSession, record: SessionRecord): void {
  request.services.cache?.forgetEnded(request.tenantId, [record]);
}

async function enforceMaxSessions(request: RequestSession): Promise<void> {
  const max = request.services.options.maxSessionsPerUser;
  const { record } = request;
  if (max === undefined || !record?.userId) return;
  const ended = await request.store.enforceMaxSessions(
    record.userId,
    max,
    record.id,
    request.actor(),
  );
  request.services.cache?.forgetEnded(request.tenantId, ended);
}
