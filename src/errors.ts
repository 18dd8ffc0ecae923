import { isUnavailableError, SqlState, sqlStateOf } from './db/sqlstate.js';

/**
 * Every error pg-sessions throws is a {@link SessionError}: a stable `code` to branch
 * on, the HTTP `status` the middleware answers with, and `expose` (Koa's convention:
 * whether the message may be shown to the client). A database error is kept as `cause`.
 */
export class SessionError extends Error {
  override readonly name: string = 'SessionError';
  constructor(
    message: string,
    readonly code: string,
    readonly status: number,
    readonly expose: boolean,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

/** A `strict` save found that another request changed a key this request changed (409). */
export class SessionConflictError extends SessionError {
  override readonly name = 'SessionConflictError';
  constructor(readonly keys: readonly string[]) {
    super(
      `the session changed since this request loaded it (keys: ${keys.join(', ')}); retry the request`,
      'SESSION_CONFLICT',
      409,
      true,
    );
  }
}

/** The session's serialised data is larger than `maxSize` (413 by default). */
export class SessionTooLargeError extends SessionError {
  override readonly name = 'SessionTooLargeError';
  constructor(
    readonly size: number,
    readonly maxSize: number,
    status = 413,
  ) {
    super(
      `session data is ${size} bytes, more than the limit of ${maxSize} (option maxSize)`,
      'SESSION_TOO_LARGE',
      status,
      true,
    );
  }
}

/** A session value JSON cannot represent faithfully, or a reserved key (500, not exposed). */
export class SessionDataError extends SessionError {
  override readonly name = 'SessionDataError';
  constructor(
    message: string,
    readonly path: string,
  ) {
    super(`session value at ${path}: ${message}`, 'SESSION_DATA_INVALID', 500, false);
  }
}

/** The database is down, unreachable, restarting or too slow (503). Nothing was written. */
export class SessionStoreUnavailableError extends SessionError {
  override readonly name = 'SessionStoreUnavailableError';
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, 'SESSION_STORE_UNAVAILABLE', 503, true, options);
  }
}

/** `lock` mode waited longer than `lockTimeout` for another request on the same session (503). */
export class SessionLockTimeoutError extends SessionError {
  override readonly name = 'SessionLockTimeoutError';
  constructor(options?: { cause?: unknown }) {
    super(
      'another request holds this session (lock mode); retry the request',
      'SESSION_LOCK_TIMEOUT',
      503,
      true,
      options,
    );
  }
}

/** The database schema is missing, older or newer than this code expects (500, not exposed). */
export class SessionSchemaError extends SessionError {
  override readonly name = 'SessionSchemaError';
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, 'SESSION_SCHEMA_MISMATCH', 500, false, options);
  }
}

/**
 * An option is missing or wrong: thrown by `sessions()` and `new ReplicaRouter()` at
 * construction, and for `app.keys` when the middleware starts, never later.
 */
export class SessionOptionsError extends SessionError {
  override readonly name = 'SessionOptionsError';
  /** The option at fault, as the caller wrote it: `cookie.name`, `hosts[0]`, `app.keys[0]`. */
  constructor(
    readonly option: string,
    problem: string,
  ) {
    super(`pg-sessions option ${option}: ${problem}`, 'SESSION_OPTIONS_INVALID', 500, false);
  }
}

/**
 * The route asks for a recent sign-in (`ctx.sessions.requireFresh()`, `requireFresh()`)
 * and the session's user last proved who they are longer ago than `maxAge`, by the
 * database's clock, or no user is signed in (401). Ask for the password (or a second
 * factor) again, call `ctx.sessions.reauthenticated()`, and retry. Nothing is lost: the
 * session and its data stay as they were.
 */
export class SessionReauthenticationRequiredError extends SessionError {
  override readonly name = 'SessionReauthenticationRequiredError';
  constructor(readonly maxAge: number) {
    super(
      `this action needs a sign-in within the last ${maxAge} ms: sign in again`,
      'SESSION_REAUTHENTICATION_REQUIRED',
      401,
      true,
    );
  }
}

/**
 * A state-changing request (POST, PUT, PATCH, DELETE by default) without a CSRF token
 * of its session, with `csrf` on: 403, before the handler ran, nothing written.
 * `reason`: `missing` (no header, no form field), `malformed`, `no-session` (no
 * session came with the request, or one that is gone; a revoked or expired one still
 * accepts its own forms' tokens), `mismatch` (forged, or another session's), `rotated`
 * (minted before a rotation whose grace has passed: render the form again).
 */
export class SessionCsrfError extends SessionError {
  override readonly name = 'SessionCsrfError';
  constructor(readonly reason: 'missing' | 'malformed' | 'no-session' | 'mismatch' | 'rotated') {
    super(
      `this request needs a CSRF token of its session (${reason}): reload the page and try again`,
      'SESSION_CSRF_INVALID',
      403,
      true,
    );
  }
}

/** A session API was used in a state where it cannot work (no session yet, destroyed). */
export class SessionStateError extends SessionError {
  override readonly name = 'SessionStateError';
  constructor(message: string) {
    super(message, 'SESSION_STATE', 500, false);
  }
}

/**
 * A database error as the typed session error it means (lock timeout, store
 * unavailable); ours and the application's own errors pass through unchanged.
 */
export function toSessionError(error: unknown): unknown {
  if (error instanceof SessionError) return error;
  if (sqlStateOf(error) === SqlState.lockNotAvailable) {
    return new SessionLockTimeoutError({ cause: error });
  }
  if (isUnavailableError(error)) {
    return new SessionStoreUnavailableError('the session database is unavailable; retry shortly', {
      cause: error,
    });
  }
  return error;
}
