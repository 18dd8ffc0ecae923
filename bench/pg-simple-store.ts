// koa-session's external store on connect-pg-simple, the PostgreSQL store most Express
// users (and Koa users going through an adapter) choose: the session as JSON in one row
// of its `session` table (sid, sess, expire), one autocommitted statement per call:
//   get      SELECT sess … WHERE sid = $1 AND expire >= now
//   set      INSERT … ON CONFLICT (sid) DO UPDATE (an upsert)
//   destroy  DELETE … WHERE sid = $1
// connect-pg-simple is an express-session store: its constructor extends express-session's
// Store class, and its methods take Node callbacks. This adapter is the whole glue.
// Neither package ships types (and @types/connect-pg-simple pulls in Express's), so the
// few members used here are typed below.
import { createRequire } from 'node:module';
import type { KoaSessionStore } from './redis-store.js';

type Callback<T = undefined> = (error: Error | null, result?: T) => void;

/** The members of connect-pg-simple's PGStore this adapter calls. */
interface PgSimpleStore {
  get(sid: string, callback: Callback<unknown>): void;
  set(sid: string, session: unknown, callback: Callback): void;
  destroy(sid: string, callback: Callback): void;
  close(): Promise<void>;
}

interface PgSimpleOptions {
  readonly conString: string;
  /** Lifetime of a row whose session carries no `cookie.expires` (koa-session's never do), s. */
  readonly ttl: number;
  readonly createTableIfMissing: boolean;
  /** Seconds between prunes of expired rows, or false for none. */
  readonly pruneSessionInterval?: false | number;
}

const require = createRequire(import.meta.url);
const expressSession = require('express-session') as { Store: unknown };
const connectPgSimple = require('connect-pg-simple') as (session: {
  Store: unknown;
}) => new (
  options: PgSimpleOptions,
) => PgSimpleStore;
const PGStore = connectPgSimple(expressSession);

/** Calls a callback-style method and settles with what it hands back. */
function promised<T>(call: (callback: Callback<T>) => void): Promise<T | undefined> {
  return new Promise((resolve, reject) => {
    call((error, result) => (error ? reject(error) : resolve(result)));
  });
}

/**
 * A koa-session store on connect-pg-simple at `url`, with its defaults otherwise (a pg
 * pool of 10 connections, pruning every 15 minutes unless `prune` is false: a prune
 * still running when the benchmark drops its database is reported as a pool error).
 * Its table is created on first use (`createTableIfMissing`); `ready()` does that first use.
 */
export function pgSimpleStore(url: string, maxAgeMs: number, prune = true) {
  const pgStore = new PGStore({
    conString: url,
    ttl: Math.ceil(maxAgeMs / 1000),
    createTableIfMissing: true,
    ...(prune ? {} : { pruneSessionInterval: false as const }),
  });
  const store: KoaSessionStore = {
    async get(key) {
      return (await promised<unknown>((callback) => pgStore.get(key, callback))) ?? undefined;
    },
    async set(key, session) {
      await promised((callback) => pgStore.set(key, session, callback));
    },
    async destroy(key) {
      await promised((callback) => pgStore.destroy(key, callback));
    },
  };
  return {
    store,
    /** Creates the table if it is missing (a lookup of a key that cannot exist). */
    ready: async () => {
      await store.get('bench-warm-up: no such session', 0, { rolling: false });
    },
    close: () => pgStore.close(),
  };
}
