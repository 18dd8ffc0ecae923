import type { Context } from 'koa';
import type { ResolvedCookieOptions } from './options.js';
import { isWellFormedToken } from './token.js';

/** Where the request's token came from, and whether it was usable. */
export interface PresentedToken {
  /** The token, only when it has the shape of one we issue. */
  readonly token?: string;
  readonly via: 'cookie' | 'bearer' | 'none';
  /** Something was presented that is not a token (malformed, or a bad signature). */
  readonly invalid: boolean;
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
): PresentedToken {
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
  const value = ctx.cookies.get(name, { signed: isSigned });
  if (value === undefined) {
    // A cookie present without a valid signature is tampered (or signed with a retired key).
    const tampered = isSigned && ctx.cookies.get(name, { signed: false }) !== undefined;
    return { via: 'none', invalid: tampered };
  }
  return isWellFormedToken(value)
    ? { token: value, via: 'cookie', invalid: false }
    : { via: 'cookie', invalid: true };
}

/** Sets the session cookie: HttpOnly, SameSite, Secure where it applies, signed with app.keys. */
export function writeCookie(
  ctx: Context,
  options: ResolvedCookieOptions,
  token: string,
  maxAge: number | 'session' | undefined,
): void {
  const lifetime = maxAge ?? options.maxAge;
  ctx.cookies.set(cookieName(ctx, options), token, {
    httpOnly: true,
    sameSite: options.sameSite,
    secure: isSecure(ctx, options),
    path: options.path,
    domain: options.domain,
    signed: signed(ctx, options),
    overwrite: true,
    ...(lifetime === 'session' ? {} : { maxAge: lifetime }),
  });
}

/** Expires the session cookie (and its signature). */
export function clearCookie(ctx: Context, options: ResolvedCookieOptions): void {
  ctx.cookies.set(cookieName(ctx, options), '', {
    httpOnly: true,
    sameSite: options.sameSite,
    secure: isSecure(ctx, options),
    path: options.path,
    domain: options.domain,
    signed: signed(ctx, options),
    overwrite: true,
    expires: new Date(0),
  });
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
  ctx.cookies.set(`${cookieName(ctx, options)}.v`, String(version), {
    httpOnly: true,
    sameSite: options.sameSite,
    secure: isSecure(ctx, options),
    path: options.path,
    domain: options.domain,
    signed: false,
    overwrite: true,
    ...(lifetime === 'session' ? {} : { maxAge: lifetime }),
  });
}
