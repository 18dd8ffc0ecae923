import { createHmac, timingSafeEqual } from 'node:crypto';
import type { Context } from 'koa';
import type { ResolvedCookieOptions, ResolvedOptions } from '../options/types.js';
import { isWellFormedToken, trailingTokenLength } from '../token.js';

/** The session cookie as this request sees it: decided once, used by every write. */
interface CookieFacts {
  /** `__Host-` + name over HTTPS when the cookie qualifies, else the name. */
  readonly name: string;
  readonly secure: boolean;
  readonly signed: boolean;
}

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
  /** The session cookie's name and flags for this request. */
  readonly cookie: CookieFacts;
}

type Lifetime = number | 'session' | 'expired';

/**
 * How the session key travels between client and server: a signed cookie (the
 * default), `Authorization: Bearer` (the client keeps the token; nothing is sent back)
 * or koa-session's `externalKey` (`get`/`set` of the app's choosing). The key is
 * `<prefix><label>.<token>`: prefix and label are non-secret decoration; the 256-bit
 * token is always the whole secret. Made once per middleware; every method takes the
 * request's values.
 */
export class KeyTransport {
  readonly #options: ResolvedOptions;
  readonly #cookie: ResolvedCookieOptions;
  /** Writes carry the session's version in a second cookie for read-your-writes. */
  readonly #fenced: boolean;

  constructor(options: ResolvedOptions, fenced: boolean) {
    this.#options = options;
    this.#cookie = options.cookie;
    this.#fenced = fenced;
  }

  /**
   * The key the request presents: an external key, `Authorization: Bearer` (when
   * enabled) or the cookie. A value that is not one of our tokens is reported as
   * invalid and never used.
   */
  read(ctx: Context): PresentedToken {
    const cookie = this.#facts(ctx);
    const { koa, bearer } = this.#options;
    if (koa.externalKey) {
      const value = koa.externalKey.get(ctx);
      return typeof value === 'string' && value.length > 0
        ? this.#presented(value, 'external', cookie)
        : { via: 'none', invalid: false, cookie };
    }
    if (bearer) {
      const match = /^Bearer\s+(\S+)\s*$/i.exec(ctx.get('authorization'));
      if (match) {
        const token = match[1];
        return isWellFormedToken(token)
          ? { token, via: 'bearer', invalid: false, cookie }
          : { via: 'bearer', invalid: true, cookie };
      }
    }
    const value = cookie.signed
      ? signedCookie(ctx, cookie.name)
      : ctx.cookies.get(cookie.name, { signed: false });
    if (value === undefined) {
      // A cookie present without a valid signature is tampered (or signed with a retired key).
      const tampered =
        cookie.signed && ctx.cookies.get(cookie.name, { signed: false }) !== undefined;
      return { via: 'none', invalid: tampered, cookie };
    }
    return this.#presented(value, 'cookie', cookie);
  }

  #facts(ctx: Context): CookieFacts {
    const options = this.#cookie;
    const secure = options.secure === 'auto' ? ctx.secure : options.secure;
    const hostOnly = options.hostPrefix && options.domain === undefined && options.path === '/';
    const keys = ctx.app.keys;
    return {
      name: hostOnly && secure ? `__Host-${options.name}` : options.name,
      secure,
      signed:
        options.signed === 'auto'
          ? Array.isArray(keys)
            ? keys.length > 0
            : Boolean(keys)
          : options.signed,
    };
  }

  /**
   * A presented key split into its token (the last 65 characters, or 43 for a token
   * issued before tokens named their session) and label, or invalid when it is not one
   * of ours.
   */
  #presented(value: string, via: 'cookie' | 'external', cookie: CookieFacts): PresentedToken {
    const { prefix } = this.#options.koa;
    const rest = value.startsWith(prefix) ? value.slice(prefix.length) : undefined;
    const length = rest === undefined ? 0 : trailingTokenLength(rest);
    if (rest === undefined || length === 0) return { via, invalid: true, raw: value, cookie };
    const token = rest.slice(-length);
    if (rest.length === length) return { token, via, invalid: false, cookie };
    if (rest.length < length + 2 || rest[rest.length - length - 1] !== '.') {
      return { via, invalid: true, raw: value, cookie };
    }
    return { token, label: rest.slice(0, -length - 1), via, invalid: false, cookie };
  }

  /** The version this client last wrote (0: unknown), from the fence cookie. */
  fence(ctx: Context, presented: PresentedToken): number {
    if (!this.#fenced || presented.via !== 'cookie') return 0;
    const version = Number(ctx.cookies.get(`${presented.cookie.name}.v`, { signed: false }));
    return Number.isSafeInteger(version) && version > 0 ? version : 0;
  }

  /** The key as handed to the client: prefix, genid's label, the token. */
  key(token: string, label: string | undefined): string {
    return `${this.#options.koa.prefix}${label ? `${label}.` : ''}${token}`;
  }

  /**
   * Hands the key to the client: koa-session's `externalKey.set`, or the cookie (with
   * the version fence when reads may come from replicas). A bearer client keeps its
   * token: nothing is sent.
   */
  send(
    ctx: Context,
    presented: PresentedToken,
    key: string,
    maxAge: number | 'session' | undefined,
    version: number | undefined,
  ): void {
    const { externalKey } = this.#options.koa;
    if (externalKey) {
      externalKey.set(ctx, key);
      return;
    }
    if (presented.via === 'bearer') return;
    const { cookie } = presented;
    const lifetime = maxAge ?? this.#cookie.maxAge;
    ctx.cookies.set(cookie.name, key, this.#attributes(cookie, lifetime, cookie.signed));
    if (this.#fenced && version !== undefined) {
      ctx.cookies.set(
        `${cookie.name}.v`,
        String(version),
        this.#attributes(cookie, lifetime, false),
      );
    }
  }

  /** Expires the cookie (with its signature and fence); an external key or a bearer token is the client's. */
  clear(ctx: Context, presented: PresentedToken): void {
    if (presented.via === 'bearer' || this.#options.koa.externalKey) return;
    const { cookie } = presented;
    ctx.cookies.set(cookie.name, '', this.#attributes(cookie, 'expired', cookie.signed));
    if (ctx.cookies.get(`${cookie.name}.v`) !== undefined) {
      ctx.cookies.set(`${cookie.name}.v`, '', this.#attributes(cookie, 'expired', false));
    }
  }

  /** The attributes every cookie of ours carries: HttpOnly, SameSite, Secure where it applies. */
  #attributes(cookie: CookieFacts, lifetime: Lifetime, sign: boolean) {
    const options = this.#cookie;
    return {
      httpOnly: true,
      sameSite: options.sameSite,
      secure: cookie.secure,
      path: options.path,
      domain: options.domain,
      signed: sign,
      overwrite: options.overwrite,
      ...(lifetime === 'expired' ? { expires: new Date(0) } : {}),
      ...(typeof lifetime === 'number' ? { maxAge: lifetime } : {}),
    };
  }
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
      // keygrip's default signature: HMAC-SHA1 in URL-safe base64 without padding.
      const expected = Buffer.from(
        createHmac('sha1', current).update(`${name}=${value}`).digest('base64url'),
      );
      if (presented.length === expected.length && timingSafeEqual(presented, expected)) {
        return value;
      }
    }
  }
  return ctx.cookies.get(name, { signed: true });
}
