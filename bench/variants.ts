// Constants shared by the runner and the app processes (this module has no side effects).

/** The session layers the HTTP benchmark compares, in the order it runs them. */
export const VARIANTS = [
  'bare',
  // Not a session layer: bare Koa whose handler keeps the CPU busy for BUSY_MICROS per
  // request (read-only mix only). It shows what any layer costing that much serves here.
  'bare-busy',
  'koa-session',
  'koa-session-redis',
  'pg-sessions-nocache',
  'pg-sessions-cache',
  // The same with `durability: 'relaxed'`: data writes commit with synchronous_commit off.
  'pg-sessions-relaxed',
  'pg-sessions-lock',
] as const;
export type Variant = (typeof VARIANTS)[number];

/** The busy work of `bare-busy`: about what bench/request-path.ts measures for a cached read. */
export const BUSY_MICROS = 15;

/** The variants without sessions: nothing to log in to. */
export function hasSessions(variant: Variant): boolean {
  return variant !== 'bare' && variant !== 'bare-busy';
}

/** `bare-busy` calibrates the read path: it runs the read-only mix alone. */
export function runsMix(variant: Variant, mix: string): boolean {
  return variant !== 'bare-busy' || mix === 'read-only';
}

/** Connections per host of the replica benchmark's router (ReplicaRouter's default). */
export const ROUTER_POOL_SIZE = 10;
