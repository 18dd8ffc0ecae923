import {
  SessionDataError,
  SessionReauthenticationRequiredError,
  SessionStateError,
} from '../errors.js';
import { isStorableText } from '../serialize.js';
import { MAX_DEVICE_NAME, renameDevice } from '../store/devices.js';
import type { DeviceSession, SessionEnd } from '../store/records.js';
import { authenticatedWithin, reauthenticate } from '../store/step-up.js';
import { mintCsrfToken } from './csrf.js';
import { guard } from './guard.js';
import type { RequestSession } from './request-session.js';

/** A uuid, the only shape of a public session id: anything else names no session. */
const SESSION_ID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

/**
 * `ctx.sessions`: what koa-session cannot do. Changes to the current session
 * (regenerate, bindUser, destroy) are applied by the request's single write at the
 * end; operations on other sessions (revoke, revokeUser, listForUser) run at once, on
 * the request's store (in its transaction when there is one).
 */
export class SessionControl {
  readonly #request: RequestSession;

  constructor(request: RequestSession) {
    this.#request = request;
  }

  /** A database operation's errors as typed session errors (down: 503, counted). */
  #guarded<T>(work: Promise<T>): Promise<T> {
    return guard(this.#request.services.metrics, work);
  }

  /** The public, non-secret id of the current session (null until it is first saved). */
  get id(): string | null {
    return this.#request.id;
  }

  /** The row version this request loaded or last wrote (null for a new session). */
  get version(): number | null {
    const request = this.#request;
    return request.destroyed ? null : (request.record?.version ?? null);
  }

  /** The user bound to the session, if any. */
  get userId(): string | null {
    return this.#request.userId;
  }

  /**
   * The secret token this response hands out (cookie or bearer), for API clients
   * that keep it themselves. Undefined for a request without a session.
   */
  get token(): string | undefined {
    return this.#request.token;
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
    return this.#request.ended;
  }

  /** The WAL position of this request's last write (read-your-writes fence). */
  get fence(): string | undefined {
    return this.#request.fence;
  }

  /** How many sessions a user may keep (the maxSessionsPerUser option). */
  get maxSessionsPerUser(): number | undefined {
    return this.#request.services.options.maxSessionsPerUser;
  }

  /**
   * Issues a new token for the same session (same id and data); the old token stops
   * working when the response is committed. Call it on login and privilege changes.
   */
  regenerate(): void {
    this.#request.regenerate();
  }

  /** Ends the session: the row is deleted and the cookie cleared (same as ctx.session = null). */
  destroy(): void {
    this.#request.destroy();
  }

  /**
   * Binds the session to a user (the app authenticated them). Regenerates the token
   * too unless `{ regenerate: false }`, which defeats session fixation at login.
   */
  bindUser(userId: string | null, options: { regenerate?: boolean } = {}): void {
    this.#request.bindUser(userId, options.regenerate ?? true);
  }

  /**
   * The user proved who they are again (their password, a second factor): the session's
   * `authenticated_at` becomes now, by the database's clock, and a `reauthenticated`
   * event is logged. Written at once, not at the end of the request. A rotation keeps
   * the time; `bindUser()` sets it too. False when no user is signed in.
   */
  async reauthenticated(): Promise<boolean> {
    const request = this.#request;
    const id = request.record?.id;
    if (id === undefined || request.destroyed || request.userId === null) return false;
    return this.#guarded(reauthenticate(request.store.runner, id, request.actor()));
  }

