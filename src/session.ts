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

/** What koa-session's `commit(options)` may ask for besides the ordinary commit. */
export interface CommitRequest {
  /** Write even if nothing changed (koa-session's `save()`). */
  readonly save?: boolean;
  /** Issue a new token for the session, then write (koa-session's `regenerate()`). */
  readonly regenerate?: boolean;
}

/** Node's callback convention, as koa-session 7 and passport call it. */
export type SessionCallback = (error?: Error) => void;

/** What a session object asks of the request that owns it (koa-session's `_sessCtx`). */
export interface SessionOwner {
  /** The configured cookie lifetime, what `session.maxAge` reads when not set. */
  readonly configuredMaxAge: number | 'session';
  /** When the loaded session expires (ms since the epoch), undefined for a new one. */
  readonly expiresAt: number | undefined;
  /** Commits now, after any commit already under way (koa-session's `ContextSession.commit`). */
  commit(request?: CommitRequest): Promise<void>;
  /** The key as handed to the client (cookie value or external key). */
  externalKey(): string | undefined;
}

/** The cookie lifetime a session outside any request reports (koa-session's one day). */
const UNOWNED_MAX_AGE = 24 * 60 * 60 * 1000;

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
    // Read-only to TypeScript; at run time, assigning one of these is the typed data
    // error any reserved key gets (koa-session has plain fields there), not a TypeError.
    for (const name of ['isNew', 'length', 'populated', 'externalKey', '_expire']) {
      const accessor = Object.getOwnPropertyDescriptor(Session.prototype, name);
      Object.defineProperty(Session.prototype, name, {
        ...accessor,
        set() {
          throw new SessionDataError('this key name is reserved', name);
        },
      });
    }
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
  get maxAge(): number | 'session' {
    const state = this.#state;
    return state.maxAge ?? state.owner?.configuredMaxAge ?? UNOWNED_MAX_AGE;
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

  /**
   * koa-session's `_requireSave`: true once `save()` or a `maxAge` change asked for a
   * write that the request has not made yet. Setting it true forces the next commit.
   */
  get _requireSave(): boolean {
    return this.#state.forceSave;
  }

  set _requireSave(value: boolean) {
    this.#state.forceSave = value === true;
  }

  /**
   * koa-session's `_expire`: when the session expires (ms since the epoch), the sooner of
   * its idle and absolute expiry as loaded; undefined for a session not yet stored.
   * Read-only: expiry is the database's (`idleTimeout`, `absoluteTimeout`).
   */
  get _expire(): number | undefined {
    return this.#state.owner?.expiresAt;
  }

  /**
   * koa-session's `save()`: writes the session now, even if nothing changed, and sets
   * the cookie. Returns a promise, or calls `callback` when done (then returns
   * undefined), as koa-session 7 does; passport's login waits on it.
   *
   * @example
   * await ctx.session.save();
   * ctx.session.save((error) => { if (!error) ctx.redirect('/'); });
   */
  save(): Promise<void>;
  save(callback: SessionCallback): undefined;
  save(callback?: SessionCallback): Promise<void> | undefined;
  save(callback?: SessionCallback): Promise<void> | undefined {
    return this.commit({ save: true }, callback);
  }

  inspect(): Record<string, unknown> {
    return this.toJSON();
  }

  /** koa-session's `util.inspect` of a session: its data. */
  [inspect.custom](): Record<string, unknown> {
    return this.toJSON();
  }

  /**
   * koa-session's `regenerate()`: a new token for the same session (same id, same data),
   * written now; the old token reaches the session only for `rotationGrace`. Promise or
   * callback, as {@link save}.
   */
  regenerate(): Promise<void>;
  regenerate(callback: SessionCallback): undefined;
  regenerate(callback?: SessionCallback): Promise<void> | undefined;
  regenerate(callback?: SessionCallback): Promise<void> | undefined {
    return this.commit({ regenerate: true }, callback);
  }

  /** koa-session's `manuallyCommit()`: writes now (with `autoCommit: false`, the only write). */
  manuallyCommit(): Promise<void> {
    return this.commit() as Promise<void>;
  }

  /**
   * koa-session's `commit(options?, callback?)`: commits what the request changed now,
   * `{ save: true }` even if nothing did, `{ regenerate: true }` with a new token. The
   * callback (or the promise) settles once the row is written and the cookie set.
   */
  commit(options?: CommitRequest): Promise<void>;
  commit(callback: SessionCallback): undefined;
  commit(options: CommitRequest | undefined, callback: SessionCallback): undefined;
  commit(
    options?: CommitRequest | SessionCallback,
    callback?: SessionCallback,
  ): Promise<void> | undefined;
  commit(
    options?: CommitRequest | SessionCallback,
    callback?: SessionCallback,
  ): Promise<void> | undefined {
    if (typeof options === 'function') return this.commit(undefined, options);
    const owner = this.#state.owner;
    // A session read before the middleware ran has no request to commit it yet.
    const done = owner ? owner.commit(options) : Promise.resolve();
    if (!callback) return done;
    done.then(
      () => callback(),
      (error: unknown) => callback(error instanceof Error ? error : new Error(String(error))),
    );
    return undefined;
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

/** What an unchanged session's delta is: shared, never written to. */
const NO_PATCH: Record<string, unknown> = Object.freeze({}) as Record<string, unknown>;
const NO_KEYS: string[] = Object.freeze([]) as unknown as string[];
const NO_EXPECTATIONS: Map<string, string | undefined> = new Map();

/**
 * The delta since load, validating every changed value (faithful JSON, no reserved
 * key). Unchanged keys are not serialised into the patch. A session whose every key is
 * as loaded (every read) allocates nothing: its baseline is what it loaded.
 */
export function collectChanges(session: Session): SessionChanges {
  const state = stateOf(session);
  const { loaded } = state;
  let size = 2;
  let unchanged = 0;
  for (const key of Object.getOwnPropertyNames(session)) {
    const value = (session as unknown as Record<string, unknown>)[key];
    if (value === undefined) continue;
    if (RESERVED_KEYS.has(key)) throw new SessionDataError('this key name is reserved', key);
    const before = loaded.get(key);
    if (
      before === undefined ||
      (before.primitive ? before.value !== value : serializeValue(value, key) !== before.json)
    ) {
      return changesOf(session, state);
    }
    size += before.bytes;
    unchanged++;
  }
  if (unchanged !== loaded.size) return changesOf(session, state);
  return { patch: NO_PATCH, removed: NO_KEYS, expected: NO_EXPECTATIONS, size, baseline: loaded };
}

/** The delta of a session that changed: the patch, the removed keys, the new baseline. */
function changesOf(session: Session, state: SessionInternals): SessionChanges {
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

/** The stored values of a snapshot, as the row's `data` (shared, never changed in place). */
export function valuesOf(snapshot: DataSnapshot): Record<string, unknown> {
  const data: Record<string, unknown> = {};
  for (const [key, entry] of snapshot) data[key] = entry.value;
  return data;
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
