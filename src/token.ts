import { createHash, randomBytes, randomUUID, timingSafeEqual } from 'node:crypto';

/** 32 random bytes: 256 bits, base64url without padding (43 characters). */
const SECRET_BYTES = 32;
/** A session id (a uuid's 16 bytes) in base64url: 22 characters. */
const ID_LENGTH = 22;
/** A token that names its session: id, then secret. */
const ROUTED_LENGTH = ID_LENGTH + 43;
/** A token before routed tokens (release 0.1): the secret alone. */
const UNROUTED_PATTERN = /^[A-Za-z0-9_-]{43}$/;
/** A token that names its session: the id's 22 characters, then the 43-character secret. */
const ROUTED_PATTERN = /^[A-Za-z0-9_-]{65}$/;

/**
 * A new secret session token for the session `sessionId` (a new session's when none is
 * given): the session's id, then 256 random bits. The id routes the lookup (on Citus,
 * to the worker holding the session); the secret is the credential. Only the SHA-256 of
 * the whole token is ever stored.
 */
export function generateToken(sessionId: string = randomUUID()): string {
  const id = Buffer.from(sessionId.replaceAll('-', ''), 'hex');
  return id.toString('base64url') + randomBytes(SECRET_BYTES).toString('base64url');
}

/** True for strings that have the shape of a token we issue (or issued); anything else is never looked up. */
export function isWellFormedToken(value: unknown): value is string {
  return typeof value === 'string' && (ROUTED_PATTERN.test(value) || UNROUTED_PATTERN.test(value));
}

/** The length of a well-formed token at the end of `value`, or 0: a key's token is its last part. */
export function trailingTokenLength(value: string): 0 | 43 | 65 {
  if (value.length >= 65 && ROUTED_PATTERN.test(value.slice(-65))) return 65;
  if (value.length >= 43 && UNROUTED_PATTERN.test(value.slice(-43))) return 43;
  return 0;
}

/** The session id a token names, or undefined for a token issued before tokens named one. */
export function sessionIdOf(token: string): string | undefined {
  if (token.length !== ROUTED_LENGTH) return undefined;
  const hex = Buffer.from(token.slice(0, ID_LENGTH), 'base64url').toString('hex');
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

/** SHA-256 of the token: what the database stores and indexes (`token_hash`). */
export function hashToken(token: string): Buffer {
  return createHash('sha256').update(token, 'utf8').digest();
}

/** Compares two hashes without leaking, through timing, where they first differ. */
export function hashesEqual(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && timingSafeEqual(a, b);
}
