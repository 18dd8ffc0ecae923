import type { Context, Middleware, Next } from 'koa';
import { Kysely, PostgresDialect, sql, type Transaction } from 'kysely';
import pg from 'pg';
import { SessionControl } from './control.js';
import { clearCookie, readToken, writeCookie } from './cookie.js';
import { isSessionDatabase, type SessionDatabase, SinglePoolDatabase } from './db/router.js';
import { PoolRunner, TransactionRunner } from './db/runner.js';
import type { SessionsDatabase } from './db/schema.js';
import { checkSchema } from './db/schema-guard.js';
import { isUnavailableError, SqlState, sqlStateOf } from './db/sqlstate.js';
import {
  SessionConflictError,
  SessionError,
  SessionLockTimeoutError,
  SessionStoreUnavailableError,
  SessionTooLargeError,
} from './errors.js';
import { SessionMetrics } from './metrics.js';
import { type ResolvedOptions, resolveOptions, type SessionOptions } from './options.js';
import { RequestState } from './request-state.js';
import { collectChanges, isForcedSave, markSaved, replaceData, type Session } from './session.js';
import { SessionStore } from './store.js';
import { generateToken, hashToken } from './token.js';

const STATE = Symbol('pg-sessions.state');

declare module 'koa' {
  interface ExtendableContext {
    /** The session data, koa-session compatible; `ctx.session = null` destroys it. */
    get session(): Session | null;
    set session(value: Record<string, unknown> | null);
    /** Session operations beyond koa-session: id, regenerate, bindUser, revoke… */
    sessions: SessionControl;
    /** The request's transaction in `transaction: 'request'` (or lock) mode. */
    db?: Transaction<SessionsDatabase>;
    [STATE]?: RequestState;
  }
}

/** The Koa middleware, with its lifecycle and counters. */
export interface SessionMiddleware extends Middleware {
  /** Connects and checks the schema; called by the first request if you do not. Idempotent. */
  start(): Promise<void>;
  /** Closes the pools pg-sessions created. Idempotent. */
  close(): Promise<void>;
  readonly metrics: SessionMetrics;
  readonly options: ResolvedOptions;
}

/**
 * Sessions stored in PostgreSQL, with koa-session's `ctx.session` and more.
 *
 * @example
 * const app = new Koa();
 * app.keys = ['a long random secret'];
 * const middleware = sessions({ database: process.env.DATABASE_URL });
 * app.use(middleware);
 * app.use((ctx) => { ctx.session!.views = Number(ctx.session!.views ?? 0) + 1; });
 */
