// The options of `sessions()` as the caller writes them and as they are resolved: types
// only, so that the modules that validate and resolve them import this one and never
// each other in a circle.
import type { Context } from 'koa';
import type pg from 'pg';
import type { SessionDatabase } from '../db/router.js';
import type { Logger } from '../logger.js';

/** How concurrent requests on one session combine their writes. */
export type ConcurrencyMode = 'merge' | 'strict' | 'lock';

/** `request`: one transaction on the primary around the handler (exposed as `ctx.db`). */
export type TransactionMode = 'none' | 'request';

/** How the middleware's ordinary data writes commit (see {@link SessionOptions.durability}). */
export type Durability = 'durable' | 'relaxed';

export interface CacheOptions {
  /** Most sessions kept in memory per process. @default 10_000 */
  maxEntries?: number;
  /** Most memory for them, estimated from each row's JSON. @default 67_108_864 (64 MiB) */
  maxBytes?: number;
  /** How often the LISTEN connection proves it is alive, ms. @default 10_000 */
  heartbeatInterval?: number;
  /** First delay before the listener reconnects, ms; doubles per failure, with jitter. @default 100 */
  reconnectMinDelay?: number;
  /** Longest delay between reconnection attempts, ms. @default 5_000 */
  reconnectMaxDelay?: number;
  /**
   * Where the LISTEN connection goes, when the queries go through a transaction-pooling
   * PgBouncer (which NOTIFY cannot pass): the primary's own address. @default the database's primary
   */
  listenUrl?: string;
}

export interface CsrfOptions {
  /** The methods that must carry a token. @default ['POST', 'PUT', 'PATCH', 'DELETE'] */
  methods?: string[];
  /** The request header read for the token (for fetch and XHR). @default 'x-csrf-token' */
  header?: string;
  /** The form field read for the token (urlencoded forms). @default '_csrf' */
  field?: string;
  /** The largest urlencoded body read to find the field, bytes (koa-bodyparser's default). @default 57_344 (56 KiB) */
  formLimit?: number;
  /** Requests exempt from the check (a webhook that authenticates by its own signature). */
  ignore?: (ctx: Context) => boolean;
}

export interface GcOptions {
  /** Mean time between runs in this process, ms (±20 % jitter). @default 300_000 */
  interval?: number;
  /** Rows deleted per transaction. @default 500 */
  batchSize?: number;
  /**
   * Batches per run at most. Unlimited by default: a run drains the whole backlog, one
   * short transaction per batch, so no backlog waits for the next interval. @default Infinity
   */
  maxBatches?: number;
}

export interface CookieOptions {
  /** Cookie name. Over HTTPS with `hostPrefix`, `__Host-` is prepended. @default 'sid' */
  name?: string;
  /** @default '/' */
  path?: string;
  /** Leave unset for a host-only cookie (required by the `__Host-` prefix). @default undefined */
  domain?: string;
  /** Cross-site policy; 'lax' keeps top-level navigation working. @default 'lax' */
  sameSite?: 'lax' | 'strict' | 'none';
  /** 'auto' follows `ctx.secure` (honours `app.proxy`). @default 'auto' */
  secure?: boolean | 'auto';
  /** Prefix the name with `__Host-` when secure, host-only and path '/'. @default true */
  hostPrefix?: boolean;
  /**
   * Cookie lifetime in ms, or 'session' for a cookie that ends with the browser.
   * The server enforces expiry anyway. @default absoluteTimeout
   */
  maxAge?: number | 'session';
  /** Sign with `app.keys` (keygrip, key rotation). 'auto': when app.keys is set. @default 'auto' */
  signed?: boolean | 'auto';
}

/**
 * Options of {@link sessions}. Resolved once, validated and frozen at construction:
 * a mistake fails there with the option's name, never on the first request.
 */
