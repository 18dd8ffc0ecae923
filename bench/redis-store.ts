// koa-session's external store on Redis, the three methods koa-redis implements: the
// session as JSON under its key, with Redis expiring it after maxAge (as koa-redis'
// `SET key value PX ttl`). Written here rather than depending on koa-redis, whose
// releases pin old Redis clients; the round trips are the same: one GET per request,
// one SET per changed session.
import { Redis } from 'ioredis';

export interface KoaSessionStore {
  get(key: string, maxAge: number, options: { rolling: boolean }): Promise<unknown>;
  set(
    key: string,
    session: unknown,
    maxAge: number,
    options: { rolling: boolean; changed: boolean },
  ): Promise<void>;
  destroy(key: string): Promise<void>;
}

/** A store on the Redis at `url` (default: 127.0.0.1:6379), keys prefixed with `prefix`. */
export function redisStore(url = 'redis://127.0.0.1:6379', prefix = 'bench:sess:') {
  const client = new Redis(url);
  const store: KoaSessionStore = {
    async get(key) {
      const value = await client.get(prefix + key);
      return value === null ? undefined : JSON.parse(value);
    },
    async set(key, session, maxAge) {
      const value = JSON.stringify(session);
      // koa-session passes 'session' for a browser-session cookie: Redis then keeps it a day.
      const ttl = typeof maxAge === 'number' ? maxAge : 86_400_000;
      await client.set(prefix + key, value, 'PX', ttl);
    },
    async destroy(key) {
      await client.del(prefix + key);
    },
  };
  return { store, close: () => client.quit().then(() => {}) };
}