export function sessions(options: SessionOptions = {}): SessionMiddleware {
  const resolved = resolveOptions(options);
  const metrics = new SessionMetrics();
  const store = new SessionStore({
    idleTimeoutMs: resolved.idleTimeout,
    absoluteTimeoutMs: resolved.absoluteTimeout,
    touchIntervalMs: resolved.touchInterval,
  });
  const database = openDatabase(resolved);
  const kysely = new Kysely<SessionsDatabase>({
    dialect: new PostgresDialect({ pool: () => Promise.resolve(database.writer()) }),
  });
  let starting: Promise<void> | undefined;
  let closing: Promise<void> | undefined;

  const start = (): Promise<void> => {
    starting ??= (async () => {
      if (resolved.checkSchema) await checkSchema(database.writer());
    })().catch((error: unknown) => {
      starting = undefined;
      throw error;
    });
    return starting;
  };

  const close = (): Promise<void> => {
    // Kysely shares the database's pool: closing the database closes everything.
    closing ??= database.close();
    return closing;
  };

  const middleware = async (ctx: Context, next: Next): Promise<void> => {
    installAccessors(ctx);
    await start();
    const tenantId = validTenant(resolved.tenant(ctx));
    const mode = resolved.mode(ctx);
    const presented = readToken(ctx, resolved.cookie, resolved.bearer);
    if (presented.invalid) {
      metrics.increment('invalidTokens');
      ctx.app.emit('session:invalid', { ctx, via: presented.via });
    }
    const poolRunner = (state: RequestState) =>
      new PoolRunner(
        () => database.reader(state.fence),
        () => database.writer(),
        { tenant: tenantId, actor: resolved.actor(ctx, state.userId) },
        metrics,
      );
    const state: RequestState = new RequestState(ctx, tenantId, mode, presented, {
      read: (query) => poolRunner(state).read(query),
      write: (query) => poolRunner(state).write(query),
    });
    ctx[STATE] = state;
    ctx.sessions = new SessionControl(state, store, { onMaxSessions: resolved.maxSessionsPerUser });

    if (resolved.transaction(ctx) === 'request' || mode === 'lock') {
      await inRequestTransaction(state, next);
    } else {
      await guard(() => load(state));
      await next();
      await guard(() => commit(state));
    }
  };

  async function inRequestTransaction(state: RequestState, next: Next): Promise<void> {
    const ctx = state.ctx;
    let began = false;
    try {
      await kysely.transaction().execute(async (trx) => {
        began = true;
        metrics.roundTrip();
        await sql`SELECT set_config('sessions.tenant', ${state.tenantId}, true),
          set_config('sessions.actor', ${resolved.actor(ctx, state.userId)}, true),
          set_config('lock_timeout', ${`${resolved.lockTimeout}ms`}, true)`.execute(trx);
        state.runner = new TransactionRunner(trx, metrics);
        await guard(() => load(state, state.mode === 'lock'));
        ctx.db = trx;
        try {
          await next();
        } finally {
          ctx.db = undefined;
        }
        const actor = resolved.actor(ctx, state.userId);
        await guard(async () => {
          await sql`SELECT set_config('sessions.actor', ${actor}, true)`.execute(trx);
          await commit(state);
        });
      });
    } catch (error) {
      // Errors of BEGIN/COMMIT themselves; the handler's own errors pass through untouched.
      if (!began || (!(error instanceof SessionError) && isUnavailableError(error))) {
        throw translate(error);
      }
      throw error;
    }
  }

  async function load(state: RequestState, forUpdate = false): Promise<void> {
    const token = state.presented.token;
    if (!token) return;
    metrics.increment('loads');
    const record = await store.load(state.runner, state.tenantId, hashToken(token), { forUpdate });
    if (record) {
      state.record = record;
      state.token = token;
    } else {
      metrics.increment('misses');
      state.ctx.app.emit('session:missed', { ctx: state.ctx, via: state.presented.via });
    }
  }

  async function commit(state: RequestState): Promise<void> {
    const { ctx } = state;
    const cookieTransport = state.presented.via !== 'bearer';
    const staleCookie = state.presented.via === 'cookie' && !state.record;
    if (state.revokedSelf) {
      if (cookieTransport) clearCookie(ctx, resolved.cookie);
      return;
    }
    if (state.destroyed && state.record) {
      await store.destroy(state.runner, state.tenantId, state.record.id);
      metrics.increment('destroys');
      state.record = undefined;
      if (!state.session && cookieTransport) clearCookie(ctx, resolved.cookie);
    }
    const session = state.session;
    if (!session) {
      if (state.record?.touchDue) await touch(state);
      if (staleCookie && !state.destroyed) clearCookie(ctx, resolved.cookie);
      if (state.destroyed && state.presented.token && cookieTransport)
        clearCookie(ctx, resolved.cookie);
      return;
    }
    const changes = collectChanges(session);
    if (changes.size > resolved.maxSize)
      throw new SessionTooLargeError(changes.size, resolved.maxSize);
    const dataChanged = Object.keys(changes.patch).length > 0 || changes.removed.length > 0;
    const changed =
      dataChanged || isForcedSave(session) || state.rotate || state.pendingUserId !== undefined;

    if (!state.record) {
      if (!changed && !resolved.saveUninitialized) {
        if (staleCookie) clearCookie(ctx, resolved.cookie);
        return;
      }
      state.token ??= generateToken();
      const { record, fence } = await store.create(state.runner, {
        tenantId: state.tenantId,
        tokenHash: hashToken(state.token),
        data: session.toJSON(),
        userId: state.pendingUserId ?? null,
        ip: ctx.ip || null,
        userAgent: ctx.get('user-agent').slice(0, 1024) || null,
      });
      metrics.increment('creates');
      state.record = record;
      state.destroyed = false;
      state.fence = fence;
      markSaved(session);
      if (cookieTransport) writeCookie(ctx, resolved.cookie, state.token, session.maxAge);
      await enforceMaxSessions(state);
      return;
    }

    if (!changed) {
      if (state.record.touchDue) await touch(state);
      return;
    }
    const record = state.record;
    const { record: saved, fence } = await store.saveDelta(state.runner, {
      tenantId: state.tenantId,
      id: record.id,
      tokenHash: record.tokenHash,
      patch: changes.patch,
      removed: changes.removed,
      newTokenHash: state.rotate && state.token ? hashToken(state.token) : undefined,
      userId: state.pendingUserId,
      expected: state.mode === 'strict' ? changes.expected : undefined,
    });
    if (!saved) {
      if (
        state.mode === 'strict' &&
        (await store.isLive(state.runner, state.tenantId, record.id, record.tokenHash))
      ) {
        metrics.increment('conflicts');
        ctx.app.emit('session:conflict', {
          ctx,
          id: record.id,
          keys: [...changes.expected.keys()],
        });
        throw new SessionConflictError([...changes.expected.keys()]);
      }
      // Destroyed, revoked or expired while this request ran: it stays that way.
      state.record = undefined;
      ctx.app.emit('session:missed', { ctx, via: state.presented.via });
      if (cookieTransport) clearCookie(ctx, resolved.cookie);
      return;
    }
    metrics.increment('saves');
    state.record = saved;
    state.fence = fence;
    markSaved(session);
    if (
      cookieTransport &&
      (state.rotate || isForcedSave(session) || session.maxAge !== undefined)
    ) {
      writeCookie(ctx, resolved.cookie, state.token!, session.maxAge);
    }
    state.rotate = false;
    if (state.pendingUserId) await enforceMaxSessions(state);
  }

  async function touch(state: RequestState): Promise<void> {
    if (!state.record) return;
    metrics.increment('touches');
    await store.touch(state.runner, state.tenantId, state.record.id, state.record.tokenHash);
  }

  async function enforceMaxSessions(state: RequestState): Promise<void> {
    const max = resolved.maxSessionsPerUser;
    const userId = state.record?.userId;
    if (max === undefined || !userId || !state.record) return;
    await store.enforceMaxSessions(state.runner, state.tenantId, userId, max, state.record.id);
  }

  async function guard<T>(work: () => Promise<T>): Promise<T> {
    try {
      return await work();
    } catch (error) {
      const translated = translate(error);
      if (translated instanceof SessionStoreUnavailableError) metrics.increment('unavailable');
      throw translated;
    }
  }

  return Object.assign(middleware, { start, close, metrics, options: resolved });
}

