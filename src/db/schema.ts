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
  /** When the current token was issued (creation or last rotation). */
  token_issued_at: ColumnType<Date, Date | undefined, Date>;
  /** When the user last proved who they are (sign-in, reauthentication); migration 8. */
  authenticated_at: ColumnType<Date | null, never, never>;
  /** The name the user gave this device, if any (migration 9). */
  device_name: string | null;
}

/** A token a rotation replaced (SHA-256 only), kept until its session is deleted. */
export interface PreviousTokenTable {
  tenant_id: string;
  token_hash: Buffer;
  session_id: string;
  rotated_at: ColumnType<Date, never, never>;
  /** Until then the token still reaches its session; presented later, it revokes it. */
  grace_expires_at: Date;
  rotation_ip: string | null;
  rotation_user_agent: string | null;
  reused_at: Date | null;
  reused_ip: string | null;
  reused_user_agent: string | null;
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
    | 'purged'
    | 'altered'
    | 'token_reused';
  version: string | null;
  changed_keys: string[] | null;
  reason: string | null;
  actor: string;
  ip: string | null;
  user_agent: string | null;
  /** 'token_reused': the request that rotated the token away (ip, user_agent: the one presenting it). */
  rotation_ip: string | null;
  rotation_user_agent: string | null;
}

export interface SchemaMigrationsTable {
  version: string;
}

/** The `sessions` schema for Kysely: `Kysely<SessionsDatabase>`. */
export interface SessionsDatabase {
  'sessions.session': SessionTable;
  'sessions.previous_token': PreviousTokenTable;
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