export interface SessionOptions {
  /**
   * The database: a connection URL, a `pg.PoolConfig`, a `pg.Pool` you own (never
   * closed by us), or a {@link SessionDatabase} router (replicas). @default process.env.DATABASE_URL
   */
  database?: string | pg.PoolConfig | pg.Pool | SessionDatabase;
  /** The tenant of a request; row-level security confines every query to it. @default () => 'default' */
  tenant?: (ctx: Context) => string;
  /** Sliding inactivity timeout in ms, enforced by the database's clock. @default 86_400_000 (24 h) */
  idleTimeout?: number;
  /** Lifetime in ms from creation, whatever the activity. @default 604_800_000 (7 days) */
  absoluteTimeout?: number;
  /** An unchanged session is rewritten (touched) at most once per interval. @default 60_000 */
  touchInterval?: number;
  /**
   * Periodic rotation (OWASP): a session's token older than this many ms is replaced by
   * the next request that presents it in a cookie (or an `externalKey`), transparently:
   * the response carries the new key. Shortens how long a copied token stays useful, at
   * the cost of one write per interval per session. Bearer clients are never rotated
   * behind their back (they could not learn the new token). `false`: only `regenerate()`
   * and `bindUser()` rotate. @default false
   */
  rotateInterval?: number | false;
  /**
   * How long, in ms, a token replaced by a rotation still reaches its session, so that
   * requests already in flight with it finish (they are served, but hand out no token).
   * Presented after that, it is taken for a copy: the session is revoked on every node
   * (event `token_reused`, `session:stolen`). Longer tolerates slower clients; shorter
   * narrows the window in which a copied token still works. @default 60_000
   */
  rotationGrace?: number;
  /** 'merge' (key-level last writer wins), 'strict' (409 on a lost update) or 'lock'. @default 'merge' */
  mode?: ConcurrencyMode | ((ctx: Context) => ConcurrencyMode);
  /** 'request' wraps each request in one transaction, `ctx.db`. @default 'none' */
  transaction?: TransactionMode | ((ctx: Context) => TransactionMode);
  /** Lock mode: how long to wait for another request's lock, in ms. @default 10_000 */
  lockTimeout?: number;
  /** Maximum serialised size of the session data in bytes. @default 65_536 */
  maxSize?: number;
  /** Revoke a user's oldest sessions beyond this many when one is bound. @default undefined (no limit) */
  maxSessionsPerUser?: number;
  /** Create a row and a cookie even for a session nobody wrote to. @default false */
  saveUninitialized?: boolean;
  /**
   * `'relaxed'` commits the middleware's ordinary data writes (and the creation of a
   * session no user is bound to) with `synchronous_commit = off` for that transaction
   * only: a crash of the primary, or a failover, can lose the last few hundred ms of
   * such writes, as Redis-backed sessions can by default; they cost no WAL flush.
   * Rotation, user binding, revocation, logout and every delete always commit durably,
   * and so does everything in a request transaction (`transaction: 'request'`, lock
   * mode), which commits the application's own writes too. @default 'durable'
   */
  durability?: Durability;
  /**
   * Group commit in the app: the saves and creations that queue while the pool is busy
   * with earlier ones go to the database together, as one statement in one transaction
   * (one round trip, one commit; each write still sees the ones before it, and locks its
   * row in session-id order). A write that fails in a batch is retried alone, so one
   * bad write never fails another. Revocations, deletes, lock mode and request
   * transactions never batch. `false` sends every write in its own transaction.
   * @default true
   */
  batchWrites?: boolean;
  cookie?: CookieOptions;
  /** Also accept `Authorization: Bearer <token>` (API and mobile clients). @default false */
  bearer?: boolean;
  /**
   * Refuse state-changing requests that do not carry a CSRF token of their session
   * (`ctx.sessions.csrfToken()`), from a header or a form field: 403
   * `SESSION_CSRF_INVALID`, before the handler, nothing written. Bearer requests are
   * exempt. `true` takes the defaults of {@link CsrfOptions}. @default false
   */
  csrf?: boolean | CsrfOptions;
  /** Who the event log names as actor. @default user id when bound, else 'anonymous' */
  actor?: (ctx: Context, userId: string | null) => string;
  /** Server-side limit per statement in ms (statement_timeout). @default 5_000 */
  statementTimeout?: number;
  /** Wait at most this long for a connection, in ms, before answering 503. @default 5_000 */
  connectTimeout?: number;
  /** Pool size when pg-sessions creates the pool. @default 10 */
  poolSize?: number;
  /** Check at start that the schema's migrations match this version of the code. @default true */
  checkSchema?: boolean;
  /**
   * The per-process cache, kept true by LISTEN/NOTIFY; `false` reads every session
   * from the database. @default enabled with the defaults of {@link CacheOptions}
   */
  cache?: false | CacheOptions;
  /** Touches of unchanged sessions are written together once per interval, ms. @default min(2_000, idleTimeout / 4) */
  touchFlushInterval?: number;
  /** Background garbage collection (one process at a time); `false` leaves it to `pg-sessions gc`. @default enabled */
  gc?: false | GcOptions;
  /** A pino-compatible logger. @default util.debuglog('pg-sessions') (NODE_DEBUG=pg-sessions) */
  logger?: Logger;