/** Database errors become typed session errors; ours and the handler's pass through. */
function translate(error: unknown): unknown {
  if (error instanceof SessionError) return error;
  if (sqlStateOf(error) === SqlState.lockNotAvailable)
    return new SessionLockTimeoutError({ cause: error });
  if (isUnavailableError(error)) {
    return new SessionStoreUnavailableError('the session database is unavailable; retry shortly', {
      cause: error,
    });
  }
  return error;
}

function validTenant(tenant: unknown): string {
  if (typeof tenant !== 'string' || tenant.length === 0 || tenant.length > 200) {
    throw new SessionError(
      'the tenant of this request is not a non-empty string of at most 200 characters',
      'SESSION_TENANT_INVALID',
      400,
      true,
    );
  }
  return tenant;
}

function openDatabase(options: ResolvedOptions): SessionDatabase {
  const { database } = options;
  if (isSessionDatabase(database)) return database;
  if (database instanceof pg.Pool) return SinglePoolDatabase.wrap(database);
  const base: pg.PoolConfig =
    typeof database === 'string' ? { connectionString: database } : database;
  return SinglePoolDatabase.create({
    max: options.poolSize,
    connectionTimeoutMillis: options.connectTimeout,
    statement_timeout: options.statementTimeout,
    // Give up on a query the server never answers (a dead host) a little after the server would.
    query_timeout: options.statementTimeout + options.connectTimeout,
    ...base,
  });
}

/** ctx.session is an accessor on the app's context prototype, installed once per app. */
const installed = new WeakSet<object>();
function installAccessors(ctx: Context): void {
  const proto = Object.getPrototypeOf(ctx) as object;
  if (installed.has(proto)) return;
  installed.add(proto);
  Object.defineProperty(proto, 'session', {
    configurable: true,
    get(this: Context) {
      const state = this[STATE];
      return state ? state.currentSession() : undefined;
    },
    set(this: Context, value: unknown) {
      const state = this[STATE];
      if (!state) throw new TypeError('ctx.session is set before the pg-sessions middleware ran');
      if (value === null || value === undefined) {
        this.sessions.destroy();
        return;
      }
      if (typeof value !== 'object' || Array.isArray(value)) {
        throw new TypeError('ctx.session can only be set to an object or null');
      }
      const data = { ...(value as Record<string, unknown>) };
      if (state.destroyed || !state.record) {
        state.startNewSession(data);
      } else {
        replaceData(state.currentSession()!, data);
      }
    },
  });
}
