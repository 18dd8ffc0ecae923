import type { Context } from 'koa';
import type pg from 'pg';
import type { SessionDatabase } from './db/router.js';
import { SessionOptionsError } from './errors.js';
import {
  mapKoaSessionOptions,
  type ResolvedKoaOptions,
  resolveKoaOptions,
} from './koa-session-options.js';
import { defaultLogger, type Logger } from './logger.js';
import { rejectUnknownOptions } from './option-names.js';

/** How concurrent requests on one session combine their writes. */
export type ConcurrencyMode = 'merge' | 'strict' | 'lock';

/** `request`: one transaction on the primary around the handler (exposed as `ctx.db`). */
export type TransactionMode = 'none' | 'request';

export interface CacheOptions {
  /** Most sessions kept in memory per process. @default 10_000 */
  maxEntries?: number;
  /** Most memory for them, estimated from each row's JSON. @default 67_108_864 (64 MiB) */
  maxBytes?: number;
  /** How often the LISTEN connection proves it is alive, ms. @default 10_000 */
  heartbeatInterval?: number;
  /** First delay before the listener reconnects, ms; doubles per failure, with jitter. @default 100 */
  reconnectMinDelay?: number;
  /** Longest delay between reconnection attempts, ms. @default 5_000 */
  reconnectMaxDelay?: number;
  /**
   * Where the LISTEN connection goes, when the queries go through a transaction-pooling
   * PgBouncer (which NOTIFY cannot pass): the primary's own address. @default the database's primary
   */
  listenUrl?: string;
}

export interface GcOptions {
  /** Mean time between runs in this process, ms (±20 % jitter). @default 300_000 */
  interval?: number;
  /** Rows deleted per transaction. @default 500 */
  batchSize?: number;
  /**
   * Batches per run at most. Unlimited by default: a run drains the whole backlog, one
   * short transaction per batch, so no backlog waits for the next interval. @default Infinity
   */
  maxBatches?: number;
}

export interface CookieOptions {
  /** Cookie name. Over HTTPS with `hostPrefix`, `__Host-` is prepended. @default 'sid' */
  name?: string;
  /** @default '/' */
  path?: string;
  /** Leave unset for a host-only cookie (required by the `__Host-` prefix). @default undefined */
  domain?: string;
  /** Cross-site policy; 'lax' keeps top-level navigation working. @default 'lax' */
  sameSite?: 'lax' | 'strict' | 'none';
  /** 'auto' follows `ctx.secure` (honours `app.proxy`). @default 'auto' */
  secure?: boolean | 'auto';
  /** Prefix the name with `__Host-` when secure, host-only and path '/'. @default true */
  hostPrefix?: boolean;
  /**
   * Cookie lifetime in ms, or 'session' for a cookie that ends with the browser.
   * The server enforces expiry anyway. @default absoluteTimeout
   */
  maxAge?: number | 'session';
  /** Sign with `app.keys` (keygrip, key rotation). 'auto': when app.keys is set. @default 'auto' */
  signed?: boolean | 'auto';
}

/**
 * Options of {@link sessions}. Resolved once, validated and frozen at construction:
 * a mistake fails there with the option's name, never on the first request.
 */
