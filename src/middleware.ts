import { EventEmitter } from 'node:events';
import type Koa from 'koa';
import type { Context, Middleware, Next } from 'koa';
import type { Transaction } from 'kysely';
import pg from 'pg';
import { emitLifecycle } from './cache/lifecycle.js';
import type { SessionNotification } from './cache/notification.js';
import { propagatedSettings, settingsStatement } from './db/runner.js';
import type { RequestDatabase } from './db/schema.js';
import { isUnavailableError } from './db/sqlstate.js';
import { SessionEngine } from './engine.js';
import { SessionError, SessionOptionsError, toSessionError } from './errors.js';
import type { GcRunResult } from './jobs/garbage-collector.js';
import type { SessionMetrics } from './metrics.js';
import { checkAppKeys, resolveOptions } from './options/resolve.js';
import type { ResolvedOptions, SessionOptions } from './options/types.js';
import { withdrawEndedKey } from './request/commit.js';
import { SessionControl } from './request/control.js';
import {
  type CsrfPresented,
  checkCsrfKeys,
  needsCsrfCheck,
  readCsrfToken,
  refuseForgery,
} from './request/csrf.js';
import { guard } from './request/guard.js';
import { loadSession, revokeStolenAfterTransaction } from './request/load.js';
import { RequestSession } from './request/request-session.js';
import { emitDeferred } from './request/services.js';
import { isStorableText } from './serialize.js';
import { Session } from './session.js';
import { hashToken } from './token.js';

const CONTEXT_SESSION = Symbol('pg-sessions.request-session');
/** ctx.session read before the middleware ran: a placeholder the middleware replaces. */
const EARLY_SESSION = Symbol('pg-sessions.early-session');

declare module 'koa' {
  interface ExtendableContext {
    /** The session data, koa-session compatible; `ctx.session = null` destroys it. */
    get session(): Session | null;
    set session(value: Record<string, unknown> | null);
    /** Session operations beyond koa-session: id, regenerate, bindUser, revoke… */
    sessions: SessionControl;
    /**
     * The request's transaction in `transaction: 'request'` (or lock) mode, typed with
     * {@link RequestDatabase}: extend that interface with the application's tables.
     */
    db?: Transaction<RequestDatabase>;
    [CONTEXT_SESSION]?: RequestSession;
    [EARLY_SESSION]?: Session;
  }
}

/** The Koa middleware, with its lifecycle and counters. */
export interface SessionMiddleware extends Middleware {
  /** Connects, checks the schema, starts the listener and jobs; the first request calls it. Idempotent. */
  start(): Promise<void>;
  /** Flushes pending touches, stops the listener and jobs, closes the pools pg-sessions created. Idempotent. */
  close(): Promise<void>;
  /** Runs garbage collection now (unless another process holds the lock). */
  collectGarbage(): Promise<GcRunResult | undefined>;
  /** Writes pending touches now. */
  flushTouches(): Promise<void>;
  readonly metrics: SessionMetrics;
  readonly options: ResolvedOptions;
  /** Emits 'cache:listener:up', 'cache:listener:down' and 'cache:notification'. */
  readonly events: EventEmitter;
  /** Backend pid of this process's LISTEN connection, while it is up. */
  readonly listenerPid: number | undefined;
}

/**
 * Sessions stored in PostgreSQL, with koa-session's `ctx.session` and more.
 *
 * @example
 * const app = new Koa();
 * app.keys = ['a long random secret'];
 * app.use(sessions({ database: process.env.DATABASE_URL }));
 * app.use((ctx) => { ctx.session!.views = Number(ctx.session!.views ?? 0) + 1; });
 *
 * Given the app as well (`sessions(options, app)` or `sessions(app, options)`, the two
 * forms koa-session accepts), `app.keys` is checked at once rather than at start.
 */
