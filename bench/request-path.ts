// App CPU per request of each session layer, on its own: the middleware and the same
// handlers as the HTTP cells (bench/handlers.ts), called in this process on Koa contexts built from
// unconnected sockets, so no HTTP parsing, no response writes and no load generator
// share the measurement. Started by bench/run.ts with the http part.
//
// Why beside the HTTP cells: on a small virtual machine a response written to a load
// generator that is asleep costs the writer a wake-up, and the slower the app, the more
// often the generator sleeps. The HTTP cells' "app CPU µs / request" then grows far
// beyond what the session layer itself spends (bare Koa with 18 µs of busy work per
// request serves about half of bare Koa). Here each figure is the layer's own cost:
// process CPU time (user + system) over the requests of the cell, `connections` of them
// in flight at a time, round trips to Redis or PostgreSQL included.
import http from 'node:http';
import net from 'node:net';
import Koa, { type Context, type Middleware } from 'koa';
import { createSession } from 'koa-session';
import { sessions } from '../src/index.js';
import type { TestDatabase } from '../src/testing/index.js';
import { benchHandler } from './handlers.js';
import { pgSimpleStore } from './pg-simple-store.js';
import { redisStore } from './redis-store.js';
import { processTreeCpuMicros } from './server-cpu.js';

export const PATH_VARIANTS = [
  'bare',
  'koa-session',
  'koa-session-redis',
  // koa-session on connect-pg-simple (bench/pg-simple-store.ts): a session row in
  // PostgreSQL at its plainest, one autocommitted statement per store call.
  'koa-session-pg',
  'pg-sessions',
] as const;
export type PathVariant = (typeof PATH_VARIANTS)[number];

/** read: GET /read of a live session; write: POST /write changing one of its keys. */
export const PATH_OPS = ['read', 'write'] as const;
export type PathOp = (typeof PATH_OPS)[number];

export interface PathSettings {
  /** The layers to measure (default: all of {@link PATH_VARIANTS}). */
  readonly variants?: readonly PathVariant[];
  /** The operations to measure (default: both). */
  readonly ops?: readonly PathOp[];
  /** Options for the pg-sessions layer beyond its database (e.g. `{ durability: 'relaxed' }`). */
  readonly pgSessionsOptions?: Readonly<Record<string, unknown>>;
  /** Called around each measured (not warm-up) cell: a profiler starts and stops here. */
  readonly onMeasure?: (phase: 'start' | 'stop', label: string) => Promise<void>;
  readonly sessions: number;
  /** Requests in flight at a time (as the HTTP cells' connections). */
  readonly connections: number;
  /** Measured requests per read cell; write cells run a tenth of it. */
  readonly requests: number;
  readonly rounds: number;
  /**
   * The PostgreSQL server's postmaster, when this process started it: each cell then
   * also reports the server's CPU per request (all its processes, from /proc).
   */
  readonly serverPid?: number;
}

export interface PathCell {
  readonly variant: PathVariant;
  readonly op: PathOp;
  readonly round: number;
  readonly requests: number;
  /** This process's CPU time (user + system) per request, in microseconds. */
  readonly cpuMicrosPerRequest: number;
  /** The part of it spent in the kernel (socket reads and writes, wake-ups). */
  readonly systemMicrosPerRequest?: number;
  /** PostgreSQL's CPU time (every process of the server) per request, µs, when known. */
  readonly serverMicrosPerRequest?: number;
  /** Requests that found no session (401) or failed: a broken cell, never a fast one. */
  readonly failed: number;
}

export interface RequestPathResult {
  readonly cells: readonly PathCell[];
}

/** One session layer in front of the benchmark's handlers, and how to stop it. */
interface Layer {
  readonly app: Koa;
  readonly middleware: Middleware | undefined;
  close(): Promise<void>;
}

const KEYS = ['benchmark key, the same for every variant'];

async function startLayer(
  variant: PathVariant,
  database: TestDatabase | undefined,
  pgSessionsOptions: Readonly<Record<string, unknown>> = {},
): Promise<Layer> {
  const app = new Koa();
  app.keys = KEYS;
  if (variant === 'bare') return { app, middleware: undefined, close: async () => {} };
  if (variant === 'koa-session') {
    const middleware = createSession({ key: 'sid', signed: true, maxAge: 86_400_000 }, app);
    return { app, middleware, close: async () => {} };
  }
  if (variant === 'koa-session-redis') {
    const redis = redisStore(process.env.REDIS_URL, 'bench:path:');
    const middleware = createSession(
      { key: 'sid', signed: true, maxAge: 86_400_000, store: redis.store },
      app,
    );
    return { app, middleware, close: redis.close };
  }
  if (!database) throw new Error(`${variant} needs a database`);
  if (variant === 'koa-session-pg') {
    const pgSimple = pgSimpleStore(database.url, 86_400_000, false);
    await pgSimple.ready();
    const middleware = createSession(
      { key: 'sid', signed: true, maxAge: 86_400_000, store: pgSimple.store },
      app,
    );
    return { app, middleware, close: pgSimple.close };
  }
  const middleware = sessions({ ...pgSessionsOptions, database: database.appUrl, gc: false });
  await middleware.start();
  return { app, middleware, close: () => middleware.close() };
}