export interface SessionOptions {
  /**
   * The database: a connection URL, a `pg.PoolConfig`, a `pg.Pool` you own (never
   * closed by us), or a {@link SessionDatabase} router (replicas). @default process.env.DATABASE_URL
   */
  database?: string | pg.PoolConfig | pg.Pool | SessionDatabase;
  /** The tenant of a request; row-level security confines every query to it. @default () => 'default' */
  tenant?: (ctx: Context) => string;
  /** Sliding inactivity timeout in ms, enforced by the database's clock. @default 86_400_000 (24 h) */
  idleTimeout?: number;
  /** Lifetime in ms from creation, whatever the activity. @default 604_800_000 (7 days) */
  absoluteTimeout?: number;
  /** An unchanged session is rewritten (touched) at most once per interval. @default 60_000 */
  touchInterval?: number;
  /**
   * Periodic rotation (OWASP): a session's token older than this many ms is replaced by
   * the next request that presents it in a cookie (or an `externalKey`), transparently:
   * the response carries the new key. Shortens how long a copied token stays useful, at
   * the cost of one write per interval per session. Bearer clients are never rotated
   * behind their back (they could not learn the new token). `false`: only `regenerate()`
   * and `bindUser()` rotate. @default false
   */
  rotateInterval?: number | false;
  /**
   * How long, in ms, a token replaced by a rotation still reaches its session, so that
   * requests already in flight with it finish (they are served, but hand out no token).
   * Presented after that, it is taken for a copy: the session is revoked on every node
   * (event `token_reused`, `session:stolen`). Longer tolerates slower clients; shorter
   * narrows the window in which a copied token still works. @default 60_000
   */
  rotationGrace?: number;
  /** 'merge' (key-level last writer wins), 'strict' (409 on a lost update) or 'lock'. @default 'merge' */
  mode?: ConcurrencyMode | ((ctx: Context) => ConcurrencyMode);
  /** 'request' wraps each request in one transaction, `ctx.db`. @default 'none' */
  transaction?: TransactionMode | ((ctx: Context) => TransactionMode);
  /** Lock mode: how long to wait for another request's lock, in ms. @default 10_000 */
  lockTimeout?: number;
  /** Maximum serialised size of the session data in bytes. @default 65_536 */
  maxSize?: number;
  /** Revoke a user's oldest sessions beyond this many when one is bound. @default undefined (no limit) */
  maxSessionsPerUser?: number;
  /** Create a row and a cookie even for a session nobody wrote to. @default false */
  saveUninitialized?: boolean;
  cookie?: CookieOptions;
  /** Also accept `Authorization: Bearer <token>` (API and mobile clients). @default false */
  bearer?: boolean;
  /** Who the event log names as actor. @default user id when bound, else 'anonymous' */
  actor?: (ctx: Context, userId: string | null) => string;
  /** Server-side limit per statement in ms (statement_timeout). @default 5_000 */
  statementTimeout?: number;
  /** Wait at most this long for a connection, in ms, before answering 503. @default 5_000 */
  connectTimeout?: number;
  /** Pool size when pg-sessions creates the pool. @default 10 */
  poolSize?: number;
  /** Check at start that the schema's migrations match this version of the code. @default true */
  checkSchema?: boolean;
  /**
   * The per-process cache, kept true by LISTEN/NOTIFY; `false` reads every session
   * from the database. @default enabled with the defaults of {@link CacheOptions}
   */
  cache?: false | CacheOptions;
  /** Touches of unchanged sessions are written together once per interval, ms. @default min(2_000, idleTimeout / 4) */
  touchFlushInterval?: number;
  /** Background garbage collection (one process at a time); `false` leaves it to `pg-sessions gc`. @default enabled */
  gc?: false | GcOptions;
  /** A pino-compatible logger. @default util.debuglog('pg-sessions') (NODE_DEBUG=pg-sessions) */
  logger?: Logger;

