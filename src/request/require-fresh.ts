import type { Middleware } from 'koa';
import { SessionOptionsError } from '../errors.js';

/**
 * A route that needs a recent sign-in ("sudo mode"): answers 401
 * `SESSION_REAUTHENTICATION_REQUIRED` unless the signed-in user proved who they are
 * within `maxAge` ms, by the database's clock (`ctx.sessions.requireFresh()`). Mount it
 * after the session middleware, on the routes it guards.
 *
 * @example
 * router.post('/account/delete', requireFresh(5 * 60_000), deleteAccount);
 */
export function requireFresh(maxAge: number): Middleware {
  if (!Number.isFinite(maxAge) || maxAge < 0) {
    throw new SessionOptionsError('requireFresh(maxAge)', 'must be a number of ms, 0 or more');
  }
  return async (ctx, next) => {
    if (!ctx.sessions) {
      throw new SessionOptionsError('requireFresh(maxAge)', 'mount it after sessions()');
    }
    await ctx.sessions.requireFresh(maxAge);
    await next();
  };
}