/** A Koa context for one request, on a socket that never connects. */
function contextFor(app: Koa, method: string, path: string, cookie: string | undefined): Context {
  const request = new http.IncomingMessage(new net.Socket());
  request.method = method;
  request.url = path;
  request.headers = cookie ? { host: 'bench.local', cookie } : { host: 'bench.local' };
  return app.createContext(request, new http.ServerResponse(request));
}

/** A browser's cookie jar for one session: the latest value of each name. */
class Jar {
  readonly #cookies = new Map<string, string>();
  header: string | undefined;

  update(setCookie: unknown): void {
    if (!Array.isArray(setCookie) || setCookie.length === 0) return;
    for (const line of setCookie as string[]) {
      const end = line.indexOf(';');
      const pair = end < 0 ? line : line.slice(0, end);
      const at = pair.indexOf('=');
      const name = pair.slice(0, at);
      const value = pair.slice(at + 1);
      if (value === '') this.#cookies.delete(name);
      else this.#cookies.set(name, value);
    }
    this.header = [...this.#cookies].map(([name, value]) => `${name}=${value}`).join('; ');
  }
}

class Driver {
  readonly jars: Jar[] = [];
  readonly #handle: (ctx: Context) => void;

  constructor(
    readonly variant: PathVariant,
    readonly layer: Layer,
  ) {
    this.#handle = benchHandler(
      variant === 'pg-sessions'
        ? 'pg-sessions-cache'
        : variant === 'koa-session-pg'
          ? 'koa-session'
          : variant,
    );
  }

  /** One request through the layer; false when it found no session or failed. */
  async request(method: string, path: string, jar: Jar): Promise<boolean> {
    const { app, middleware } = this.layer;
    const ctx = contextFor(app, method, path, jar.header);
    try {
      const handler = async () => this.#handle(ctx);
      if (middleware) await middleware(ctx, handler);
      else await handler();
    } catch {
      return false;
    }
    jar.update(ctx.response.headers['set-cookie']);
    return ctx.status === 200;
  }

  async logIn(sessions: number): Promise<void> {
    for (let i = 0; i < sessions; i++) {
      const jar = new Jar();
      if (!(await this.request('POST', '/login', jar))) {
        throw new Error(`${this.variant}: logging in session ${i} failed`);
      }
      this.jars.push(jar);
    }
  }

  /** `requests` requests, `connections` in flight; returns CPU µs per request and failures. */
  async run(op: PathOp, requests: number, connections: number, serverPid?: number) {
    const [method, path] = op === 'read' ? ['GET', '/read'] : ['POST', '/write'];
    let sent = 0;
    let failed = 0;
    const before = process.cpuUsage();
    const serverBefore = processTreeCpuMicros(serverPid);
    await Promise.all(
      Array.from({ length: connections }, async () => {
        while (sent < requests) {
          sent++;
          const jar = this.jars[Math.floor(Math.random() * this.jars.length)]!;
          if (!(await this.request(method, path, jar))) failed++;
        }
      }),
    );
    const cpu = process.cpuUsage(before);
    const serverAfter = processTreeCpuMicros(serverPid);
    return {
      cpuMicrosPerRequest: (cpu.user + cpu.system) / requests,
      systemMicrosPerRequest: cpu.system / requests,
      ...(serverBefore !== undefined && serverAfter !== undefined
        ? { serverMicrosPerRequest: (serverAfter - serverBefore) / requests }
        : {}),
      failed,
    };
  }
}

/** Every variant and operation, `rounds` times, interleaved so that drift hits all alike. */
export async function runRequestPath(
  settings: PathSettings,
  databases: { create(): Promise<TestDatabase> },
  log: (line: string) => void,
): Promise<RequestPathResult> {
  const database = await databases.create();
  const drivers: Driver[] = [];
  try {
    for (const variant of settings.variants ?? PATH_VARIANTS) {
      const driver = new Driver(
        variant,
        await startLayer(variant, database, settings.pgSessionsOptions),
      );
      drivers.push(driver);
      await driver.logIn(variant === 'bare' ? 1 : settings.sessions);
    }
    const cells: PathCell[] = [];
    for (let round = 1; round <= settings.rounds; round++) {
      for (const op of settings.ops ?? PATH_OPS) {
        const requests = op === 'read' ? settings.requests : Math.ceil(settings.requests / 10);
        for (const driver of drivers) {
          // Warm-up, not recorded: JIT, pools, caches.
          await driver.run(op, Math.ceil(requests / 4), settings.connections);
          const label = `${driver.variant}-${op}-${round}`;
          await settings.onMeasure?.('start', label);
          const measured = await driver.run(op, requests, settings.connections, settings.serverPid);
          await settings.onMeasure?.('stop', label);
          cells.push({ variant: driver.variant, op, round, requests, ...measured });
          log(
            `request path, round ${round}, ${driver.variant} ${op}: ${measured.cpuMicrosPerRequest.toFixed(1)} µs of CPU per request (${measured.systemMicrosPerRequest.toFixed(1)} in the kernel)` +
              (measured.serverMicrosPerRequest !== undefined
                ? `, PostgreSQL ${measured.serverMicrosPerRequest.toFixed(0)} µs`
                : '') +
              (measured.failed > 0 ? `, ${measured.failed} failed` : ''),
          );
        }
      }
    }
    return { cells };
  } finally {
    for (const driver of drivers) await driver.layer.close();
    await database.drop();
  }
}