  // --- koa-session's option names, with koa-session's meaning ----------------------
  /** koa-session: the cookie's name (`cookie.name`). */
  key?: string;
  /**
   * koa-session: the cookie's lifetime in ms, or 'session'; a number is also the stored
   * session's idle expiry unless `idleTimeout` is given (`cookie.maxAge` + `idleTimeout`).
   */
  maxAge?: number | 'session';
  /** koa-session: `false` is refused (the token would be readable by scripts). @default true */
  httpOnly?: boolean;
  /** koa-session: `cookie.signed`. */
  signed?: boolean;
  /** koa-session: `cookie.secure`. */
  secure?: boolean;
  /** koa-session: `cookie.sameSite`. */
  sameSite?: 'lax' | 'strict' | 'none';
  /**
   * koa-session (and `cookies`): a later Set-Cookie of the session cookie in the same
   * response replaces an earlier one (`ctx.session.save()` and the end of the request
   * may both send it). `false` sends each. @default true
   */
  overwrite?: boolean;
  /** Re-send the cookie (fresh expiry) on every request that reads the session. @default false */
  rolling?: boolean;
  /** Re-send the cookie and save when the session is in the last half of its cookie lifetime. @default false */
  renew?: boolean;
  /** `false`: nothing is written unless the handler calls `ctx.session.manuallyCommit()`. @default true */
  autoCommit?: boolean;
  /** Called on a loaded session; false discards it (a new session starts), `session:invalid`. */
  valid?: (ctx: Context, session: Record<string, unknown>) => boolean;
  /** Called just before a session is written; may change it. */
  beforeSave?: (ctx: Context, session: Record<string, unknown>) => void;
  /**
   * A non-secret label placed before the random token in the cookie value
   * (`<prefix><label>.<token>`); it never replaces nor shortens the 256-bit token.
   */
  genid?: (ctx: Context) => string;
  /** A non-secret prefix of the cookie value (`sess:<token>`), stripped before the token check. */
  prefix?: string;
  /** Carry the session key in something else than the cookie (a header): read with `get`, written with `set`. */
  externalKey?: { get(ctx: Context): string | undefined; set(ctx: Context, value: string): void };
  /** koa-session's cookie-store codec: refused, pg-sessions never stores data in the cookie. */
  encode?: never;
  /** koa-session's cookie-store codec: refused, pg-sessions never stores data in the cookie. */
  decode?: never;
}

export interface ResolvedCookieOptions {
  readonly name: string;
  readonly path: string;
  readonly domain: string | undefined;
  readonly sameSite: 'lax' | 'strict' | 'none';
  readonly secure: boolean | 'auto';
  readonly hostPrefix: boolean;
  readonly maxAge: number | 'session';
  readonly signed: boolean | 'auto';
  /** koa-session's `overwrite`, passed to `ctx.cookies.set`. */
  readonly overwrite: boolean;
}

export interface ResolvedOptions {
  readonly database: NonNullable<SessionOptions['database']>;
  readonly tenant: (ctx: Context) => string;
  readonly idleTimeout: number;
  readonly absoluteTimeout: number;
  readonly touchInterval: number;
  readonly rotateInterval: number | false;
  readonly rotationGrace: number;
  readonly mode: (ctx: Context) => ConcurrencyMode;
  readonly transaction: (ctx: Context) => TransactionMode;
  readonly lockTimeout: number;
  readonly maxSize: number;
  readonly maxSessionsPerUser: number | undefined;
  readonly saveUninitialized: boolean;
  readonly durability: Durability;
  readonly batchWrites: boolean;
  readonly cookie: ResolvedCookieOptions;
  readonly bearer: boolean;
  readonly csrf: false | ResolvedCsrfOptions;
  readonly actor: (ctx: Context, userId: string | null) => string;
  readonly statementTimeout: number;
  readonly connectTimeout: number;
  readonly poolSize: number;
  readonly checkSchema: boolean;
  readonly cache:
    | false
    | Readonly<Required<Omit<CacheOptions, 'listenUrl'>> & { listenUrl: string | undefined }>;
  readonly touchFlushInterval: number;
  readonly gc: false | Readonly<Required<GcOptions>>;
  readonly logger: Logger;
  /** koa-session's switches and hooks. */
  readonly koa: ResolvedKoaOptions;
  /**
   * The per-request choices given as values rather than functions (or left to their
   * defaults): the request path uses them without a call.
   */
  readonly fixed: {
    readonly tenant?: string;
    readonly mode?: ConcurrencyMode;
    readonly transaction?: TransactionMode;
  };
}

export interface ResolvedCsrfOptions {
  /** Upper-case method names. */
  readonly methods: ReadonlySet<string>;
  readonly header: string;
  readonly field: string;
  readonly formLimit: number;
  readonly ignore: ((ctx: Context) => boolean) | undefined;
}

/** koa-session's hooks and switches, as resolved. */
export interface ResolvedKoaOptions {
  readonly rolling: boolean;
  readonly renew: boolean;
  readonly autoCommit: boolean;
  readonly valid: ((ctx: Context, session: Record<string, unknown>) => boolean) | undefined;
  readonly beforeSave: ((ctx: Context, session: Record<string, unknown>) => void) | undefined;
  readonly genid: ((ctx: Context) => string) | undefined;
  readonly prefix: string;
  readonly externalKey: SessionOptions['externalKey'];
}
