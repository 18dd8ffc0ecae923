import { inspect } from 'node:util';
import { SessionDataError } from './errors.js';
import { RESERVED_KEYS, serializeValue } from './serialize.js';

/** One top-level value as loaded (or as last saved). */
export interface LoadedValue {
  readonly json: string;
  /** What the key and value add to the session's size in bytes. */
  readonly bytes: number;
  /** Strings, numbers, booleans and null are shared; objects are parsed from `json` per request. */
  readonly primitive: boolean;
  readonly value: unknown;
}

/**
 * The session data as loaded, key by key. Computed once per cached row, so a cache
 * hit neither serialises the data again nor hands out objects another request could
 * change in place.
 */
export type DataSnapshot = ReadonlyMap<string, LoadedValue>;

/** What a session object asks of the request that owns it (koa-session's `_sessCtx`). */
export interface SessionOwner {
  /** The configured cookie lifetime, what `session.maxAge` reads when not set. */
  readonly configuredMaxAge: number | 'session';
  /** Rotates the token at commit (koa-session's `regenerate()`). */
  regenerate(): void;
  /** Commits now (koa-session's `manuallyCommit()`). */
  commit(): Promise<void>;
  /** The key as handed to the client (cookie value or external key). */
  externalKey(): string | undefined;
}

/** What the middleware tracks about a session object, kept off its enumerable keys. */
interface SessionInternals {
  isNew: boolean;
  maxAge: number | 'session' | undefined;
  owner: SessionOwner | undefined;
  loaded: DataSnapshot;
  forceSave: boolean;
}

/** The snapshot of stored (or just assigned) data; reserved and undefined values are left out. */
export function snapshotData(data: Readonly<Record<string, unknown>>): DataSnapshot {
  const snapshot = new Map<string, LoadedValue>();
  for (const [key, value] of Object.entries(data)) {
    if (value === undefined || RESERVED_KEYS.has(key)) continue;
    snapshot.set(key, loadedValue(key, value, JSON.stringify(value)));
  }
  return snapshot;
}

function loadedValue(key: string, value: unknown, json: string): LoadedValue {
  return {
    json,
    bytes: Buffer.byteLength(JSON.stringify(key)) + Buffer.byteLength(json) + 2,
    primitive: value === null || typeof value !== 'object',
    value,
  };
}

/**
 * A session's internals, for this module's functions. A private field rather than a
 * WeakMap: a WeakMap entry whose value reaches its key (internals -> owner -> request
 * -> session) survives every young-generation collection, so each request's whole
 * object graph would be promoted and left to the slow old-generation collector.
 */
let stateOf: (session: Session) => SessionInternals;

/** The top-level keys a request changed, ready for a delta write. */
export interface SessionChanges {
  readonly patch: Record<string, unknown>;
  readonly removed: string[];
  /** The loaded JSON of every changed key (undefined: absent at load), for strict mode. */
  readonly expected: Map<string, string | undefined>;
  /** UTF-8 bytes of the whole session as this request sees it. */
  readonly size: number;
  /** The data as this write stores it: the session's new baseline once saved. */
  readonly baseline: DataSnapshot;
}

/**
 * `ctx.session`: a plain-looking object whose own enumerable properties are the
 * session data, as in koa-session. Change detection compares each top-level value's
 * JSON with the loaded one, so nested mutations (`ctx.session.cart.push(…)`) count.
 */
export class Session {
  /** Session data: any JSON-faithful value under any key but the reserved ones. */
  [key: string]: unknown;

  /** Off the data: private fields are not keys, not enumerable, not in JSON. */
  readonly #state: SessionInternals;

  static {
    stateOf = (session) => session.#state;
  }

  /**
   * `values`: the objects to use as they are (data the app just assigned); else each
   * value comes from the snapshot, objects as fresh copies.
   */
  constructor(
    loaded: DataSnapshot,
    isNew: boolean,
    values?: Readonly<Record<string, unknown>>,
    owner?: SessionOwner,
  ) {
    this.#state = { isNew, maxAge: undefined, owner, loaded, forceSave: false };
    const self = this as Record<string, unknown>;
    if (values) {
      for (const [key, value] of Object.entries(values)) {
        // Assigned data: `maxAge` sets the session's maxAge, as in koa-session.
        if (key === 'maxAge') this.maxAge = value as number | 'session';
        // Stored data never gets to shadow the API or a prototype.
        else if (!RESERVED_KEYS.has(key)) self[key] = value;
      }
      return;
    }
    for (const [key, entry] of loaded) {
      self[key] = entry.primitive ? entry.value : JSON.parse(entry.json);
    }
  }

