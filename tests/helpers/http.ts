import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import Koa from 'koa';
import Router from 'koa-router';
import { type SessionMiddleware, type SessionOptions, sessions } from '../../src/index.js';

/** A Koa app with pg-sessions listening on a free loopback port. */
export interface TestApp {
  readonly url: string;
  readonly app: Koa;
  readonly middleware: SessionMiddleware;
  close(): Promise<void>;
}

/**
 * Starts a real HTTP server: error handler (status + code as JSON), the session
 * middleware, then the routes the test adds.
 */
export async function startApp(
  options: SessionOptions,
  routes: (router: Router) => void,
  configure?: (app: Koa) => void,
): Promise<TestApp> {
  const app = new Koa();
  app.keys = ['test key one', 'test key two'];
  app.silent = true;
  configure?.(app);
  app.use(async (ctx, next) => {
    try {
      await next();
    } catch (error) {
      const failure = error as {
        status?: number;
        code?: string;
        message?: string;
        expose?: boolean;
      };
      ctx.status = failure.status ?? 500;
      ctx.body = {
        error: failure.code ?? 'INTERNAL',
        message: failure.expose ? failure.message : undefined,
      };
    }
  });
  const middleware = sessions(options);
  app.use(middleware);
  const router = new Router();
  routes(router);
  app.use(router.routes());
  const server: Server = await new Promise((resolve) => {
    const listening = app.listen(0, '127.0.0.1', () => resolve(listening));
  });
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    app,
    middleware,
    close: async () => {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
      await middleware.close();
    },
  };
}

/** How a {@link Browser} fetches; the defaults are fetch's own. */
export interface BrowserOptions {
  /** 'manual': a redirect is answered as it is (status, Location, Set-Cookie), not followed. */
  readonly redirect?: 'follow' | 'manual';
  /** Each request fails, naming itself, when no answer came within this many ms. */
  readonly timeoutMs?: number;
}

/** A minimal cookie-keeping HTTP client, like a browser for one site. */
export class Browser {
  readonly cookies = new Map<string, string>();
  constructor(
    readonly baseUrl: string,
    readonly options: BrowserOptions = {},
  ) {}

  async request(
    path: string,
    init: { method?: string; headers?: Record<string, string>; body?: unknown } = {},
  ): Promise<{ status: number; body: unknown; setCookies: string[]; headers: Headers }> {
    const headers: Record<string, string> = { ...init.headers };
    if (this.cookies.size > 0) {
      headers.cookie = [...this.cookies].map(([name, value]) => `${name}=${value}`).join('; ');
    }
    let body: string | undefined;
    if (init.body instanceof URLSearchParams) {
      body = init.body.toString();
      headers['content-type'] = 'application/x-www-form-urlencoded';
    } else if (init.body !== undefined) {
      body = JSON.stringify(init.body);
      headers['content-type'] = 'application/json';
    }
    const method = init.method ?? 'GET';
    const { redirect, timeoutMs } = this.options;
    let response: Response;
    try {
      response = await fetch(`${this.baseUrl}${path}`, {
        method,
        headers,
        body,
        redirect,
        signal: timeoutMs === undefined ? undefined : AbortSignal.timeout(timeoutMs),
      });
    } catch (error) {
      if ((error as Error).name !== 'TimeoutError') throw error;
      throw new Error(`${method} ${path} got no answer within ${timeoutMs} ms`);
    }
    const setCookies = response.headers.getSetCookie();
    for (const line of setCookies) {
      const [pair = '', ...attributes] = line.split(';');
      const separator = pair.indexOf('=');
      const name = pair.slice(0, separator).trim();
      const value = pair.slice(separator + 1).trim();
      const expired = attributes.some((attribute) => /expires=Thu, 01 Jan 1970/i.test(attribute));
      if (expired || value === '') this.cookies.delete(name);
      else this.cookies.set(name, value);
    }
    const text = await response.text();
    let parsed: unknown = text;
    try {
      parsed = text ? JSON.parse(text) : undefined;
    } catch {
      // plain text body
    }
    return { status: response.status, body: parsed, setCookies, headers: response.headers };
  }

  get(path: string, headers?: Record<string, string>) {
    return this.request(path, { headers });
  }

  post(path: string, body?: unknown) {
    return this.request(path, { method: 'POST', body });
  }

  /** The same cookies in a second client, for this site or (`baseUrl`) another node of it. */
  clone(baseUrl = this.baseUrl): Browser {
    const copy = new Browser(baseUrl, this.options);
    for (const [name, value] of this.cookies) copy.cookies.set(name, value);
    return copy;
  }
}
