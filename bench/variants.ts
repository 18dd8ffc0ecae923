// Constants shared by the runner and the app processes (this module has no side effects).

/** The session layers the HTTP benchmark compares, in the order it runs them. */
export const VARIANTS = [
  'bare',
  'koa-session',
  'koa-session-redis',
  'pg-sessions-nocache',
  'pg-sessions-cache',
  'pg-sessions-lock',
] as const;
export type Variant = (typeof VARIANTS)[number];

/** Connections per host of the replica benchmark's router (ReplicaRouter's default). */
export const ROUTER_POOL_SIZE = 10;
