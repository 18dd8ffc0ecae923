import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import parseBody from 'co-body';
import type { Context } from 'koa';
import { SessionCsrfError, SessionOptionsError } from '../errors.js';
import type { ResolvedCsrfOptions } from '../options/types.js';
import type { RequestSession } from './request-session.js';

/**
 * CSRF tokens bound to the session (the synchronizer-token pattern, without storage).
 *
 * The secret is an HMAC, under `app.keys`, of the tenant, the session's public id and
 * the time its current token was issued: it names one session and one generation of
 * its token, so a rotation (sign-in, `regenerate()`) retires the forms rendered before
 * it once `rotationGrace` has passed, as it retires the session token itself. Each
 * call masks it with fresh random bytes (BREACH: a compressed page never repeats the
 * same bytes), so no two tokens handed out are alike; all of them verify.
 *
 * Token: base64url( mask ‖ (issued-at ms, 8 bytes ‖ HMAC) XOR mask ).
 */

/** Signs with the first key and accepts any of them, like Koa's signed cookies. */
interface CsrfSigner {
  sign(message: string): Buffer;
  verify(message: string, digest: Buffer): boolean;
}

/** A Keygrip (Koa accepts one as app.keys): its own sign and constant-time index. */
interface KeygripLike {
  sign(data: string): string;
  index(data: string, digest: string): number;
}

const ISSUED_BYTES = 8;
/** The shortest HMAC accepted: keygrip's default SHA-1 gives 20 bytes, SHA-256 32. */
const MIN_DIGEST_BYTES = 20;
/** Longest token looked at: a 64-byte digest, masked and encoded, with room to spare. */
const MAX_TOKEN_LENGTH = 256;

const signers = new WeakMap<object, CsrfSigner>();

function signerFor(keys: unknown): CsrfSigner {
  if (keys && typeof keys === 'object') {
    let signer = signers.get(keys);
    if (!signer) {
      signer = makeSigner(keys);
      signers.set(keys, signer);
    }
    return signer;
  }
  throw new SessionOptionsError(
    'csrf',
    'CSRF tokens are signed with app.keys: set app.keys to one or more long random secrets',
  );
}

function makeSigner(keys: object): CsrfSigner {
  if (Array.isArray(keys) && keys.length > 0) {
    // Read at each call: an app that changes its keys in place signs with the new first one.
    const secrets = keys as [string | Buffer, ...(string | Buffer)[]];
    const hmac = (key: string | Buffer, message: string) =>
      createHmac('sha256', key).update(message).digest();
    return {
      sign: (message) => hmac(secrets[0], message),
      verify: (message, digest) =>
        secrets.some((key) => {
          const expected = hmac(key, message);
          return expected.length === digest.length && timingSafeEqual(expected, digest);
        }),
    };
  }
  const keygrip = keys as Partial<KeygripLike>;
  if (typeof keygrip.sign === 'function' && typeof keygrip.index === 'function') {
    const grip = keygrip as KeygripLike;
    return {
      sign: (message) => Buffer.from(grip.sign(message), 'base64url'),
      verify: (message, digest) => grip.index(message, digest.toString('base64url')) >= 0,
    };
  }
  return signerFor(undefined);
}

/** What the HMAC covers: one generation of one session's token, in one tenant. */
function message(tenantId: string, sessionId: string, issuedAtMs: number): string {
  return `pg-sessions.csrf\0${tenantId}\0${sessionId}\0${issuedAtMs}`;
}

/** A fresh masked token for the session's current token generation. */
export function mintCsrfToken(
  keys: unknown,
  tenantId: string,
  sessionId: string,
  issuedAtMs: number,
): string {
  const digest = signerFor(keys).sign(message(tenantId, sessionId, issuedAtMs));
  const payload = Buffer.alloc(ISSUED_BYTES + digest.length);
  payload.writeDoubleBE(issuedAtMs, 0);
  digest.copy(payload, ISSUED_BYTES);
  const mask = randomBytes(payload.length);
  xorInto(payload, mask);
  return Buffer.concat([mask, payload]).toString('base64url');
}

/** target ^= mask, byte by byte (same lengths). */
function xorInto(target: Buffer, mask: Buffer): void {
  for (let i = 0; i < target.length; i++)
    target.writeUInt8(target.readUInt8(i) ^ mask.readUInt8(i), i);
}

/** Why a token was refused; the error carries it for logs (never the token). */
export type CsrfRefusal = 'missing' | 'malformed' | 'no-session' | 'mismatch' | 'rotated';

