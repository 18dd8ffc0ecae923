import { createHmac, timingSafeEqual } from 'node:crypto';
import type { Context } from 'koa';
import type { ResolvedCookieOptions } from './options/types.js';
import { isWellFormedToken } from './token.js';

/** Where the request's token came from, and whether it was usable. */
export interface PresentedToken {
  /** The token, only when it has the shape of one we issue. */
  readonly token?: string;
  /** The non-secret label `genid` put before the token, kept when the key is sent again. */
  readonly label?: string;
  readonly via: 'cookie' | 'bearer' | 'external' | 'none';
  /** Something was presented that is not a token (malformed, or a bad signature). */
  readonly invalid: boolean;
  /** The presented value when it is malformed (not a token, so not a secret). */
  readonly raw?: string;
}

/** koa-session's `prefix` and `externalKey`: how the key is shaped and carried. */
export interface KeyShape {
  readonly prefix: string;
  readonly externalKey:
    | { get(ctx: Context): string | undefined; set(ctx: Context, value: string): void }
    | undefined;
}

/**
 * The key handed to the client: `<prefix><label>.<token>`. Prefix and label are
 * non-secret decoration; the 256-bit token is always the whole secret.
 */
export function keyValue(shape: KeyShape, token: string, label: string | undefined): string {
  return `${shape.prefix}${label ? `${label}.` : ''}${token}`;
}

/** The token (and label) inside a presented key, or undefined when it is not one of ours. */
export function parseKey(
  shape: KeyShape,
  value: string,
): { token: string; label: string | undefined } | undefined {
  if (!value.startsWith(shape.prefix)) return undefined;
  const rest = value.slice(shape.prefix.length);
  const token = rest.slice(-43);
  if (!isWellFormedToken(token)) return undefined;
  if (rest.length === 43) return { token, label: undefined };
  if (rest.length < 45 || rest[rest.length - 44] !== '.') return undefined;
  return { token, label: rest.slice(0, -44) };
}

function presentedKey(
  shape: KeyShape,
  value: string,
  via: 'cookie' | 'bearer' | 'external',
): PresentedToken {
  const key = parseKey(shape, value);
  return key
    ? { token: key.token, label: key.label, via, invalid: false }
    : { via, invalid: true, raw: value };
}

function isSecure(ctx: Context, options: ResolvedCookieOptions): boolean {
  return options.secure === 'auto' ? ctx.secure : options.secure;
}

/** The cookie's name for this request: `__Host-` over HTTPS when the cookie qualifies. */
export function cookieName(ctx: Context, options: ResolvedCookieOptions): string {
  const hostOnly = options.hostPrefix && options.domain === undefined && options.path === '/';
  return hostOnly && isSecure(ctx, options) ? `__Host-${options.name}` : options.name;
}

function signed(ctx: Context, options: ResolvedCookieOptions): boolean {
  if (options.signed !== 'auto') return options.signed;
  const keys = ctx.app.keys;
  return Array.isArray(keys) ? keys.length > 0 : Boolean(keys);
}

/**
 * Reads the token from `Authorization: Bearer` (when enabled) or the cookie. A value
 * that is not one of our tokens is reported as invalid and never used.
 */
export function readToken(
  ctx: Context,
  options: ResolvedCookieOptions,
  bearer: boolean,
  shape: KeyShape = { prefix: '', externalKey: undefined },
): PresentedToken {
  if (shape.externalKey) {
    const value = shape.externalKey.get(ctx);
    return typeof value === 'string' && value.length > 0
      ? presentedKey(shape, value, 'external')
      : { via: 'none', invalid: false };
  }
  if (bearer) {
    const header = ctx.get('authorization');
    const match = /^Bearer\s+(\S+)\s*$/i.exec(header);
    if (match) {
      const token = match[1];
      return isWellFormedToken(token)
        ? { token, via: 'bearer', invalid: false }
        : { via: 'bearer', invalid: true };
    }
  }
  const name = cookieName(ctx, options);
  const isSigned = signed(ctx, options);
  const value = isSigned ? signedCookie(ctx, name) : ctx.cookies.get(name, { signed: false });
  if (value === undefined) {
    // A cookie present without a valid signature is tampered (or signed with a retired key).
    const tampered = isSigned && ctx.cookies.get(name, { signed: false }) !== undefined;
    return { via: 'none', invalid: tampered };
  }
  return presentedKey(shape, value, 'cookie');
}

