// The one app process under load (started by bench/http.ts and bench/replicas.ts).
// BENCH_VARIANT picks the session layer; the handlers (bench/handlers.ts) are the same
// in every variant.
// The runner reads counters over IPC (never over HTTP, which would count as load).
// For the replica benchmark the runner sends a `topology` message (the primary's URL
// and the replicas' to read from): pg-sessions then runs over a ReplicaRouter, rebuilt
// for each topology while the process and its warm JIT stay the same.
import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import Koa from 'koa';
import { createSession } from 'koa-session';
import { ReplicaRouter, type RouterCounters } from '../src/db/replica-router.js';
import { type SessionMiddleware, sessions } from '../src/index.js';
import { type Message, serveRunner, tellRunner } from './child.js';
import { benchHandler } from './handlers.js';
import { redisStore } from './redis-store.js';
import { hasSessions, ROUTER_POOL_SIZE, VARIANTS, type Variant } from './variants.js';

/** What the runner asks for before and after each measured run. */
export interface AppStats extends Message {
  readonly type: 'stats';
  /** CPU time of this process so far (user + system), in microseconds. */
  readonly cpuMicros: number;
  /** pg-sessions' counters (undefined for the other variants). */
  readonly metrics?: {
    readonly requests: number;
    readonly roundTrips: number;
    readonly cacheHits: number;
    readonly cacheMisses: number;
    readonly loads: number;
    readonly saves: number;
    readonly creates: number;
  };
  /** The replica router's counters (replica benchmark only). */
  readonly router?: RouterCounters;
}

/**
 * Sent by the replica benchmark, answered by `ready`: read from `replicas` with writes on
 * `primary`, or (with `hosts`) discover the roles among these servers and fail over.
 */
export interface Topology extends Message {
  readonly type: 'topology';
  readonly primary?: string;
  readonly replicas?: readonly string[];
  readonly hosts?: readonly string[];
}

const variant = process.env.BENCH_VARIANT as Variant;
if (!VARIANTS.includes(variant)) throw new Error(`BENCH_VARIANT must be one of ${VARIANTS}`);

const app = new Koa();
app.keys = ['benchmark key, the same for every variant'];
app.silent = true;
let middleware: SessionMiddleware | undefined;
let router: ReplicaRouter | undefined;

async function startSessions(database: string | ReplicaRouter): Promise<SessionMiddleware> {
  const started = sessions({
    database,
    // Lock mode keeps the cache (its requests read under the lock, never from it).
    cache: variant === 'pg-sessions-nocache' ? false : {},
    mode: variant === 'pg-sessions-lock' ? 'lock' : 'merge',
    durability: variant === 'pg-sessions-relaxed' ? 'relaxed' : 'durable',
    // Nothing expires during a run; a collector waking up mid-cell would only add noise.
    gc: false,
    // A probe's extra options (`npm run bench -- --options '{"batchWrites":false}'`).
    ...(process.env.BENCH_PG_OPTIONS
      ? (JSON.parse(process.env.BENCH_PG_OPTIONS) as Record<string, unknown>)
      : {}),
  });
  await started.start();
  return started;
}

/** Swaps pg-sessions onto a new router; the old one is closed (with its pools) after. */
async function useTopology(topology: Topology): Promise<void> {
  const next = new ReplicaRouter(
    topology.hosts
      ? // The failover test's bounds: a write waits at most 5 s for a new primary.
        {
          hosts: topology.hosts,
          poolSize: ROUTER_POOL_SIZE,
          failoverTimeout: 5_000,
          connectTimeout: 1_000,
          statementTimeout: 2_000,
        }
      : {
          primary: topology.primary,
          replicas: topology.replicas ?? [],
          poolSize: ROUTER_POOL_SIZE,
        },
  );
  await next.ready();
  const previous = middleware;
  const previousRouter = router;
  middleware = await startSessions(next);
  router = next;
  await previous?.close();
  // The middleware closes only what it created: the router is ours.
  await previousRouter?.close();
}

let closeRedis: (() => Promise<void>) | undefined;
if (variant === 'koa-session') {
  // koa-session's default store: the whole session in a signed cookie.
  app.use(createSession({ key: 'sid', signed: true, maxAge: 86_400_000 }, app));
} else if (variant === 'koa-session-redis') {
  // What users choose for several app servers: koa-session with a Redis store.
  const redis = redisStore(process.env.REDIS_URL);
  closeRedis = redis.close;
  app.use(createSession({ key: 'sid', signed: true, maxAge: 86_400_000, store: redis.store }, app));
} else if (hasSessions(variant)) {
  const url = process.env.DATABASE_URL;
  if (!url) throw new Error('DATABASE_URL must name the database of a pg-sessions variant');
  middleware = await startSessions(url);
  app.use((ctx, next) => {
    if (!middleware) throw new Error('pg-sessions is not started');
    return middleware(ctx, next);
  });
}

app.use(benchHandler(variant));

const server: Server = await new Promise((resolve) => {
  const listening = app.listen(0, '127.0.0.1', () => resolve(listening));
});

serveRunner(
  async (message): Promise<Message | undefined> => {
    if (message.type === 'topology') {
      await useTopology(message as Topology);
      return { type: 'ready' };
    }
    if (message.type !== 'stats') return undefined;
    const cpu = process.cpuUsage();
    const snapshot = middleware?.metrics.snapshot();
    return {
      type: 'stats',
      cpuMicros: cpu.user + cpu.system,
      metrics: snapshot && {
        requests: snapshot.requests,
        roundTrips: snapshot.roundTrips,
        cacheHits: snapshot.cacheHits,
        cacheMisses: snapshot.cacheMisses,
        loads: snapshot.loads,
        saves: snapshot.saves,
        creates: snapshot.creates,
      },
      ...(router ? { router: { ...router.counters } } : {}),
    } satisfies AppStats;
  },
  async () => {
    server.closeAllConnections();
    await new Promise((resolve) => server.close(resolve));
    await middleware?.close();
    await router?.close();
    await closeRedis?.();
  },
);
tellRunner({ type: 'ready', port: (server.address() as AddressInfo).port });