  /** True when this request created the session (nothing was loaded). */
  get isNew(): boolean {
    return this.#state.isNew;
  }

  /**
   * The cookie's max age in ms for this session, or 'session' for a browser-session
   * cookie: the value set on this session in this request, else the configured one.
   */
  get maxAge(): number | 'session' | undefined {
    const state = this.#state;
    return state.maxAge ?? state.owner?.configuredMaxAge;
  }

  set maxAge(value: number | 'session' | undefined) {
    if (value !== undefined && value !== 'session' && !(Number.isFinite(value) && value > 0)) {
      throw new TypeError("session.maxAge must be a positive number of ms or 'session'");
    }
    const state = this.#state;
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
    this.#state.forceSave = true;
  }

  inspect(): Record<string, unknown> {
    return this.toJSON();
  }

  /** koa-session's `util.inspect` of a session: its data. */
  [inspect.custom](): Record<string, unknown> {
    return this.toJSON();
  }

  /** koa-session's `ctx.session.regenerate()`: a new token for the same session, at commit. */
  regenerate(): Promise<void> {
    this.#state.owner?.regenerate();
    return Promise.resolve();
  }

  /** koa-session's `manuallyCommit()`: writes now (with `autoCommit: false`, the only write). */
  async manuallyCommit(): Promise<void> {
    await this.#state.owner?.commit();
  }

  /** koa-session's `externalKey`: the session key as handed to the client. */
  get externalKey(): string | undefined {
    return this.#state.owner?.externalKey();
  }
}

/** The maxAge set on this session in this request (undefined: the configured one applies). */
export function sessionMaxAge(session: Session): number | 'session' | undefined {
  return stateOf(session).maxAge;
}

/** Whether save() or a maxAge change asked for a write. */
export function isForcedSave(session: Session): boolean {
  return stateOf(session).forceSave;
}

/**
 * The delta since load, validating every changed value (faithful JSON, no reserved
 * key). Unchanged keys are not serialised into the patch.
 */
export function collectChanges(session: Session): SessionChanges {
  const state = stateOf(session);
  const patch: Record<string, unknown> = {};
  const removed: string[] = [];
  const expected = new Map<string, string | undefined>();
  const baseline = new Map<string, LoadedValue>();
  let size = 2;
  for (const key of Object.getOwnPropertyNames(session)) {
    const value = (session as unknown as Record<string, unknown>)[key];
    if (value === undefined) continue;
    if (RESERVED_KEYS.has(key)) throw new SessionDataError('this key name is reserved', key);
    const before = state.loaded.get(key);
    // The same string, number, boolean or null as loaded: unchanged, nothing to serialise.
    if (before?.primitive && before.value === value) {
      size += before.bytes;
      baseline.set(key, before);
      continue;
    }
    const json = serializeValue(value, key);
    if (before?.json === json) {
      size += before.bytes;
      baseline.set(key, before);
      continue;
    }
    const stored = JSON.parse(json) as unknown;
    const entry = loadedValue(key, stored, json);
    size += entry.bytes;
    baseline.set(key, entry);
    patch[key] = stored;
    expected.set(key, before?.json);
  }
  for (const [key, before] of state.loaded) {
    if (!baseline.has(key)) {
      removed.push(key);
      expected.set(key, before.json);
    }
  }
  return { patch, removed, expected, size, baseline };
}

/** After a successful write, what it stored (not what the object holds by then) is the baseline. */
export function markSaved(session: Session, baseline: DataSnapshot): void {
  const state = stateOf(session);
  state.loaded = baseline;
  state.forceSave = false;
  state.isNew = false;
}

/** Replaces the data (`ctx.session = { … }`): old keys are removed, new ones set. */
export function replaceData(session: Session, data: Record<string, unknown>): void {
  for (const key of Object.keys(session))
    delete (session as unknown as Record<string, unknown>)[key];
  for (const [key, value] of Object.entries(data)) {
    if (key === 'maxAge') {
      session.maxAge = value as number | 'session';
      continue;
    }
    if (RESERVED_KEYS.has(key)) throw new SessionDataError('this key name is reserved', key);
    Object.defineProperty(session, key, {
      value,
      enumerable: true,
      writable: true,
      configurable: true,
    });
  }
}