export function sessions(app: Koa, options?: SessionOptions): SessionMiddleware;
export function sessions(options?: SessionOptions, app?: Koa): SessionMiddleware;
export function sessions(
  first?: SessionOptions | Koa,
  second?: SessionOptions | Koa,
): SessionMiddleware {
  const [options, app] = isApp(first)
    ? [second as SessionOptions | undefined, first]
    : [first, second as Koa | undefined];
  if (app !== undefined && !isApp(app)) {
    throw new SessionOptionsError('app', 'the second argument must be the Koa application');
  }
  const resolved = resolveOptions(options ?? {});
  if (app) {
    checkAppKeys(app.keys, resolved.cookie);
    if (resolved.csrf) checkCsrfKeys(app.keys);
    // As koa-session: ctx.session exists from the start, even before this middleware.
    installAccessors(app.context);
  }
  const engine = new SessionEngine(resolved);
  const { metrics } = engine;
  const events = new EventEmitter();
  engine.listener?.on('up', () => events.emit('cache:listener:up'));
  engine.listener?.on('down', (error) => events.emit('cache:listener:down', error));
  engine.listener?.on('notification', (message: SessionNotification) => {
    events.emit('cache:notification', message);
    emitLifecycle(events, message, resolved.logger);
  });

  /** The app.keys last found usable: checked again only when the app replaces them. */
  let checkedKeys: unknown;
  const middleware = (ctx: Context, next: Next): Promise<void> => {
    const proto = Object.getPrototypeOf(ctx) as object;
    if (!installed.has(proto)) installAccessors(proto);
    if (ctx.app.keys !== checkedKeys) {
      checkAppKeys(ctx.app.keys, resolved.cookie);
      if (resolved.csrf) checkCsrfKeys(ctx.app.keys);
      checkedKeys = ctx.app.keys;
    }
    return serve(engine, ctx, next);
  };

  const api = Object.assign(middleware, {
    start: () => {
      try {
        if (app) checkAppKeys(app.keys, resolved.cookie);
        if (app && resolved.csrf) checkCsrfKeys(app.keys);
      } catch (error) {
        return Promise.reject(error);
      }
      return engine.start();
    },
    close: () => engine.close(),
    collectGarbage: async () => engine.gc?.runOnce(),
    flushTouches: () => engine.touches.flush(),
    metrics,
    options: resolved,
    events,
  });
  return Object.defineProperty(api, 'listenerPid', {
    get: () => (engine.listener?.healthy ? engine.listener.backendPid : undefined),
    enumerable: true,
  }) as SessionMiddleware;
}

/** One request: its session loaded, the handler run, the session committed. */
async function serve(engine: SessionEngine, ctx: Context, next: Next): Promise<void> {
  const { services, metrics } = engine;
  const { options } = services;
  // Once started, no await: a cached read never leaves the microtask it came in on.
  if (!engine.started) await guard(metrics, engine.start());
  metrics.increment('requests');
  const { fixed } = options;
  const tenantId = fixed.tenant ?? validTenant(options.tenant(ctx));
  const mode = fixed.mode ?? options.mode(ctx);
  const presented = services.transport.read(ctx);
  if (presented.invalid) {
    metrics.increment('invalidTokens');
    // Malformed: nothing to look up (koa-session: missed). A bad signature: invalid.
    const event = presented.raw !== undefined ? 'session:missed' : 'session:invalid';
    emitDeferred(ctx.app, options.logger, event, {
      key: presented.raw === undefined ? undefined : eventKey(presented.raw),
      value: undefined,
      ctx,
      via: presented.via,
    });
  }
  const request = new RequestSession(services, ctx, tenantId, mode, presented);
  ctx[CONTEXT_SESSION] = request;
  ctx[EARLY_SESSION] = undefined;
  ctx.sessions = new SessionControl(request);
  // A guarded method's CSRF token is read before the load and checked after it.
  const csrf = needsCsrfCheck(request) ? await readCsrfToken(request) : undefined;
  // Lock mode locks the presented token's session: without one there is nothing to
  // lock, and the request stays off the database like in every other mode.
  const transaction = fixed.transaction ?? options.transaction(ctx);
  if (transaction === 'request' || (mode === 'lock' && presented.token)) {
    await inRequestTransaction(engine, request, next, csrf);
  } else {
    await guard(metrics, loadSession(request));
    if (csrf) refuseForgery(request, csrf);
    await runThenCommit(request, next);
  }
  withdrawEndedKey(request);
}

/**
 * As koa-session, the commit runs in a `finally`: a handler that throws after changing
 * the session, caught by an upstream middleware, still saves. When the commit itself
 * fails after the handler threw, the handler's error is the one that propagates.
 */
async function runThenCommit(request: RequestSession, next: Next): Promise<void> {
  const { autoCommit } = request.services.options.koa;
  try {
    await next();
  } catch (error) {
    if (autoCommit) {
      try {
        await request.commit();
      } catch (commitError) {
        request.services.logger.error({ err: commitError }, 'the session could not be saved');
      }
    }
    throw error;
  }
  if (autoCommit) await request.commit();
}

/**
 * `transaction: 'request'` and lock mode: one transaction on the primary around the
 * load, the handler (with `ctx.db`) and the commit. A handler that throws rolls the
 * whole transaction back, session included.
 */
