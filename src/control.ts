import { SessionStateError } from './errors.js';
import type { RequestState } from './request-state.js';
import type { DeviceSession, EndedSession, SessionStore } from './store.js';
import { generateToken } from './token.js';

/**
 * `ctx.sessions`: what koa-session cannot do. Changes to the current session
 * (regenerate, bindUser, destroy) are applied by the request's single write at the
 * end; operations on other sessions (revoke, revokeUser, listForUser) run at once,
 * in the request's transaction when there is one.
 */
export class SessionControl {
  constructor(
    private readonly state: RequestState,
    private readonly store: SessionStore,
    private readonly hooks: {
      readonly onMaxSessions: number | undefined;
      /** Sessions this request ended: this process drops them from its cache at once. */
      readonly ended: (sessions: readonly EndedSession[]) => void;
    },
  ) {}

  /** The public, non-secret id of the current session (null until it is first saved). */
  get id(): string | null {
    return this.state.destroyed ? null : (this.state.record?.id ?? null);
  }

  /** The row version this request loaded or last wrote (null for a new session). */
  get version(): number | null {
    return this.state.destroyed ? null : (this.state.record?.version ?? null);
  }

  /** The user bound to the session, if any. */
  get userId(): string | null {
    return this.state.userId;
  }

  /**
   * The secret token this response hands out (cookie or bearer), for API clients
   * that keep it themselves. Undefined for a request without a session.
   */
  get token(): string | undefined {
    return this.state.token;
  }

  /** The WAL position of this request's last write (read-your-writes fence). */
  get fence(): string | undefined {
    return this.state.fence;
  }

  /**
   * Issues a new token for the same session (same id and data); the old token stops
   * working when the response is committed. Call it on login and privilege changes.
   */
  regenerate(): void {
    if (this.state.destroyed && !this.state.session) {
      throw new SessionStateError('cannot regenerate a destroyed session');
    }
    this.state.currentSession();
    this.state.token = generateToken();
    this.state.rotate = this.state.record !== undefined;
  }

  /** Ends the session: the row is deleted and the cookie cleared (same as ctx.session = null). */
  destroy(): void {
    this.state.destroyed = true;
    this.state.session = undefined;
    this.state.pendingUserId = undefined;
  }

  /**
   * Binds the session to a user (the app authenticated them). Regenerates the token
   * too unless `{ regenerate: false }`, which defeats session fixation at login.
   */
  bindUser(userId: string | null, options: { regenerate?: boolean } = {}): void {
    if (userId !== null && (typeof userId !== 'string' || userId.length === 0)) {
      throw new TypeError('bindUser expects a non-empty string user id, or null');
    }
    this.state.pendingUserId = userId;
    this.state.currentSession()?.save();
    if (options.regenerate ?? true) this.regenerate();
  }

  /** The live sessions of a user (default: the current user), for a "your devices" page. */
  async listForUser(
    userId: string | null = this.state.userId,
  ): Promise<(DeviceSession & { current: boolean })[]> {
    if (userId === null) return [];
    const devices = await this.store.listForUser(this.state.runner, this.state.tenantId, userId);
    return devices.map((device) => ({ ...device, current: device.id === this.id }));
  }

  /** Revokes one session of this tenant by public id; true when it was live. */
  async revoke(sessionId: string, reason = 'revoked'): Promise<boolean> {
    if (!/^[0-9a-f-]{36}$/i.test(sessionId)) return false;
    const ended = await this.store.revoke(
      this.state.runner,
      this.state.tenantId,
      sessionId,
      reason,
    );
    this.hooks.ended(ended);
    if (ended.length > 0 && sessionId === this.state.record?.id) {
      this.state.revokedSelf = true;
      this.state.session = undefined;
    }
    return ended.length > 0;
  }

  /**
   * Revokes every live session of a user in this tenant, on every app node; pass
   * `{ exceptCurrent: true }` for "log out my other devices". Returns how many ended.
   */
  async revokeUser(
    userId: string,
    options: { reason?: string; exceptCurrent?: boolean } = {},
  ): Promise<number> {
    const exceptId = options.exceptCurrent ? (this.state.record?.id ?? undefined) : undefined;
    const ended = await this.store.revokeUser(
      this.state.runner,
      this.state.tenantId,
      userId,
      options.reason ?? 'revoked',
      exceptId,
    );
    this.hooks.ended(ended);
    if (this.state.record && ended.some((session) => session.id === this.state.record?.id)) {
      this.state.revokedSelf = true;
      this.state.session = undefined;
    }
    return ended.length;
  }

  /** How many sessions a user may keep (the maxSessionsPerUser option). */
  get maxSessionsPerUser(): number | undefined {
    return this.hooks.onMaxSessions;
  }
}
