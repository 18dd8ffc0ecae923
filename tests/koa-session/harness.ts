import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { ExecutionContext } from 'ava';
import Koa from 'koa';
import { type SessionMiddleware, type SessionOptions, sessions } from '../../src/index.js';

/**
 * The options koa-session 7's own tests pass to `session(opts, app)`. The port states
 * them the way a koa-session user writes them; {@link translate} says what each one
 * means for pg-sessions.
 */
export interface KoaSessionOptions {
  key?: string;
  maxAge?: number | 'session';
  signed?: boolean;
  sameSite?: 'lax' | 'strict' | 'none';
  rolling?: boolean;
  renew?: boolean;
  prefix?: string;
  autoCommit?: boolean;
  valid?: (ctx: Koa.Context, session: Record<string, unknown>) => boolean;
  beforeSave?: (ctx: Koa.Context, session: Record<string, unknown>) => void;
  genid?: (ctx: Koa.Context) => string;
  externalKey?: {
    get(ctx: Koa.Context): string | undefined;
    set(ctx: Koa.Context, value: string): void;
  };
}

/** koa-session's default cookie name; its tests' assertions name it (`/koa\.sess/`). */
export const KOA_SESSION_KEY = 'koa.sess';

/**
 * koa-session's options as a koa-session user passes them: `sessions()` accepts
 * koa-session's names with their meaning (README, "Switching from koa-session"), so
 * the port only adds the database, names koa-session's default cookie (`koa.sess`, which
 * the assertions name) and turns background garbage collection off (each test builds
 * its own middleware and none of them is about collection).
 */
export function translate(databaseUrl: string, options: KoaSessionOptions = {}): SessionOptions {
  return { ...options, key: options.key ?? KOA_SESSION_KEY, database: databaseUrl, gc: false };
}

/** Builds the session middleware of one test; it is closed when the test ends. */
export function sessionFor(
  t: ExecutionContext,
  databaseUrl: string,
  options?: KoaSessionOptions,
  app?: Koa,
): SessionMiddleware {
  // koa-session's tests pass the app (`session(opts, app)`), which defines ctx.session
  // on app.context at once.
  const middleware = sessions(translate(databaseUrl, options), app);
  t.teardown(() => middleware.close());
  return middleware;
}

/** koa-session's tests' `App()`: keys `['a', 'b']`, then the session middleware. */
export function koaApp(t: ExecutionContext, databaseUrl: string, options?: KoaSessionOptions): Koa {
  const app = bareApp(t);
  app.keys = ['a', 'b'];
  app.use(sessionFor(t, databaseUrl, options, app));
  return app;
}

/**
 * A Koa app whose unhandled errors answer Koa's own 500 (as in koa-session's tests)
 * and are logged into the test, so a failing status says why.
 */
export function bareApp(t: ExecutionContext): Koa {
  const app = new Koa();
  app.silent = true;
  app.on('error', (error: Error) => {
    try {
      t.log(`app error: ${error.stack ?? error.message}`);
    } catch {
      // the test has already ended
    }
  });
  return app;
}

/** A response as koa-session's tests look at it through supertest. */
export interface Reply {
  readonly status: number;
  readonly text: string;
  /** The parsed body of a JSON response (supertest's `res.body`), else undefined. */
  readonly body: unknown;
  /** Every Set-Cookie line, or undefined when there is none (`res.header['set-cookie']`). */
  readonly setCookie: string[] | undefined;
  readonly headers: Headers;
}

/** An HTTP client for one listening app; headers are sent as given, nothing is kept. */
export interface Client {
  readonly url: string;
  get(path: string, headers?: Record<string, string>): Promise<Reply>;
  post(path: string, headers?: Record<string, string>): Promise<Reply>;
}

/** Listens on a free loopback port; the server is closed when the test ends. */
export async function listen(t: ExecutionContext, app: Koa): Promise<Client> {
  const server: Server = await new Promise((resolve) => {
    const listening = app.listen(0, '127.0.0.1', () => resolve(listening));
  });
  t.teardown(async () => {
    server.closeAllConnections();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  });
  const { port } = server.address() as AddressInfo;
  const url = `http://127.0.0.1:${port}`;
  const send = async (
    method: string,
    path: string,
    headers: Record<string, string> = {},
  ): Promise<Reply> => {
    const response = await fetch(`${url}${path}`, { method, headers, redirect: 'manual' });
    const text = await response.text();
    const lines = response.headers.getSetCookie();
    const isJson = /json/i.test(response.headers.get('content-type') ?? '');
    return {
      status: response.status,
      text,
      body: isJson && text ? (JSON.parse(text) as unknown) : undefined,
      setCookie: lines.length > 0 ? lines : undefined,
      headers: response.headers,
    };
  };
  return {
    url,
    get: (path, headers) => send('GET', path, headers),
    post: (path, headers) => send('POST', path, headers),
  };
}

/**
 * supertest's `.expect('Set-Cookie', pattern)`: the header must be there, and the
 * pattern is tested against its lines joined with commas.
 */
export function expectSetCookie(t: ExecutionContext, reply: Reply, pattern: RegExp): void {
  t.not(reply.setCookie, undefined, 'expected "Set-Cookie" header field');
  t.regex(reply.setCookie!.join(','), pattern);
}

/** The Cookie header koa-session's tests send back: the Set-Cookie lines joined with ';'. */
export function cookieHeader(reply: Reply): string {
  if (!reply.setCookie) throw new Error('the response had no Set-Cookie header to send back');
  return reply.setCookie.join(';');
}

/** What koa-session's `ctx.session` offers and pg-sessions' `Session` type may not declare. */
export interface KoaSessionApi {
  [key: string]: unknown;
  readonly isNew: boolean;
  readonly length: number;
  readonly populated: boolean;
  maxAge: number | 'session' | undefined;
  readonly externalKey: string | undefined;
  save(): void;
  regenerate(): Promise<void>;
  manuallyCommit(): Promise<void>;
  [inspectSymbol]: () => unknown;
}

const inspectSymbol = Symbol.for('nodejs.util.inspect.custom');
/** `util.inspect.custom`, through which koa-session's tests call `.inspect()`. */
export const inspect: typeof inspectSymbol = inspectSymbol;

/** `ctx.session` as a koa-session user's code sees it. */
export function koaSession(ctx: Koa.Context): KoaSessionApi {
  return ctx.session as unknown as KoaSessionApi;
}

/** Assigns `ctx.session` any value, as koa-session's untyped tests do. */
export function assignSession(ctx: Koa.Context, value: unknown): void {
  (ctx as unknown as { session: unknown }).session = value;
}