  // --- koa-session's option names, with koa-session's meaning ----------------------
  /** koa-session: the cookie's name (`cookie.name`). */
  key?: string;
  /**
   * koa-session: the cookie's lifetime in ms, or 'session'; a number is also the stored
   * session's idle expiry unless `idleTimeout` is given (`cookie.maxAge` + `idleTimeout`).
   */
  maxAge?: number | 'session';
  /** koa-session: `false` is refused (the token would be readable by scripts). @default true */
  httpOnly?: boolean;
  /** koa-session: `cookie.signed`. */
  signed?: boolean;
  /** koa-session: `cookie.secure`. */
  secure?: boolean;
  /** koa-session: `cookie.sameSite`. */
  sameSite?: 'lax' | 'strict' | 'none';
  /** koa-session: accepted; pg-sessions always overwrites its own cookie. */
  overwrite?: boolean;
  /** Re-send the cookie (fresh expiry) on every request that reads the session. @default false */
  rolling?: boolean;
  /** Re-send the cookie and save when the session is in the last half of its cookie lifetime. @default false */
  renew?: boolean;
  /** `false`: nothing is written unless the handler calls `ctx.session.manuallyCommit()`. @default true */
  autoCommit?: boolean;
  /** Called on a loaded session; false discards it (a new session starts), `session:invalid`. */
  valid?: (ctx: Context, session: Record<string, unknown>) => boolean;
  /** Called just before a session is written; may change it. */
  beforeSave?: (ctx: Context, session: Record<string, unknown>) => void;
  /**
   * A non-secret label placed before the random token in the cookie value
   * (`<prefix><label>.<token>`); it never replaces nor shortens the 256-bit token.
   */
  genid?: (ctx: Context) => string;
  /** A non-secret prefix of the cookie value (`sess:<token>`), stripped before the token check. */
  prefix?: string;
  /** Carry the session key in something else than the cookie (a header): read with `get`, written with `set`. */
  externalKey?: { get(ctx: Context): string | undefined; set(ctx: Context, value: string): void };
  /** koa-session's cookie-store codec: refused, pg-sessions never stores data in the cookie. */
  encode?: never;
  /** koa-session's cookie-store codec: refused, pg-sessions never stores data in the cookie. */
  decode?: never;
}

export interface ResolvedCookieOptions {
  readonly name: string;
  readonly path: string;
  readonly domain: string | undefined;
  readonly sameSite: 'lax' | 'strict' | 'none';
  readonly secure: boolean | 'auto';
  readonly hostPrefix: boolean;
  readonly maxAge: number | 'session';
  readonly signed: boolean | 'auto';
}

export interface ResolvedOptions {
  readonly database: NonNullable<SessionOptions['database']>;
  readonly tenant: (ctx: Context) => string;
  readonly idleTimeout: number;
  readonly absoluteTimeout: number;
  readonly touchInterval: number;
  readonly rotateInterval: number | false;
  readonly rotationGrace: number;
  readonly mode: (ctx: Context) => ConcurrencyMode;
  readonly transaction: (ctx: Context) => TransactionMode;
  readonly lockTimeout: number;
  readonly maxSize: number;
  readonly maxSessionsPerUser: number | undefined;
  readonly saveUninitialized: boolean;
  readonly cookie: ResolvedCookieOptions;
  readonly bearer: boolean;
  readonly actor: (ctx: Context, userId: string | null) => string;
  readonly statementTimeout: number;
  readonly connectTimeout: number;
  readonly poolSize: number;
  readonly checkSchema: boolean;
  readonly cache:
    | false
    | Readonly<Required<Omit<CacheOptions, 'listenUrl'>> & { listenUrl: string | undefined }>;
  readonly touchFlushInterval: number;
  readonly gc: false | Readonly<Required<GcOptions>>;
  readonly logger: Logger;
  /** koa-session's switches and hooks. */
  readonly koa: ResolvedKoaOptions;
}

const MODES: readonly ConcurrencyMode[] = ['merge', 'strict', 'lock'];
const TRANSACTION_MODES: readonly TransactionMode[] = ['none', 'request'];

