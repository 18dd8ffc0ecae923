import type { Context } from 'koa';
import { SessionOptionsError } from '../errors.js';
import { defaultLogger } from '../logger.js';
import { mapKoaSessionOptions, resolveKoaOptions } from './koa-session.js';
import { rejectUnknownOptions } from './names.js';
import type {
  ConcurrencyMode,
  Durability,
  ResolvedCookieOptions,
  ResolvedCsrfOptions,
  ResolvedOptions,
  SessionOptions,
  TransactionMode,
} from './types.js';

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
    durability: durability(options.durability),
    batchWrites: options.batchWrites ?? true,
    cookie: Object.freeze({
      name: cookieName,
      path: cookie.path ?? '/',
      domain: cookie.domain,
      sameSite,
      secure: cookie.secure ?? 'auto',
      hostPrefix: cookie.hostPrefix ?? true,
      maxAge: cookieMaxAge,
      signed: cookie.signed ?? 'auto',
      overwrite: options.overwrite ?? true,
    }),
    bearer: options.bearer ?? false,
    csrf: csrf(options.csrf),
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
    fixed: Object.freeze({
      tenant: options.tenant === undefined ? 'default' : undefined,
      mode: typeof options.mode === 'function' ? undefined : (options.mode ?? 'merge'),
      transaction:
        typeof options.transaction === 'function' ? undefined : (options.transaction ?? 'none'),
    }),
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

function optionalFn<F extends (...args: never[]) => unknown>(
  name: string,
  value: F | undefined,
): F | undefined {
  if (value !== undefined && typeof value !== 'function') {
    throw new SessionOptionsError(name, 'must be a function');
  }
  return value;
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

const CSRF_METHODS = ['POST', 'PUT', 'PATCH', 'DELETE'];

function csrf(value: SessionOptions['csrf']): false | ResolvedCsrfOptions {
  if (value === undefined || value === false) return false;
  if (value !== true && (typeof value !== 'object' || value === null)) {
    throw new SessionOptionsError('csrf', 'must be true, false or an object of csrf options');
  }
  const given = value === true ? {} : value;
  const methods = given.methods ?? CSRF_METHODS;
  if (!Array.isArray(methods) || methods.some((method) => typeof method !== 'string')) {
    throw new SessionOptionsError('csrf.methods', 'must be an array of HTTP method names');
  }
  const header = given.header ?? 'x-csrf-token';
  if (typeof header !== 'string' || !/^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/.test(header)) {
    throw new SessionOptionsError('csrf.header', 'must be a header name');
  }
  const field = given.field ?? '_csrf';
  if (typeof field !== 'string' || field.length === 0) {
    throw new SessionOptionsError('csrf.field', 'must be a non-empty string');
  }
  return Object.freeze({
    methods: new Set(methods.map((method) => method.toUpperCase())),
    header,
    field,
    formLimit: duration('csrf.formLimit', given.formLimit, 56 * 1024),
    ignore: optionalFn('csrf.ignore', given.ignore),
  });
}

function durability(value: unknown): Durability {
  if (value === undefined) return 'durable';
  if (value === 'durable' || value === 'relaxed') return value;
  throw new SessionOptionsError('durability', "must be 'durable' or 'relaxed'");
}
