import { SessionOptionsError } from '../errors.js';
import type { CookieOptions, ResolvedKoaOptions, SessionOptions } from './types.js';

/**
 * koa-session's top-level names moved to where pg-sessions keeps them (`key` →
 * `cookie.name`, …). Giving both spellings of one setting is refused: which one wins
 * would be a guess.
 */
export function mapKoaSessionOptions(options: SessionOptions): SessionOptions {
  if (options.encode !== undefined || options.decode !== undefined) {
    throw new SessionOptionsError(
      options.encode !== undefined ? 'encode' : 'decode',
      'cannot apply: pg-sessions keeps the session in PostgreSQL, the cookie only carries a random token',
    );
  }
  if (options.httpOnly === false) {
    throw new SessionOptionsError(
      'httpOnly',
      'false is refused: the cookie carries the bearer secret, scripts must never read it',
    );
  }
  if (options.httpOnly !== undefined && options.httpOnly !== true) {
    throw new SessionOptionsError('httpOnly', 'must be true (the default)');
  }
  if (options.overwrite !== undefined && typeof options.overwrite !== 'boolean') {
    throw new SessionOptionsError('overwrite', 'must be a boolean');
  }
  const cookie: CookieOptions = { ...(options.cookie ?? {}) };
  const move = <K extends keyof CookieOptions>(
    from: 'key' | 'maxAge' | 'signed' | 'secure' | 'sameSite',
    to: K,
  ) => {
    const value = options[from];
    if (value === undefined) return;
    if (cookie[to] !== undefined) {
      throw new SessionOptionsError(from, `and cookie.${to} are the same setting: give one`);
    }
    cookie[to] = value as CookieOptions[K];
  };
  move('key', 'name');
  move('maxAge', 'maxAge');
  move('signed', 'signed');
  move('secure', 'secure');
  move('sameSite', 'sameSite');
  const mapped: SessionOptions = { ...options, cookie };
  // koa-session's maxAge is also how long the store keeps the session after a save.
  if (typeof options.maxAge === 'number' && options.idleTimeout === undefined) {
    mapped.idleTimeout = options.maxAge;
    if (options.absoluteTimeout === undefined && options.maxAge > 604_800_000) {
      mapped.absoluteTimeout = options.maxAge;
    }
  }
  return mapped;
}

export function resolveKoaOptions(options: SessionOptions): ResolvedKoaOptions {
  const flag = (name: 'rolling' | 'renew' | 'autoCommit', fallback: boolean) => {
    const value = options[name];
    if (value !== undefined && typeof value !== 'boolean') {
      throw new SessionOptionsError(name, 'must be a boolean');
    }
    return value ?? fallback;
  };
  const prefix = options.prefix ?? '';
  if (typeof prefix !== 'string' || !/^[\x21\x23-\x2B\x2D-\x3A\x3C-\x5B\x5D-\x7E]*$/.test(prefix)) {
    throw new SessionOptionsError('prefix', 'must be a string of cookie-value characters');
  }
  const externalKey = options.externalKey;
  if (
    externalKey !== undefined &&
    (externalKey === null ||
      typeof externalKey.get !== 'function' ||
      typeof externalKey.set !== 'function')
  ) {
    throw new SessionOptionsError(
      'externalKey',
      'must be an object with get(ctx) and set(ctx, value)',
    );
  }
  if (externalKey && options.bearer) {
    throw new SessionOptionsError(
      'externalKey',
      'and bearer are two ways to carry the key: give one',
    );
  }
  return Object.freeze({
    rolling: flag('rolling', false),
    renew: flag('renew', false),
    autoCommit: flag('autoCommit', true),
    valid: optionalFn('valid', options.valid),
    beforeSave: optionalFn('beforeSave', options.beforeSave),
    genid: optionalFn('genid', options.genid),
    prefix,
    externalKey,
  });
}

function optionalFn<F>(name: string, value: F | undefined): F | undefined {
  if (value !== undefined && typeof value !== 'function') {
    throw new SessionOptionsError(name, 'must be a function');
  }
  return value;
}