/** Applies the defaults and validates; the caller's object is never modified. */
export function resolveOptions(given: SessionOptions = {}): ResolvedOptions {
  rejectUnknownOptions(given);
  const koa = resolveKoaOptions(given);
  const options = mapKoaSessionOptions(given);
  const database = options.database ?? process.env.DATABASE_URL;
  if (!database) {
    throw new SessionOptionsError('database', 'missing: pass a URL, a pg.Pool or set DATABASE_URL');
  }
  const idleTimeout = duration('idleTimeout', options.idleTimeout, 86_400_000);
  const absoluteTimeout = duration('absoluteTimeout', options.absoluteTimeout, 604_800_000);
  const cookie = options.cookie ?? {};
  const cookieName = cookie.name ?? 'sid';
  if (!/^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/.test(cookieName)) {
    throw new SessionOptionsError('cookie.name', `"${cookieName}" is not a valid cookie name`);
  }
  const sameSite = cookie.sameSite ?? 'lax';
  if (!['lax', 'strict', 'none'].includes(sameSite)) {
    throw new SessionOptionsError('cookie.sameSite', "must be 'lax', 'strict' or 'none'");
  }
  if (sameSite === 'none' && cookie.secure === false) {
    throw new SessionOptionsError(
      'cookie.sameSite',
      "'none' needs a secure cookie (browsers refuse it)",
    );
  }
  const cookieMaxAge = cookie.maxAge ?? absoluteTimeout;
  if (cookieMaxAge !== 'session') duration('cookie.maxAge', cookieMaxAge, absoluteTimeout);
  const maxSessionsPerUser = options.maxSessionsPerUser;
  if (
    maxSessionsPerUser !== undefined &&
    !(Number.isInteger(maxSessionsPerUser) && maxSessionsPerUser >= 1)
  ) {
    throw new SessionOptionsError('maxSessionsPerUser', 'must be a whole number of at least 1');
  }
  return Object.freeze({
    database,
    tenant: fn('tenant', options.tenant, () => 'default'),
    idleTimeout,
    absoluteTimeout,
    touchInterval: duration('touchInterval', options.touchInterval, 60_000, true),
    rotateInterval:
      options.rotateInterval === false || options.rotateInterval === undefined
        ? false
        : duration('rotateInterval', options.rotateInterval, 0),
    rotationGrace: rotationGrace(options.rotationGrace, idleTimeout),
    mode: choice('mode', options.mode, MODES, 'merge'),
    transaction: choice('transaction', options.transaction, TRANSACTION_MODES, 'none'),
    lockTimeout: duration('lockTimeout', options.lockTimeout, 10_000),
    maxSize: duration('maxSize', options.maxSize, 65_536),
    maxSessionsPerUser,
    saveUninitialized: options.saveUninitialized ?? false,
    cookie: Object.freeze({
      name: cookieName,
      path: cookie.path ?? '/',
      domain: cookie.domain,
      sameSite,
      secure: cookie.secure ?? 'auto',
      hostPrefix: cookie.hostPrefix ?? true,
      maxAge: cookieMaxAge,
      signed: cookie.signed ?? 'auto',
    }),
    bearer: options.bearer ?? false,
    actor: fn('actor', options.actor, (_ctx: Context, userId: string | null) =>
      userId === null ? 'anonymous' : `user:${userId}`,
    ),
    statementTimeout: duration('statementTimeout', options.statementTimeout, 5_000),
    connectTimeout: duration('connectTimeout', options.connectTimeout, 5_000),
    poolSize: duration('poolSize', options.poolSize, 10),
    checkSchema: options.checkSchema ?? true,
    cache:
      options.cache === false
        ? false
        : Object.freeze({
            maxEntries: duration('cache.maxEntries', options.cache?.maxEntries, 10_000),
            maxBytes: duration('cache.maxBytes', options.cache?.maxBytes, 64 * 1024 * 1024),
            heartbeatInterval: duration(
              'cache.heartbeatInterval',
              options.cache?.heartbeatInterval,
              10_000,
            ),
            reconnectMinDelay: duration(
              'cache.reconnectMinDelay',
              options.cache?.reconnectMinDelay,
              100,
            ),
            reconnectMaxDelay: duration(
              'cache.reconnectMaxDelay',
              options.cache?.reconnectMaxDelay,
              5_000,
            ),
            listenUrl: postgresUrl('cache.listenUrl', options.cache?.listenUrl),
          }),
    // Batched touches must land well before an idle session would expire.
    touchFlushInterval: duration(
      'touchFlushInterval',
      options.touchFlushInterval,
      Math.max(10, Math.min(2_000, idleTimeout / 4)),
    ),
    gc:
      options.gc === false
        ? false
        : Object.freeze({
            interval: duration('gc.interval', options.gc?.interval, 300_000),
            batchSize: duration('gc.batchSize', options.gc?.batchSize, 500),
            maxBatches:
              options.gc?.maxBatches === undefined
                ? Number.POSITIVE_INFINITY
                : duration('gc.maxBatches', options.gc.maxBatches, 0),
          }),
    logger: options.logger ?? defaultLogger(),
    koa,
  });
}