/**
 * The value of a signed cookie. When its signature is `app.keys[0]`'s (nearly every
 * request) this costs one HMAC and a constant-time comparison, where `cookies`
 * (keygrip with tsscmp) spends three HMACs and fresh random bytes. Everything else
 * (a Keygrip instance as app.keys, a signature by an older key, a bad one) goes
 * through `cookies` itself, which re-signs with the current key or drops the signature.
 */
function signedCookie(ctx: Context, name: string): string | undefined {
  const keys: unknown = ctx.app.keys;
  const current = Array.isArray(keys) ? (keys[0] as unknown) : undefined;
  if (typeof current === 'string' || Buffer.isBuffer(current)) {
    const value = ctx.cookies.get(name, { signed: false });
    const signature = ctx.cookies.get(`${name}.sig`, { signed: false });
    if (value !== undefined && signature !== undefined) {
      const presented = Buffer.from(signature);
      const expected = Buffer.from(keygripSignature(`${name}=${value}`, current));
      if (presented.length === expected.length && timingSafeEqual(presented, expected)) {
        return value;
      }
    }
  }
  return ctx.cookies.get(name, { signed: true });
}

/** keygrip's default signature: HMAC-SHA1 in URL-safe base64 without padding. */
function keygripSignature(data: string, key: string | Buffer): string {
  return createHmac('sha1', key).update(data).digest('base64url');
}

type Lifetime = number | 'session' | 'expired';

/** The attributes every cookie of ours carries: HttpOnly, SameSite, Secure where it applies. */
function attributes(
  ctx: Context,
  options: ResolvedCookieOptions,
  lifetime: Lifetime,
  sign: boolean,
) {
  return {
    httpOnly: true,
    sameSite: options.sameSite,
    secure: isSecure(ctx, options),
    path: options.path,
    domain: options.domain,
    signed: sign,
    overwrite: options.overwrite,
    ...(lifetime === 'expired' ? { expires: new Date(0) } : {}),
    ...(typeof lifetime === 'number' ? { maxAge: lifetime } : {}),
  };
}

/** Sets the session cookie, signed with app.keys when there are any. */
export function writeCookie(
  ctx: Context,
  options: ResolvedCookieOptions,
  value: string,
  maxAge: number | 'session' | undefined,
): void {
  const lifetime = maxAge ?? options.maxAge;
  ctx.cookies.set(
    cookieName(ctx, options),
    value,
    attributes(ctx, options, lifetime, signed(ctx, options)),
  );
}

/** Expires the session cookie (with its signature) and the version fence cookie. */
export function clearCookie(ctx: Context, options: ResolvedCookieOptions): void {
  const name = cookieName(ctx, options);
  ctx.cookies.set(name, '', attributes(ctx, options, 'expired', signed(ctx, options)));
  if (ctx.cookies.get(`${name}.v`) !== undefined) {
    ctx.cookies.set(`${name}.v`, '', attributes(ctx, options, 'expired', false));
  }
}

/**
 * The read-your-writes fence: the version of the session row this client last wrote,
 * carried in a second cookie so that any app process (reading from a replica) can
 * tell a lagging copy from the current one. Not secret; a forged value only sends
 * this client's own reads to the primary.
 */
export function readVersionFence(ctx: Context, options: ResolvedCookieOptions): number {
  const value = ctx.cookies.get(`${cookieName(ctx, options)}.v`, { signed: false });
  const version = Number(value);
  return Number.isSafeInteger(version) && version > 0 ? version : 0;
}

export function writeVersionFence(
  ctx: Context,
  options: ResolvedCookieOptions,
  version: number,
  maxAge: number | 'session' | undefined,
): void {
  const lifetime = maxAge ?? options.maxAge;
  ctx.cookies.set(
    `${cookieName(ctx, options)}.v`,
    String(version),
    attributes(ctx, options, lifetime, false),
  );
}
