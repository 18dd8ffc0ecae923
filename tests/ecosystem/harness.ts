// The ecosystem tests' apps: the same Koa app on pg-sessions (its defaults, cache on) or
// on koa-session 7, so a client library's flows can be run against both over real HTTP.
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import Koa from 'koa';
import Router from 'koa-router';
import { createSession } from 'koa-session';
import { type SessionMiddleware, sessions } from '../../src/index.js';
import { Browser } from '../helpers/http.js';

/**
 * Where the sessions live: pg-sessions with `sessions({ database })`, koa-session 7 with
 * its default cookie store (the whole session in the signed cookie), or koa-session 7
 * with an external store (an in-memory map standing in for Redis).
 */
export type Backend = 'pg-sessions' | 'koa-session cookie store' | 'koa-session memory store';

export const BACKENDS: readonly Backend[] = [
  'pg-sessions',
  'koa-session cookie store',
  'koa-session memory store',
];

/** The session cookie's name on every backend (pg-sessions' default). */
export const COOKIE = 'sid';

/** How long a request may take before the test fails naming it (a callback never called hangs). */
export const REQUEST_TIMEOUT_MS = 3_000;

/** One app process ("node"): its URL and how to stop it. */
export interface AppNode {
  readonly url: string;
  readonly backend: Backend;
  /** A client of this node that keeps cookies, sees redirects as they are and never waits forever. */
  browser(): Browser;
  close(): Promise<void>;
}

/** What the nodes of one backend share: the database, or koa-session's store. */
export interface Storage {
  readonly backend: Backend;
  /** pg-sessions' database URL. */
  readonly database?: string;
  /** koa-session's external store, shared by the nodes as Redis would be. */
  readonly entries: Map<string, string>;
}

export function storageFor(backend: Backend, database: string): Storage {
  return { backend, database, entries: new Map() };
}

/**
 * Starts one node: error handler, the backend's session middleware, a JSON body parser,
 * then what `setup` adds (given the node's URL, which OAuth redirect URIs need), then the
 * router's routes. The port is bound first, so `setup` knows it.
 */
export async function startNode(
  storage: Storage,
  setup: (app: Koa, router: Router, url: string) => void,
): Promise<AppNode> {
  const server: Server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  const url = `http://127.0.0.1:${port}`;

  const app = new Koa();
  app.keys = ['ecosystem key one', 'ecosystem key two'];
  app.silent = true;
  app.use(async (ctx, next) => {
    try {
      await next();
    } catch (error) {
      const failure = error as { status?: number; message?: string; expose?: boolean };
      ctx.status = failure.status ?? 500;
      ctx.body = { error: failure.expose ? failure.message : 'INTERNAL' };
    }
  });
  let middleware: SessionMiddleware | undefined;
  if (storage.backend === 'pg-sessions') {
    middleware = sessions({ database: storage.database });
    app.use(middleware);
  } else {
    app.use(createSession({ key: COOKIE, store: externalStore(storage) }, app));
  }
  app.use(jsonBody);
  const router = new Router();
  setup(app, router, url);
  app.use(router.routes());
  server.on('request', app.callback());

  return {
    url,
    backend: storage.backend,
    browser: () => new Browser(url, { redirect: 'manual', timeoutMs: REQUEST_TIMEOUT_MS }),
    close: async () => {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
      await middleware?.close();
    },
  };
}

/** koa-session's external store over the shared map (JSON in and out, as Redis keeps it). */
function externalStore(storage: Storage) {
  if (storage.backend !== 'koa-session memory store') return undefined;
  const { entries } = storage;
  return {
    get: async (key: string) => {
      const json = entries.get(key);
      return json === undefined ? undefined : (JSON.parse(json) as unknown);
    },
    set: async (key: string, value: unknown) => {
      entries.set(key, JSON.stringify(value));
    },
    destroy: async (key: string) => {
      entries.delete(key);
    },
  };
}

/**
 * koa-bodyparser's part the clients need: `ctx.request.body` is the parsed JSON, or `{}`
 * (koa-csrf reads `ctx.request.body._csrf`, passport-local `req.body.username`).
 */
async function jsonBody(ctx: Koa.Context, next: Koa.Next): Promise<void> {
  let body: unknown = {};
  if (ctx.is('application/json')) {
    const chunks: Buffer[] = [];
    for await (const chunk of ctx.req) chunks.push(chunk as Buffer);
    const text = Buffer.concat(chunks).toString('utf8');
    body = text ? (JSON.parse(text) as unknown) : {};
  }
  (ctx.request as { body?: unknown }).body = body;
  await next();
}

/** The session cookie's value as the browser holds it (undefined: none). */
export function sessionCookie(browser: Browser): string | undefined {
  return browser.cookies.get(COOKIE);
}

/** The session data as a route dumps it (koa-session's and pg-sessions' `toJSON()`). */
export function sessionData(ctx: Koa.Context): Record<string, unknown> | null {
  const session = ctx.session as { toJSON(): Record<string, unknown> } | null;
  return session ? session.toJSON() : null;
}

/** pg-sessions' public session id (`ctx.sessions.id`); null on koa-session, which has none. */
export function sessionId(ctx: Koa.Context): string | null {
  const control = (ctx as { sessions?: { id: string | null } }).sessions;
  return control?.id ?? null;
}
