// Process B of the notification benchmark (started by bench/notify-latency.ts): a Koa
// app with its own pg-sessions middleware and cache. Each notification its listener
// applies is reported to the runner with the moment it was applied, and whether it
// evicted a cached entry.
//   POST /login  creates a session
//   GET  /read   the session's id and its `bumped` value; 401 when there is no session
import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import Koa from 'koa';
import type { SessionNotification } from '../src/cache/notification.js';
import { sessions } from '../src/index.js';
import { type Message, serveRunner, tellRunner } from './child.js';

/** Sent for every session a notification named. */
export interface Applied extends Message {
  readonly type: `applied:${string}`;
  readonly op: 'update' | 'delete';
  readonly version: number;
  /** When the listener had applied it: `performance.timeOrigin + performance.now()`. */
  readonly at: number;
  /** Whether applying it evicted an entry from this process's cache. */
  readonly evicted: boolean;
}

const app = new Koa();
app.keys = ['benchmark key, the same for every variant'];
app.silent = true;
const middleware = sessions({ database: process.env.DATABASE_URL, gc: false });

let evictions = 0;
middleware.events.on('cache:notification', (notification: SessionNotification) => {
  // The listener emits this right after it has applied the notification to the cache.
  const at = performance.timeOrigin + performance.now();
  const now = middleware.metrics.snapshot().cacheEvictions;
  const evicted = now > evictions;
  evictions = now;
  if (notification.op === 'flush') return;
  for (const entry of notification.sessions) {
    tellRunner({
      type: `applied:${entry.id}`,
      op: notification.op,
      version: entry.version,
      at,
      evicted,
    } satisfies Applied);
  }
});

app.use(middleware);
app.use((ctx) => {
  const session = ctx.session;
  if (ctx.method === 'POST' && ctx.path === '/login' && session) {
    session.user = 'probe';
    ctx.body = 'ok';
  } else if (ctx.method === 'GET' && ctx.path === '/read') {
    if (typeof session?.user !== 'string') {
      ctx.status = 401;
      return;
    }
    ctx.body = { id: ctx.sessions.id, bumped: session.bumped ?? null };
  } else {
    ctx.status = 404;
  }
});

await middleware.start();
const server: Server = await new Promise((resolve) => {
  const listening = app.listen(0, '127.0.0.1', () => resolve(listening));
});
serveRunner(
  () => undefined,
  async () => {
    server.closeAllConnections();
    await new Promise((resolve) => server.close(resolve));
    await middleware.close();
  },
);
tellRunner({ type: 'ready', port: (server.address() as AddressInfo).port });
