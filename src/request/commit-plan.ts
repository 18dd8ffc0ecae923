/**
 * What a request's end does to its session, decided before anything is done (the
 * reason koa-session computes in `_shouldSaveSession`). Pure: the unit tests check
 * every branch without a database.
 */

/** The one thing the commit does with the database. */
export type CommitAction =
  /** Nothing to write. */
  | 'none'
  /** Unchanged, but its sliding expiry is due: a batched touch, no statement of its own. */
  | 'touch'
  /** A new row (and a new cookie). */
  | 'create'
  /** A delta write on the loaded row. */
  | 'save'
  /** A delta write that also swaps the token (regenerate, bindUser). */
  | 'rotate'
  /** The loaded row is deleted. */
  | 'destroy'
  /** The request revoked its own session: the row is already ended, only the cookie goes. */
  | 'revoked';

export interface CommitFacts {
  /** A live row was loaded for the presented token. */
  readonly loaded: boolean;
  /** The presented token found no live row (unknown, expired, revoked). */
  readonly stale: boolean;
  /** A token was presented at all. */
  readonly presented: boolean;
  /** `ctx.session = null` or `destroy()` was called (a later assignment may follow). */
  readonly destroyRequested: boolean;
  /** `ctx.sessions.revoke…()` ended this very session. */
  readonly revokedSelf: boolean;
  /** A session object exists at the end (it was read, or assigned after a destroy). */
  readonly sessionInUse: boolean;
  /** Keys were set or removed since load (for a new session: any key at all). */
  readonly dataChanged: boolean;
  /** `save()` or a `maxAge` change asked for a write. */
  readonly forcedSave: boolean;
  /** `regenerate()` or `bindUser()` asked for a new token. */
  readonly rotate: boolean;
  /** `bindUser()` changes the bound user. */
  readonly bindUser: boolean;
  /** The loaded row's last_seen_at is older than the touch interval. */
  readonly touchDue: boolean;
  /** The `saveUninitialized` option. */
  readonly saveUninitialized: boolean;
  /** koa-session's `rolling`: a session in use re-sends its cookie on every request. */
  readonly rolling: boolean;
  /** koa-session's `renew`: touches re-send the cookie too (its age is the row's last_seen_at). */
  readonly renew: boolean;
  /** `renew`, and the cookie is in the last half of its lifetime: save and re-send it. */
  readonly renewDue: boolean;
}

export interface CommitPlan {
  readonly action: CommitAction;
  /** Why, in a few words: for debug logs and test messages. */
  readonly reason: string;
  /** Delete the loaded row before creating the new one (`ctx.session = null; ctx.session = {…}`). */
  readonly destroyFirst: boolean;
  /** Expire the session cookie (when the token travels in a cookie). */
  readonly clearCookie: boolean;
  /**
   * Send the session's key again (fresh cookie expiry). Every write does; `rolling`
   * and `renew` do it without a statement of their own.
   */
  readonly sendCookie: boolean;
}

function plan(
  action: CommitAction,
  reason: string,
  extra: Partial<Omit<CommitPlan, 'action' | 'reason'>> = {},
): CommitPlan {
  const writes = action === 'create' || action === 'save' || action === 'rotate';
  return { action, reason, destroyFirst: false, clearCookie: false, sendCookie: writes, ...extra };
}

/** Decides the commit of one request from what it loaded and what the handler did. */
export function planCommit(facts: CommitFacts): CommitPlan {
  if (facts.revokedSelf) return plan('revoked', 'revoked by this request', { clearCookie: true });
  const changed = facts.dataChanged || facts.forcedSave || facts.rotate || facts.bindUser;
  if (facts.destroyRequested && facts.loaded) {
    if (facts.sessionInUse && (changed || facts.saveUninitialized)) {
      return plan('create', 'replaced by a new session', { destroyFirst: true });
    }
    return plan('destroy', 'destroyed', { clearCookie: true });
  }
  if (!facts.sessionInUse) {
    // koa-session expires the cookie whenever the session is set to null.
    if (facts.destroyRequested) {
      return plan('none', 'destroyed a session that was not live', { clearCookie: true });
    }
    if (facts.loaded && facts.touchDue) {
      return plan('touch', 'unread, expiry due', { sendCookie: facts.renew });
    }
    if (facts.stale) return plan('none', 'stale token', { clearCookie: true });
    return plan('none', 'untouched');
  }
  if (!facts.loaded) {
    if (changed || facts.saveUninitialized) return plan('create', 'new session');
    return plan('none', facts.stale ? 'stale token, nothing to save' : 'new and empty', {
      clearCookie: facts.stale,
    });
  }
  if (!changed) {
    if (facts.renewDue) return plan('save', 'renew: the cookie is in its last half-life');
    const sendCookie = facts.rolling || (facts.renew && facts.touchDue);
    if (facts.touchDue) return plan('touch', 'unchanged, expiry due', { sendCookie });
    return plan('none', facts.rolling ? 'unchanged, rolling cookie' : 'unchanged', { sendCookie });
  }
  return facts.rotate ? plan('rotate', 'new token') : plan('save', 'changed');
}
