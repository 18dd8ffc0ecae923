import type { ColumnType, Generated } from 'kysely';

/**
 * The tables of schema `sessions` (created by migrations/), as Kysely sees them.
 * Applications read the reporting views and the event log; these tables are the
 * library's own and may change between versions.
 */
export interface SessionTable {
  tenant_id: string;
  id: Generated<string>;
  token_hash: Buffer;
  user_id: string | null;
  data: ColumnType<Record<string, unknown>, string | undefined, string>;
  /** Bumped by a trigger on every content change; never written by the client. */
  version: ColumnType<string, never, never>;
  created_at: ColumnType<Date, never, never>;
  updated_at: ColumnType<Date, never, never>;
  last_seen_at: ColumnType<Date, Date | undefined, Date>;
  idle_expires_at: Date;
  absolute_expires_at: Date;
  /** LEAST(idle_expires_at, absolute_expires_at), generated. */
  expires_at: ColumnType<Date, never, never>;
  revoked_at: Date | null;
  revoked_reason: string | null;
  ip: string | null;
  user_agent: string | null;
}

export interface EventTable {
  id: Generated<string>;
  occurred_at: Date;
  tenant_id: string;
  session_id: string;
  user_id: string | null;
  kind:
    | 'created'
    | 'updated'
    | 'rotated'
    | 'user_bound'
    | 'revoked'
    | 'expired'
    | 'destroyed'
    | 'purged';
  version: string | null;
  changed_keys: string[] | null;
  reason: string | null;
  actor: string;
  ip: string | null;
  user_agent: string | null;
}

export interface SchemaMigrationsTable {
  version: string;
}

/** The `sessions` schema for Kysely: `Kysely<SessionsDatabase>`. */
export interface SessionsDatabase {
  'sessions.session': SessionTable;
  'sessions.event': EventTable;
  'sessions.schema_migrations': SchemaMigrationsTable;
}

/**
 * The tables `ctx.db` (the request's transaction) is typed with: schema `sessions`, plus
 * the application's own tables once the application extends this interface by module
 * augmentation (Koa's `ctx` is typed globally, so this is where its tables go).
 *
 * @example
 * import type { DB } from './db.js'; // your Kysely tables, e.g. from kysely-codegen
 * declare module 'pg-sessions' {
 *   interface RequestDatabase extends DB {}
 * }
 * // then: await ctx.db!.insertInto('orders').values({ … }).execute();
 */
export interface RequestDatabase extends SessionsDatabase {}
