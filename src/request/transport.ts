import type { Context } from 'koa';
import {
  clearCookie,
  keyValue,
  type PresentedToken,
  readToken,
  readVersionFence,
  writeCookie,
  writeVersionFence,
} from '../cookie.js';
import type { ResolvedOptions } from '../options/types.js';

/**
 * How the session key travels between client and server: a signed cookie (the
 * default), `Authorization: Bearer` (the client keeps the token; nothing is sent back)
 * or koa-session's `externalKey` (`get`/`set` of the app's choosing). Made once per
 * middleware from the resolved options; every method takes the request's values.
 */
export class KeyTransport {
  readonly #options: ResolvedOptions;
  /** Writes carry the session's version in a second cookie for read-your-writes. */
  readonly #fenced: boolean;

  constructor(options: ResolvedOptions, fenced: boolean) {
    this.#options = options;
    this.#fenced = fenced;
  }

  /** The key the request presents: cookie, bearer or external key, checked for shape and signature. */
  read(ctx: Context): PresentedToken {
    const { cookie, bearer, koa } = this.#options;
    return readToken(ctx, cookie, bearer, koa);
  }

  /** The version this client last wrote (0: unknown), from the fence cookie. */
  fence(ctx: Context, presented: PresentedToken): number {
    return this.#fenced && presented.via === 'cookie'
      ? readVersionFence(ctx, this.#options.cookie)
      : 0;
  }

  /** True when the key travels in our cookie (not bearer, not an external key). */
  carriesCookie(presented: PresentedToken): boolean {
    return presented.via !== 'bearer' && !this.#options.koa.externalKey;
  }

  /** The key as handed to the client: prefix, genid's label, the token. */
  key(token: string, label: string | undefined): string {
    return keyValue(this.#options.koa, token, label);
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
    const { koa, cookie } = this.#options;
    if (koa.externalKey) {
      koa.externalKey.set(ctx, key);
      return;
    }
    if (presented.via === 'bearer') return;
    writeCookie(ctx, cookie, key, maxAge);
    if (this.#fenced && version !== undefined) writeVersionFence(ctx, cookie, version, maxAge);
  }

  /** Expires the cookie (and its fence); an external key or a bearer token is the client's. */
  clear(ctx: Context, presented: PresentedToken): void {
    if (this.carriesCookie(presented)) clearCookie(ctx, this.#options.cookie);
  }
}
