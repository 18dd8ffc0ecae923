import { SessionDataError } from './errors.js';
import { RESERVED_KEYS, serializeValue } from './serialize.js';

/** What the middleware tracks about a session object, kept off its enumerable keys. */
interface SessionInternals {
  isNew: boolean;
  maxAge: number | 'session' | undefined;
  /** JSON of each top-level value as loaded (or as last saved). */
  loaded: Map<string, string>;
  forceSave: boolean;
}

const internals = new WeakMap<Session, SessionInternals>();

/** The top-level keys a request changed, ready for a delta write. */
export interface SessionChanges {
  readonly patch: Record<string, unknown>;
  readonly removed: string[];
  /** The loaded JSON of every changed key (undefined: absent at load), for strict mode. */
  readonly expected: Map<string, string | undefined>;
  /** UTF-8 bytes of the whole session as this request sees it. */
  readonly size: number;
}

/**
 * `ctx.session`: a plain-looking object whose own enumerable properties are the
 * session data, as in koa-session. Change detection compares each top-level value's
 * JSON with the loaded one, so nested mutations (`ctx.session.cart.push(…)`) count.
 */
export class Session {
  /** Session data: any JSON-faithful value under any key but the reserved ones. */
  [key: string]: unknown;

  constructor(data: Readonly<Record<string, unknown>>, isNew: boolean) {
    internals.set(this, { isNew, maxAge: undefined, loaded: new Map(), forceSave: false });
    const loaded = internals.get(this)!.loaded;
    for (const [key, value] of Object.entries(data)) {
      // Stored data never gets to shadow the API or a prototype.
      if (RESERVED_KEYS.has(key)) continue;
      Object.defineProperty(this, key, {
        value,
        enumerable: true,
        writable: true,
        configurable: true,
      });
      loaded.set(key, JSON.stringify(value));
    }
  }

  /** True when this request created the session (nothing was loaded). */
  get isNew(): boolean {
    return internals.get(this)!.isNew;
  }

  /** The cookie's max age in ms for this session, or 'session' for a browser-session cookie. */
  get maxAge(): number | 'session' | undefined {
    return internals.get(this)!.maxAge;
  }

  set maxAge(value: number | 'session' | undefined) {
    if (value !== undefined && value !== 'session' && !(Number.isFinite(value) && value > 0)) {
      throw new TypeError("session.maxAge must be a positive number of ms or 'session'");
    }
    const state = internals.get(this)!;
    state.maxAge = value;
    state.forceSave = true;
  }

  /** Number of keys. */
  get length(): number {
    return Object.keys(this.toJSON()).length;
  }

  /** True when the session holds at least one key. */
  get populated(): boolean {
    return this.length > 0;
  }

  /** The session data as a plain object (what is stored). */
  toJSON(): Record<string, unknown> {
    const data: Record<string, unknown> = {};
    for (const key of Object.keys(this)) {
      const value = (this as Record<string, unknown>)[key];
      if (value !== undefined) data[key] = value;
    }
    return data;
  }

  /** Marks the session to be saved even if no key changed (koa-session's `save()`). */
  save(): void {
    internals.get(this)!.forceSave = true;
  }

  inspect(): Record<string, unknown> {
    return this.toJSON();
  }
}

/** Whether save() or a maxAge change asked for a write. */
export function isForcedSave(session: Session): boolean {
  return internals.get(session)!.forceSave;
}

/**
 * The delta since load, validating every changed value (faithful JSON, no reserved
 * key). Unchanged keys are not serialised into the patch.
 */
export function collectChanges(session: Session): SessionChanges {
  const state = internals.get(session)!;
  const patch: Record<string, unknown> = {};
  const removed: string[] = [];
  const expected = new Map<string, string | undefined>();
  const seen = new Set<string>();
  let size = 2;
  for (const key of Object.getOwnPropertyNames(session)) {
    const value = (session as unknown as Record<string, unknown>)[key];
    if (value === undefined) continue;
    if (RESERVED_KEYS.has(key)) throw new SessionDataError('this key name is reserved', key);
    seen.add(key);
    const json = serializeValue(value, key);
    size += Buffer.byteLength(JSON.stringify(key)) + Buffer.byteLength(json) + 2;
    const before = state.loaded.get(key);
    if (before !== json) {
      patch[key] = JSON.parse(json);
      expected.set(key, before);
    }
  }
  for (const [key, before] of state.loaded) {
    if (!seen.has(key)) {
      removed.push(key);
      expected.set(key, before);
    }
  }
  return { patch, removed, expected, size };
}

/** After a successful write the saved state is the new baseline. */
export function markSaved(session: Session): void {
  const state = internals.get(session)!;
  state.loaded = new Map(
    Object.entries(session.toJSON()).map(([key, value]) => [key, JSON.stringify(value)]),
  );
  state.forceSave = false;
  state.isNew = false;
}

/** Replaces the data (`ctx.session = { … }`): old keys are removed, new ones set. */
export function replaceData(session: Session, data: Record<string, unknown>): void {
  for (const key of Object.keys(session))
    delete (session as unknown as Record<string, unknown>)[key];
  for (const [key, value] of Object.entries(data)) {
    if (RESERVED_KEYS.has(key)) throw new SessionDataError('this key name is reserved', key);
    Object.defineProperty(session, key, {
      value,
      enumerable: true,
      writable: true,
      configurable: true,
    });
  }
}
