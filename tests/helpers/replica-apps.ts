import type Router from 'koa-router';
import pg from 'pg';
import { ReplicaRouter, type ReplicaRouterOptions } from '../../src/db/replica-router.js';
import type { SessionOptions } from '../../src/index.js';
import { Browser, startApp, type TestApp } from './http.js';

/** What the replica suites' routes answer. */
export interface SessionBody {
  id: string | null;
  version: number | null;
  data: Record<string, unknown> | null;
}

/** /get, /set?k=v, /write?i=n[&rotate=1] (one key per request), /revoke?id=… */
export function replicaRoutes(router: Router): void {
  const reply = (ctx: Parameters<Router.IMiddleware>[0]) => {
    ctx.body = {
      id: ctx.sessions.id,
      version: ctx.sessions.version,
      data: ctx.session?.toJSON() ?? null,
    } satisfies SessionBody;
  };
  router.get('/get', reply);
  router.post('/set', (ctx) => {
    Object.assign(ctx.session!, ctx.request.query);
    reply(ctx);
  });
  // One key per request id: every acknowledged write must be found, each exactly once.
  router.post('/write', (ctx) => {
    const i = Number(ctx.query.i);
    (ctx.session as Record<string, unknown>)[`w${i}`] = i;
    if (ctx.query.rotate) ctx.sessions.regenerate();
    ctx.body = { id: ctx.sessions.id };
  });
  router.post('/revoke', async (ctx) => {
    ctx.body = { revoked: await ctx.sessions.revoke(String(ctx.query.id)) };
  });
}

export interface RouterApp {
  readonly app: TestApp;
  readonly router: ReplicaRouter;
}

/** An app process of its own: its own router over `hosts`; closing it closes both. */
export async function appWithRouter(
  routerOptions: ReplicaRouterOptions,
  options: Omit<SessionOptions, 'database'> = {},
): Promise<RouterApp> {
  const router = new ReplicaRouter(routerOptions);
  try {
    const started = await startApp({ database: router, gc: false, ...options }, replicaRoutes);
    const app = {
      ...started,
      close: async () => {
        await started.close();
        await router.close();
      },
    };
    return { app, router };
  } catch (error) {
    await router.close();
    throw error;
  }
}

/** The same client (its cookies) talking to another app process. */
export function via(browser: Browser, app: TestApp): Browser {
  const moved = new Browser(app.url);
  for (const [name, value] of browser.cookies) moved.cookies.set(name, value);
  return moved;
}

/** Whether the router has the server on `port` in its read rotation. */
export function inRotation(router: ReplicaRouter, port: number): boolean {
  return router.state().some((host) => host.name.endsWith(`:${port}`) && host.inRotation);
}

export function hostState(router: ReplicaRouter, port: number) {
  return router.state().find((host) => host.name.endsWith(`:${port}`));
}

export async function pollUntil(
  what: string,
  timeoutMs: number,
  check: () => Promise<boolean> | boolean,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let lastError: unknown;
  while (Date.now() < deadline) {
    try {
      if (await check()) return;
    } catch (error) {
      lastError = error;
    }
    await sleep(25);
  }
  throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`, { cause: lastError });
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** One statement on its own connection. */
export async function queryUrl<R extends pg.QueryResultRow = Record<string, unknown>>(
  url: string,
  sql: string,
  params: unknown[] = [],
): Promise<R[]> {
  const client = new pg.Client({ connectionString: url, connectionTimeoutMillis: 5_000 });
  client.on('error', () => {});
  await client.connect();
  try {
    return (await client.query<R>(sql, params)).rows;
  } finally {
    await client.end().catch(() => {});
  }
}

/** The URL with another login role. */
export function withRole(url: string, role: string, password: string): string {
  const parsed = new URL(url);
  parsed.username = role;
  parsed.password = password;
  return parsed.toString();
}