  /**
   * Throws {@link SessionReauthenticationRequiredError} (401) unless the signed-in user
   * proved who they are within `maxAge` ms, by the database's clock: put it before an
   * action that needs a recent sign-in ("sudo mode"), or use the `requireFresh()`
   * middleware for a whole route.
   */
  async requireFresh(maxAge: number): Promise<void> {
    if (!Number.isFinite(maxAge) || maxAge < 0) {
      throw new SessionDataError('requireFresh() needs a maxAge in ms, 0 or more', 'maxAge');
    }
    const request = this.#request;
    const id = request.record?.id;
    const fresh =
      id !== undefined &&
      !request.destroyed &&
      request.userId !== null &&
      (await this.#guarded(authenticatedWithin(request.store.runner, id, maxAge)));
    if (!fresh) throw new SessionReauthenticationRequiredError(maxAge);
  }

  /**
   * A CSRF token of this session, for a form's hidden `_csrf` field or the
   * `x-csrf-token` header (the `csrf` option checks them): a new one each call, all
   * valid (masked against BREACH). It belongs to the session's current token: call it
   * after `bindUser()` or `regenerate()`, not before; a session not saved yet, or a
   * rotation asked for, is written first. Tokens minted before a rotation stay valid
   * for `rotationGrace`, never for another session. Signed with `app.keys`.
   */
  async csrfToken(): Promise<string> {
    const request = this.#request;
    if (request.destroyed && !request.session) {
      throw new SessionStateError('a destroyed session has no CSRF token');
    }
    if (!request.record || request.rotate || request.destroyed) {
      await request.commit({ save: true });
    }
    const record = request.record;
    if (!record) throw new SessionStateError('the session could not be saved for its CSRF token');
    return mintCsrfToken(
      request.ctx.app.keys,
      request.tenantId,
      record.id,
      record.tokenIssuedAt.getTime(),
    );
  }

  /** The live sessions of a user (default: the current user), for a "your devices" page. */
  async listForUser(
    userId: string | null = this.#request.userId,
  ): Promise<(DeviceSession & { current: boolean })[]> {
    if (userId === null) return [];
    const request = this.#request;
    const devices = await this.#guarded(request.store.listForUser(userId, request.fence));
    return devices.map((device) => ({ ...device, current: device.id === request.id }));
  }

  /**
   * Names one of the signed-in user's own sessions ("Work laptop"), or clears its name
   * with null; `listForUser()` returns it. A name is 1 to 100 characters of text the
   * session data rules accept (no NUL, no unpaired surrogate), trimmed; anything else is
   * a `SessionDataError`. False when the id names no live session of this user.
   */
  async rename(sessionId: string, name: string | null): Promise<boolean> {
    const trimmed = name === null ? null : checkDeviceName(name);
    const request = this.#request;
    const userId = request.userId;
    if (userId === null || !SESSION_ID.test(sessionId)) return false;
    return this.#guarded(
      renameDevice(
        request.store.runner,
        request.tenantId,
        sessionId,
        userId,
        trimmed,
        request.actor(),
      ),
    );
  }

  /** Revokes one session of this tenant by public id, on every app node; true when it was live. */
  async revoke(sessionId: string, reason = 'revoked'): Promise<boolean> {
    checkReason(reason);
    if (!SESSION_ID.test(sessionId)) return false;
    const request = this.#request;
    const ended = await this.#guarded(request.store.revoke(sessionId, reason, request.actor()));
    request.services.cache?.forgetEnded(request.tenantId, ended);
    if (ended.length > 0 && sessionId === request.record?.id) request.endedBySelf();
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
    const reason = options.reason ?? 'revoked';
    checkReason(reason);
    // No stored user id holds such text: nothing to end, and nothing to send.
    if (!isStorableText(userId)) return 0;
    const request = this.#request;
    const current = request.record?.id;
    const ended = await this.#guarded(
      request.store.revokeUser(
        userId,
        reason,
        request.actor(),
        options.exceptCurrent ? current : undefined,
      ),
    );
    request.services.cache?.forgetEnded(request.tenantId, ended);
    if (current && ended.some((session) => session.id === current)) request.endedBySelf();
    return ended.length;
  }
}

/** A device name as stored: trimmed, 1 to MAX_DEVICE_NAME characters of storable text. */
function checkDeviceName(name: unknown): string {
  if (typeof name !== 'string' || !isStorableText(name)) {
    throw new SessionDataError('a device name that is not storable text', 'name');
  }
  const trimmed = name.trim();
  const length = [...trimmed].length;
  if (length === 0 || length > MAX_DEVICE_NAME) {
    throw new SessionDataError(
      `a device name of ${length} characters (1 to ${MAX_DEVICE_NAME})`,
      'name',
    );
  }
  return trimmed;
}

/** A revocation is never silently skipped: a reason PostgreSQL cannot store is an error. */
function checkReason(reason: string): void {
  if (!isStorableText(reason)) {
    throw new SessionDataError('a revocation reason with NUL or an unpaired surrogate', 'reason');
  }
}
