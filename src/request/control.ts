import type { ContextSession } from './context-session.js';
import type { DeviceSession, SessionEnd } from './store.js';

/**
 * `ctx.sessions`: what koa-session cannot do. Changes to the current session
 * (regenerate, bindUser, destroy) are applied by the request's single write at the
 * end; operations on other sessions (revoke, revokeUser, listForUser) run at once,
 * in the request's transaction when there is one. Every member delegates to the
 * request's {@link ContextSession}, which owns the state.
 */
export class SessionControl {
  readonly #context: ContextSession;

  constructor(
    context: ContextSession,
    /** How many sessions a user may keep (the maxSessionsPerUser option). */
    readonly maxSessionsPerUser: number | undefined,
  ) {
    this.#context = context;
  }

  /** The public, non-secret id of the current session (null until it is first saved). */
  get id(): string | null {
    return this.#context.id;
  }

  /** The row version this request loaded or last wrote (null for a new session). */
  get version(): number | null {
    return this.#context.version;
  }

  /** The user bound to the session, if any. */
  get userId(): string | null {
    return this.#context.userId;
  }

  /**
   * The secret token this response hands out (cookie or bearer), for API clients
   * that keep it themselves. Undefined for a request without a session.
   */
  get token(): string | undefined {
    return this.#context.token;
  }

  /**
   * Why the session this request presented has ended, when it was revoked
   * (`revokedReason`: `max_sessions`, or what revoke() was given) or has expired: to
   * tell a user why they were signed out. Undefined for a live session, no token, or
   * a token that finds no row (unknown, tampered, rotated away, destroyed, or removed
   * by garbage collection). Known at load, at no extra cost; the request goes on with a
   * fresh session.
   *
   * @example
   * if (ctx.sessions.ended?.revokedReason === 'max_sessions') notice = 'Signed in on too many devices';
   */
  get ended(): SessionEnd | undefined {
    return this.#context.ended;
  }

  /** The WAL position of this request's last write (read-your-writes fence). */
  get fence(): string | undefined {
    return this.#context.fence;
  }

  /**
   * Issues a new token for the same session (same id and data); the old token stops
   * working when the response is committed. Call it on login and privilege changes.
   */
  regenerate(): void {
    this.#context.regenerate();
  }

  /** Ends the session: the row is deleted and the cookie cleared (same as ctx.session = null). */
  destroy(): void {
    this.#context.destroy();
  }

  /**
   * Binds the session to a user (the app authenticated them). Regenerates the token
   * too unless `{ regenerate: false }`, which defeats session fixation at login.
   */
  bindUser(userId: string | null, options: { regenerate?: boolean } = {}): void {
    this.#context.bindUser(userId, options.regenerate ?? true);
  }

  /** The live sessions of a user (default: the current user), for a "your devices" page. */
  listForUser(
    userId: string | null = this.#context.userId,
  ): Promise<(DeviceSession & { current: boolean })[]> {
    return this.#context.listForUser(userId);
  }

  /** Revokes one session of this tenant by public id; true when it was live. */
  revoke(sessionId: string, reason = 'revoked'): Promise<boolean> {
    return this.#context.revoke(sessionId, reason);
  }

  /**
   * Revokes every live session of a user in this tenant, on every app node; pass
   * `{ exceptCurrent: true }` for "log out my other devices". Returns how many ended.
   */
  revokeUser(
    userId: string,
    options: { reason?: string; exceptCurrent?: boolean } = {},
  ): Promise<number> {
    return this.#context.revokeUser(
      userId,
      options.reason ?? 'revoked',
      options.exceptCurrent ?? false,
    );
  }
}
