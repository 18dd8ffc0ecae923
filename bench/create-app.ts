// The app process of `npm run bench:create` (bench/create.ts): one Koa app per cell,
// with the session layer BENCH_CREATE_VARIANT names and these handlers:
//   GET  /visit   a first visit: sets one key (visits = 1), so the layer creates a session
//   POST /signin  pg-sessions only: ctx.sessions.bindUser('user-<n>'), which rotates the token
//   POST /write   pg-sessions only: changes one key of the session (the data-write reference)
// /signin and /write answer 401 when the request's session was not found (a fresh empty
// one has no `visits`), so lost sessions show up as failed requests, not fast ones.
// The runner reads the counters over IPC, never over HTTP.
import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import Koa from 'koa';
import { createSession } from 'koa-session';
import { type SessionMiddleware, sessions } from '../src/index.js';
import { type Message, serveRunner, tellRunner } from './child.js';
import { pgSimpleStore } from './pg-simple-store.js';
import { type KoaSessionStore, redisStore } from './redis-store.js';

export const CREATE_VARIANTS = ['pg-sessions', 'koa-session-pg', 'koa-session-redis'] as const;
export type CreateVariant = (typeof CREATE_VARIANTS)[number];

/** What the runner asks for before and after each measured run. */
export interface CreateAppStats extends Message {
  readonly type: 'stats';
  /** CPU time of this process so far (user + system), in microseconds. */
  readonly cpuMicros: number;
  /** pg-sessions' own counters (undefined for koa-session). */
  readonly metrics?: {
    readonly requests: number;
    readonly roundTrips: number;
    readonly creates: number;
    readonly saves: number;
    readonly rotations: number;
  };
  /** koa-session only: calls to its store so far (each one query or Redis command). */
  readonly storeCalls?: number;
}

/** koa-session's settings, as bench/app-server.ts sets them. */
const MAX_AGE_MS = 86_400_000;

const variant = process.env.BENCH_CREATE_VARIANT as CreateVariant;
if (!CREATE_VARIANTS.includes(variant)) {
  throw new Error(`BENCH_CREATE_VARIANT must be one of ${CREATE_VARIANTS.join(', ')}`);
}
const app = new Koa();
app.keys = ['benchmark key, the same for every variant'];
app.silent = true;
let middleware: SessionMiddleware | undefined;
let close: () => Promise<void> = async () => {};
let storeCalls = 0;

/** The store with its calls counted: connect-pg-simple and Redis make one round trip per call. */
function counted(store: KoaSessionStore): KoaSessionStore {
  return {
    get: (...call) => {
      storeCalls++;
      return store.get(...call);
    },
    set: (...call) => {
      storeCalls++;
      return store.set(...call);
    },
    destroy: (key) => {
      storeCalls++;
      return store.destroy(key);
    },
  };
}

if (variant === 'pg-sessions') {
  const url = process.env.DATABASE_URL;
  if (!url) throw new Error('DATABASE_URL must name the database');
  // The defaults, cache on: what a user who writes `sessions({ database })` gets.
  const started = sessions({ database: url });
  await started.start();
  app.use(started);
  middleware = started;
  close = () => started.close();
} else if (variant === 'koa-session-pg') {
  const url = process.env.DATABASE_URL;
  if (!url) throw new Error('DATABASE_URL must name the database');
  const pgSimple = pgSimpleStore(url, MAX_AGE_MS);
  await pgSimple.ready();
  close = pgSimple.close;
  app.use(
    createSession(
      { key: 'sid', signed: true, maxAge: MAX_AGE_MS, store: counted(pgSimple.store) },
      app,
    ),
  );
} else {
  const redis = redisStore(process.env.REDIS_URL, process.env.REDIS_PREFIX);
  close = redis.close;
  app.use(
    createSession(
      { key: 'sid', signed: true, maxAge: MAX_AGE_MS, store: counted(redis.store) },
      app,
    ),
  );
}

let signIns = 0;
let writes = 0;
app.use((ctx) => {
  const session = ctx.session as Record<string, unknown> | null;
  if (!session) throw new Error('no session object');
  const route = `${ctx.method} ${ctx.path}`;
  if (route === 'GET /visit') {
    session.visits = 1;
    ctx.body = 'ok';
    return;
  }
  if (!middleware || (route !== 'POST /signin' && route !== 'POST /write')) {
    ctx.status = 404;
    return;
  }
  if (session.visits !== 1) {
    ctx.status = 401;
    return;
  }
  if (route === 'POST /signin') ctx.sessions.bindUser(`user-${++signIns}`);
  else session.k = ++writes;
  ctx.body = 'ok';
});

const server: Server = await new Promise((resolve) => {
  const listening = app.listen(0, '127.0.0.1', () => resolve(listening));
});

serveRunner(
  (message): CreateAppStats | undefined => {
    if (message.type !== 'stats') return undefined;
    const cpu = process.cpuUsage();
    const snapshot = middleware?.metrics.snapshot();
    return {
      type: 'stats',
      cpuMicros: cpu.user + cpu.system,
      ...(snapshot
        ? {
            metrics: {
              requests: snapshot.requests,
              roundTrips: snapshot.roundTrips,
              creates: snapshot.creates,
              saves: snapshot.saves,
              rotations: snapshot.rotations,
            },
          }
        : { storeCalls }),
    };
  },
  async () => {
    server.closeAllConnections();
    await new Promise((resolve) => server.close(resolve));
    await close();
  },
);
tellRunner({ type: 'ready', port: (server.address() as AddressInfo).port });