/**
 * Checks a presented token against the request's session: undefined when it belongs
 * to it, else why not. A token of the generation before the current one is accepted
 * until `rotationGrace` after the rotation (forms rendered just before a sign-in). A
 * request whose session has ended (revoked, expired: `ctx.sessions.ended`) may still
 * send the form a page of that session rendered: it runs in a fresh session, with no
 * authority left to abuse, and the application can tell the user why they were signed
 * out instead of refusing the form.
 */
export function verifyCsrfToken(
  request: RequestSession,
  presented: string | undefined,
): CsrfRefusal | undefined {
  const record = request.destroyed ? undefined : request.record;
  const sessionId = record?.id ?? request.ended?.id;
  if (sessionId === undefined) return 'no-session';
  if (presented === undefined || presented.length === 0) return 'missing';
  const decoded = decode(presented);
  if (!decoded) return 'malformed';
  const { issuedAtMs, digest } = decoded;
  const signer = signerFor(request.ctx.app.keys);
  if (!signer.verify(message(request.tenantId, sessionId, issuedAtMs), digest)) return 'mismatch';
  if (!record) return undefined;
  const current = record.tokenIssuedAt.getTime();
  if (issuedAtMs === current) return undefined;
  const { rotationGrace } = request.services.options;
  // An earlier generation: valid while the rotation that retired it is within its grace.
  return issuedAtMs < current && Date.now() <= current + rotationGrace ? undefined : 'rotated';
}

/** A presented token unmasked, or undefined when it is not the shape of one. */
function decode(presented: string): { issuedAtMs: number; digest: Buffer } | undefined {
  if (presented.length > MAX_TOKEN_LENGTH || !/^[A-Za-z0-9_-]+$/.test(presented)) return undefined;
  const bytes = Buffer.from(presented, 'base64url');
  // Canonical only: trailing bits a decoder ignores would make two spellings of one token.
  if (bytes.toString('base64url') !== presented) return undefined;
  const half = bytes.length / 2;
  if (!Number.isInteger(half) || half < ISSUED_BYTES + MIN_DIGEST_BYTES) return undefined;
  const payload = bytes.subarray(half);
  xorInto(payload, bytes.subarray(0, half));
  return { issuedAtMs: payload.readDoubleBE(0), digest: payload.subarray(ISSUED_BYTES) };
}

/** True when this request must carry a token: a guarded method, not bearer, not ignored. */
export function needsCsrfCheck(request: RequestSession): boolean {
  const csrf = request.services.options.csrf;
  if (csrf === false || !csrf.methods.has(request.ctx.method)) return false;
  // A bearer token is sent by the client's own code, never ambiently by a browser.
  if (request.presented.via === 'bearer') return false;
  return !csrf.ignore?.(request.ctx);
}

/** The token a guarded request carries, read before the load (a slow upload holds no row lock). */
export interface CsrfPresented {
  readonly token: string | undefined;
}

/** Reads the token of a request {@link needsCsrfCheck} says must carry one. */
export async function readCsrfToken(request: RequestSession): Promise<CsrfPresented> {
  const csrf = request.services.options.csrf;
  return { token: csrf ? await presentedToken(request.ctx, csrf) : undefined };
}

/**
 * Refuses the request with {@link SessionCsrfError} (403) unless its token belongs to
 * its session: run after the load, before the handler, so a refusal writes nothing.
 */
export function refuseForgery(request: RequestSession, presented: CsrfPresented): void {
  const refusal = verifyCsrfToken(request, presented.token);
  if (refusal === undefined) return;
  request.services.metrics.increment('csrfRefusals');
  throw new SessionCsrfError(refusal);
}

/** At the first request (and when app.keys change): CSRF tokens need keys to sign with. */
export function checkCsrfKeys(keys: unknown): void {
  signerFor(keys);
}

/**
 * The token the request carries: the header, else the form field of a body an earlier
 * parser set (`ctx.request.body`), else of an urlencoded body read here, parsed as
 * koa-bodyparser parses it and left on `ctx.request.body` (a body parser mounted later
 * then finds it parsed and skips it). Other bodies (multipart, JSON) need the header
 * or a parser that runs before the session middleware.
 */
async function presentedToken(
  ctx: Context,
  csrf: ResolvedCsrfOptions,
): Promise<string | undefined> {
  const header = ctx.get(csrf.header);
  if (header) return header;
  const request = ctx.request as Context['request'] & { body?: unknown; rawBody?: string };
  if (request.body === undefined && ctx.is('urlencoded')) {
    const { parsed, raw } = await parseBody.form(ctx, {
      limit: csrf.formLimit,
      returnRawBody: true,
    });
    request.body = parsed;
    request.rawBody = raw;
  }
  const body = request.body;
  if (!body || typeof body !== 'object') return undefined;
  const value = (body as Record<string, unknown>)[csrf.field];
  return typeof value === 'string' ? value : undefined;
}
