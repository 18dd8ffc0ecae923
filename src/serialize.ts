import { SessionDataError } from './errors.js';

/** Keys that would shadow the session object's own API or touch prototypes. */
export const RESERVED_KEYS: ReadonlySet<string> = new Set([
  '__proto__',
  'constructor',
  'prototype',
  'isNew',
  'maxAge',
  'toJSON',
  'inspect',
  'length',
  'populated',
  'save',
  'regenerate',
  'manuallyCommit',
  'commit',
  'externalKey',
  '_requireSave',
  '_expire',
]);

/** Deepest nesting of objects and arrays a session value may have. */
export const MAX_DEPTH = 64;

/**
 * Whether PostgreSQL can store this string in text or jsonb: neither holds NUL, and
 * jsonb refuses an unpaired UTF-16 surrogate (`\ud800` alone), which JSON.stringify
 * writes out as an escape.
 */
export function isStorableText(value: string): boolean {
  return !UNSTORABLE_TEXT.test(value);
}

const UNSTORABLE_TEXT = /\0|[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/;

/**
 * The JSON text of one session value, refusing what JSON would silently change or
 * PostgreSQL would refuse (NUL, unpaired surrogates, nesting deeper than {@link MAX_DEPTH}):
 * functions, symbols, BigInt, cycles, undefined or holes inside arrays, NaN and
 * ±Infinity, Maps, Sets and other class instances without `toJSON`. Objects with a
 * `toJSON` (Date) are stored as what it returns, as JSON.stringify does.
 */
export function serializeValue(value: unknown, path: string): string {
  checkText(path, path);
  check(value, path, new Set());
  return JSON.stringify(value);
}

function checkText(text: string, path: string): void {
  if (!isStorableText(text)) {
    throw new SessionDataError('text with NUL or an unpaired surrogate cannot be stored', path);
  }
}

function check(value: unknown, path: string, ancestors: Set<object>): void {
  switch (typeof value) {
    case 'string':
      checkText(value, path);
      return;
    case 'boolean':
      return;
    case 'number':
      if (!Number.isFinite(value))
        throw new SessionDataError(`${value} is not a JSON number`, path);
      return;
    case 'bigint':
      throw new SessionDataError('BigInt is not JSON; store it as a string', path);
    case 'function':
      throw new SessionDataError('functions cannot be stored', path);
    case 'symbol':
      throw new SessionDataError('symbols cannot be stored', path);
    case 'undefined':
      throw new SessionDataError('undefined cannot be stored here', path);
  }
  if (value === null) return;
  const object = value as object;
  if (ancestors.has(object)) throw new SessionDataError('circular reference', path);
  if (ancestors.size >= MAX_DEPTH) {
    throw new SessionDataError(`nested deeper than ${MAX_DEPTH} levels`, path);
  }
  if (typeof (object as { toJSON?: unknown }).toJSON === 'function') {
    check((object as { toJSON: () => unknown }).toJSON(), path, ancestors);
    return;
  }
  ancestors.add(object);
  try {
    if (Array.isArray(object)) {
      for (let index = 0; index < object.length; index++) {
        if (!(index in object))
          throw new SessionDataError('sparse array (hole)', `${path}[${index}]`);
        check(object[index], `${path}[${index}]`, ancestors);
      }
      return;
    }
    const prototype = Object.getPrototypeOf(object);
    if (prototype !== Object.prototype && prototype !== null) {
      const kind = (object.constructor as { name?: string } | undefined)?.name ?? 'object';
      throw new SessionDataError(`${kind} is not a plain object and has no toJSON`, path);
    }
    for (const [key, item] of Object.entries(object)) {
      // JSON.stringify drops undefined object members: that is deleting the key, allowed.
      if (item === undefined) continue;
      checkText(key, `${path}.${key}`);
      check(item, `${path}.${key}`, ancestors);
    }
  } finally {
    ancestors.delete(object);
  }
}