async function inRequestTransaction(
  engine: SessionEngine,
  request: RequestSession,
  next: Next,
  csrf: CsrfPresented | undefined,
): Promise<void> {
  const { ctx, services } = request;
  const { metrics, options } = services;
  let began = false;
  const locking = request.mode === 'lock';
  try {
    await engine.kysely.transaction().execute(async (trx) => {
      began = true;
      const runner = request.useTransaction(trx, requestSettings(request, locking));
      // The settings (and BEGIN) travel with the load: one round trip for both.
      await guard(metrics, loadSession(request, locking));
      await guard(metrics, runner.settle());
      if (locking && services.topology.citus) {
        // lock_session put statement_timeout back on the worker it ran on; the handler's
        // own statements run on the coordinator (and wherever Citus sends them).
        await guard(metrics, runner.setLocal('statement_timeout', `${options.statementTimeout}ms`));
      }
      if (csrf) refuseForgery(request, csrf);
      // The application's tables are its own declaration (RequestDatabase); at run time
      // a Kysely transaction reaches any table the role may use.
      ctx.db = trx as unknown as Transaction<RequestDatabase>;
      try {
        await next();
      } finally {
        ctx.db = undefined;
      }
      if (!options.koa.autoCommit) return;
      await request.commit();
      // COMMIT and the deferred notifications, in one message (RequestTransactionDriver).
      metrics.roundTrip();
    });
  } catch (error) {
    // BEGIN or COMMIT failing; the handler's own errors pass through untouched.
    if (!began || (!(error instanceof SessionError) && isUnavailableError(error))) {
      throw toSessionError(error);
    }
    throw error;
  } finally {
    await revokeStolenAfterTransaction(request).catch((error: unknown) => {
      services.logger.error({ err: error }, 'pg-sessions could not revoke a stolen session');
    });
  }
}

/**
 * The request transaction's settings: tenant (row-level security), actor, lock_timeout.
 * In lock mode the lock wait may last lockTimeout and then run: the statement that
 * waits gets a statement_timeout of lockTimeout + statementTimeout, so lock_timeout
 * (55P03, SESSION_LOCK_TIMEOUT) always fires first; the load puts the saved value
 * back once it holds the lock. Literals, no bind parameters: they travel with BEGIN
 * and the load as one simple-protocol message.
 */
function requestSettings(request: RequestSession, locking: boolean): string {
  const { lockTimeout, statementTimeout } = request.services.options;
  if (request.services.topology.citus) {
    // The same settings as SET LOCALs, which Citus sends on to the workers. The saved
    // statement_timeout is the connection's, which the pool sets to statementTimeout.
    return propagatedSettings(request.tenantId, request.actor(), {
      lock_timeout: `${lockTimeout}ms`,
      ...(locking && {
        'sessions.statement_timeout': `${statementTimeout}ms`,
        statement_timeout: `${lockTimeout + statementTimeout}ms`,
      }),
    });
  }
  const literal = (value: string) => pg.escapeLiteral(value);
  // One statement: its targets are evaluated in order, so the saved statement_timeout
  // is the one before the lock wait's; the new one applies from the next statement on.
  const lockWait = locking
    ? `, set_config('sessions.statement_timeout', current_setting('statement_timeout'), true), set_config('statement_timeout', ${literal(`${lockTimeout + statementTimeout}ms`)}, true)`
    : '';
  return `${settingsStatement(request.tenantId, request.actor())}, set_config('lock_timeout', ${literal(`${lockTimeout}ms`)}, true)${lockWait}`;
}

/**
 * The `key` of an event about a malformed value: the value itself, unless it could
 * hide one of our tokens (a cookie from before a `prefix` change): then its SHA-256.
 */
function eventKey(raw: string): string {
  return /[A-Za-z0-9_-]{43}/.test(raw) ? hashToken(raw).toString('hex') : raw;
}

/** A Koa application, told from an options object the way koa-session does. */
function isApp(value: unknown): value is Koa {
  return typeof (value as { use?: unknown } | undefined)?.use === 'function';
}

function validTenant(tenant: unknown): string {
  if (
    typeof tenant !== 'string' ||
    tenant.length === 0 ||
    tenant.length > 200 ||
    !isStorableText(tenant)
  ) {
    throw new SessionError(
      'the tenant of this request is not a non-empty string of at most 200 characters (no NUL, no unpaired surrogate)',
      'SESSION_TENANT_INVALID',
      400,
      true,
    );
  }
  return tenant;
}

/**
 * ctx.session is an accessor on the app's context (koa-session's place for it),
 * installed at construction when `sessions()` is given the app, else at the first
 * request. A `session` the context already has of its own (a test's mock) is kept.
 */
const installed = new WeakSet<object>();
function installAccessors(proto: object): void {
  if (installed.has(proto)) return;
  installed.add(proto);
  if (Object.hasOwn(proto, 'session')) return;
  // The accessor only delegates: the request's RequestSession owns the state.
  Object.defineProperty(proto, 'session', {
    configurable: true,
    get(this: Context) {
      const context = this[CONTEXT_SESSION];
      if (context) return context.get();
      // Before the middleware: an empty session, replaced by the loaded one (as a
      // koa-session store does).
      this[EARLY_SESSION] ??= new Session(new Map(), true);
      return this[EARLY_SESSION];
    },
    set(this: Context, value: unknown) {
      const context = this[CONTEXT_SESSION];
      if (context) {
        context.set(value);
        return;
      }
      const data = value && typeof value === 'object' ? (value as Record<string, unknown>) : {};
      this[EARLY_SESSION] = new Session(new Map(), true, data);
    },
  });
}