/** A positive (or, with `allowZero`, non-negative) finite number, else the option's error. */
export function duration(
  name: string,
  value: number | undefined,
  fallback: number,
  allowZero = false,
): number {
  const resolved = value ?? fallback;
  if (!Number.isFinite(resolved) || resolved < 0 || (!allowZero && resolved === 0)) {
    throw new SessionOptionsError(name, `must be a positive number, got ${String(value)}`);
  }
  return resolved;
}

/**
 * A rotated-away token's grace: 0 (no grace: any reuse revokes) up to an hour, and
 * never longer than the idle timeout (it would outlive the session it protects).
 */
function rotationGrace(value: number | undefined, idleTimeout: number): number {
  const grace = duration('rotationGrace', value, Math.min(60_000, idleTimeout), true);
  if (grace > 3_600_000 || grace > idleTimeout) {
    throw new SessionOptionsError(
      'rotationGrace',
      `must be at most an hour and at most idleTimeout (${idleTimeout} ms), got ${grace}`,
    );
  }
  return grace;
}

/** A postgres:// or postgresql:// URL, else the option's error. */
export function postgresUrl(name: string, value: string | undefined): string | undefined {
  if (value === undefined) return undefined;
  let protocol: string | undefined;
  try {
    protocol = new URL(value).protocol;
  } catch {}
  if (protocol !== 'postgres:' && protocol !== 'postgresql:') {
    throw new SessionOptionsError(name, 'must be a postgres:// URL');
  }
  return value;
}

function fn<F extends (...args: never[]) => unknown>(
  name: string,
  value: F | undefined,
  fallback: F,
): F {
  if (value !== undefined && typeof value !== 'function') {
    throw new SessionOptionsError(name, 'must be a function');
  }
  return value ?? fallback;
}

function choice<T extends string>(
  name: string,
  value: T | ((ctx: Context) => T) | undefined,
  allowed: readonly T[],
  fallback: T,
): (ctx: Context) => T {
  if (typeof value === 'function') {
    return (ctx) => {
      const chosen = value(ctx);
      if (!allowed.includes(chosen)) {
        throw new SessionOptionsError(
          name,
          `the function returned "${chosen}", not one of ${allowed.join(', ')}`,
        );
      }
      return chosen;
    };
  }
  const fixed = value ?? fallback;
  if (!allowed.includes(fixed)) {
    throw new SessionOptionsError(name, `"${fixed}" is not one of ${allowed.join(', ')}`);
  }
  return () => fixed;
}

/**
 * The keys Koa signs cookies with (`app.keys`), checked when the middleware starts: a key
 * that is undefined or empty (an unset environment variable, typically) would otherwise
 * fail every response that sets a signed cookie, deep inside keygrip.
 */
export function checkAppKeys(keys: unknown, cookie: ResolvedCookieOptions): void {
  if (cookie.signed === false) return;
  const fix =
    'set app.keys to one or more long random secrets before the first request (app.keys = [process.env.SESSION_SECRET] needs SESSION_SECRET set)';
  if (Array.isArray(keys)) {
    keys.forEach((key: unknown, index) => {
      const usable = (typeof key === 'string' || Buffer.isBuffer(key)) && key.length > 0;
      if (!usable) {
        const what = key === undefined ? 'undefined' : `an empty or unusable key (${typeof key})`;
        throw new SessionOptionsError(`app.keys[${index}]`, `is ${what}: ${fix}`);
      }
    });
    if (keys.length > 0 || cookie.signed !== true) return;
  } else if (keys !== undefined && keys !== null) {
    if (typeof (keys as { sign?: unknown }).sign === 'function') return; // a Keygrip
    throw new SessionOptionsError('app.keys', `is not an array of secrets: ${fix}`);
  } else if (cookie.signed !== true) {
    return;
  }
  throw new SessionOptionsError(
    'app.keys',
    `is empty but cookie.signed is true: ${fix}, or leave cookie.signed at 'auto'`,
  );
}
