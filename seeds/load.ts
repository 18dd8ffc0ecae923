import pg from 'pg';
import { resolveConnectionConfig } from '../src/db/connection-config.js';
import {
  GC_ACTOR,
  type ResolvedSeedOptions,
  resolveSeedOptions,
  type SeedOptions,
  type SeedSession,
  seedSessions,
  USER_AGENTS,
} from './generator.js';

export interface LoadSeedOptions extends Omit<SeedOptions, 'now'> {
  /** The end of the history. @default the database's now(), to the second */
  readonly now?: Date;
  /** Delete the seed tenants' sessions and events first (else their presence is an error). @default false */
  readonly replace?: boolean;
  /** Called as the work advances (for a progress bar). */
  readonly onProgress?: (progress: SeedProgress) => void;
}

export interface SeedProgress {
  readonly phase: 'generating' | 'writing sessions' | 'writing events' | 'indexing' | 'analyzing';
  /** Sessions generated so far (the other phases are single statements). */
  readonly done: number;
  readonly total: number;
}

export interface SeedResult {
  /** Sessions created over the history. */
  readonly sessions: number;
  /** Rows left in sessions.session (live, revoked or expired but not yet collected). */
  readonly rows: number;
  readonly events: number;
  readonly tenants: readonly string[];
  readonly now: Date;
  readonly durationMs: number;
}

/** A precondition the seed refuses to run without; nothing was written. */
export class SeedError extends Error {
  override readonly name = 'SeedError';
}

/** Sessions per round trip while staging. */
const CHUNK = 20_000;

/**
 * Writes the story of {@link seedSessions} into the database at `url`, in one
 * transaction: sessions go to a temporary staging table in chunks (arrays through
 * `unnest`, one statement per chunk), then two set-based statements write the
 * remaining rows and the whole event history, sorted by time so the BRIN index on
 * occurred_at stays sharp.
 *
 * The history is written as it would have been logged, with explicit `occurred_at`:
 * the triggers are skipped (`session_replication_role = replica`), since they would
 * stamp every event with the time of the seed. That needs a superuser.
 *
 * @example
 * await loadSeed(process.env.DATABASE_URL!, { sessions: 100_000 });
 */
export async function loadSeed(url: string, options: LoadSeedOptions): Promise<SeedResult> {
  const began = performance.now();
  const client = new pg.Client(
    await resolveConnectionConfig({ connectionString: url, connectionTimeoutMillis: 10_000 }),
  );
  client.on('error', () => {});
  await client.connect();
  try {
    const checks = await client.query<{
      superuser: boolean;
      installed: boolean;
      now: Date;
    }>(
      `SELECT (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) AS superuser,
              to_regclass('sessions.event') IS NOT NULL AS installed,
              date_trunc('second', now()) AS now`,
    );
    const check = checks.rows[0];
    if (!check?.installed) {
      throw new SeedError('the sessions schema is not installed: run `pg-sessions migrate up`');
    }
    if (!check.superuser) {
      throw new SeedError(
        'seeding needs a superuser connection: it writes the event history directly, with the triggers skipped',
      );
    }
    const plan = resolveSeedOptions({ ...options, now: options.now ?? check.now });
    await client.query('BEGIN');
    try {
      const result = await write(client, plan, options);
      await client.query('COMMIT');
      options.onProgress?.({ phase: 'analyzing', done: plan.sessions, total: plan.sessions });
      await client.query('ANALYZE sessions.session, sessions.event');
      return { ...result, durationMs: performance.now() - began };
    } catch (error) {
      await client.query('ROLLBACK').catch(() => {});
      throw error;
    }
  } finally {
    await client.end().catch(() => {});
  }
}

async function write(
  client: pg.Client,
  plan: ResolvedSeedOptions,
  options: LoadSeedOptions,
): Promise<Omit<SeedResult, 'durationMs'>> {
  await client.query(`SET LOCAL session_replication_role = replica;
    SET LOCAL synchronous_commit = off;
    SET LOCAL jit = off;
    SET LOCAL work_mem = '1GB'`);
  const tenants = [...plan.tenants];
  const taken = await client.query(
    `SELECT DISTINCT tenant_id FROM (
       SELECT tenant_id FROM sessions.session WHERE tenant_id = ANY($1)
       UNION ALL SELECT tenant_id FROM sessions.event WHERE tenant_id = ANY($1)) t`,
    [tenants],
  );
  if (taken.rowCount) {
    if (!options.replace) {
      const names = taken.rows.map((row) => row.tenant_id).join(', ');
      throw new SeedError(
        `tenants ${names} already hold sessions or events: pass --replace to delete them first`,
      );
    }
    await client.query('DELETE FROM sessions.event WHERE tenant_id = ANY($1)', [tenants]);
    await client.query('DELETE FROM sessions.session WHERE tenant_id = ANY($1)', [tenants]);
    // The triggers are off: tell the app nodes' caches ourselves.
    await client.query(
      `SELECT pg_notify('sessions_changed', json_build_object('op', 'flush', 'tenant', t)::text)
         FROM unnest($1::text[]) AS t`,
      [tenants],
    );
  }
  await client.query(`CREATE TEMP TABLE seed_session (
      tenant_id text, id uuid, user_id text, bound_at timestamptz, created_at timestamptz,
      active_from timestamptz, last_seen_at timestamptz, idle_expires_at timestamptz,
      absolute_expires_at timestamptz, updates integer, base_version integer, final_version integer,
      ending_kind text, ending_at timestamptz, ending_reason text, ending_actor text,
      purged_at timestamptz, ip inet, user_agent text
    ) ON COMMIT DROP`);

  let generated = 0;
  let inFlight: Promise<unknown> | undefined;
  let chunk: SeedSession[] = [];
  const flush = async () => {
    const rows = chunk;
    chunk = [];
    // Generate the next chunk while the server stages this one.
    await inFlight;
    inFlight = stage(client, rows);
    options.onProgress?.({ phase: 'generating', done: generated, total: plan.sessions });
  };
  for (const session of seedSessions(plan)) {
    chunk.push(session);
    generated++;
    if (chunk.length === CHUNK) await flush();
  }
  if (chunk.length > 0) await flush();
  await inFlight;

  options.onProgress?.({ phase: 'writing sessions', done: generated, total: plan.sessions });
  const rows = await client.query(`
    INSERT INTO sessions.session (tenant_id, id, token_hash, user_id, data, version, created_at,
                                  updated_at, last_seen_at, idle_expires_at, absolute_expires_at,
                                  revoked_at, revoked_reason, ip, user_agent)
    SELECT tenant_id, id,
           -- No token hashes to this: nobody can present a seeded session.
           sha256(convert_to('seed:' || id::text, 'UTF8')),
           user_id,
           jsonb_build_object('views', updates + 1, 'theme', CASE WHEN updates % 2 = 0 THEN 'light' ELSE 'dark' END),
           final_version, created_at,
           CASE WHEN ending_kind = 'revoked' THEN ending_at
                WHEN updates > 0 THEN active_from + (last_seen_at - active_from) * (updates::float8 / (updates + 1))
                ELSE active_from END,
           last_seen_at, idle_expires_at, absolute_expires_at,
           CASE WHEN ending_kind = 'revoked' THEN ending_at END,
           CASE WHEN ending_kind = 'revoked' THEN ending_reason END,
           ip, user_agent
      FROM seed_session
     WHERE ending_kind IS NULL OR (ending_kind = 'revoked' AND purged_at IS NULL)
     ORDER BY created_at`);

  options.onProgress?.({ phase: 'writing events', done: generated, total: plan.sessions });
  const rebuilt = await dropEventIndexesIfCheaper(client, plan.sessions);
  const events = await client.query(
    `INSERT INTO sessions.event (tenant_id, occurred_at, session_id, user_id, kind, version,
                                 changed_keys, reason, actor, ip, user_agent)
     SELECT tenant_id, occurred_at, session_id, user_id, kind, version, changed_keys, reason, actor,
            ip, user_agent
       FROM (
         SELECT tenant_id, created_at AS occurred_at, id AS session_id,
                CASE WHEN bound_at = created_at THEN user_id END AS user_id,
                'created' AS kind, 1 AS version, NULL::text[] AS changed_keys, NULL AS reason,
                CASE WHEN bound_at = created_at THEN 'user:' || user_id ELSE 'anonymous' END AS actor,
                ip, user_agent, 0 AS step
           FROM seed_session
         UNION ALL
         -- A login: bindUser rotates the token and sets the user in one statement.
         SELECT s.tenant_id, s.bound_at, s.id, s.user_id, k.kind, 2, NULL, NULL, 'user:' || s.user_id,
                NULL, NULL, k.step
           FROM seed_session s CROSS JOIN (VALUES ('rotated', 1), ('user_bound', 2)) AS k(kind, step)
          WHERE s.bound_at > s.created_at
         UNION ALL
         SELECT s.tenant_id,
                s.active_from + (s.last_seen_at - s.active_from) * (u.n::float8 / (s.updates + 1)),
                s.id, s.user_id, 'updated', s.base_version + u.n,
                CASE u.n % 4 WHEN 0 THEN ARRAY['cart'] WHEN 1 THEN ARRAY['theme']
                             WHEN 2 THEN ARRAY['cart', 'views'] ELSE ARRAY['locale'] END,
                NULL, coalesce('user:' || s.user_id, 'anonymous'), NULL, NULL, 2 + u.n
           FROM seed_session s CROSS JOIN LATERAL generate_series(1, s.updates) AS u(n)
         UNION ALL
         SELECT tenant_id, ending_at, id, user_id, ending_kind, final_version, NULL, ending_reason,
                ending_actor, NULL, NULL, 100
           FROM seed_session WHERE ending_kind IS NOT NULL
         UNION ALL
         SELECT tenant_id, purged_at, id, user_id, 'purged', final_version, NULL, 'gc', $1, NULL, NULL, 101
           FROM seed_session WHERE purged_at IS NOT NULL
       ) history
      ORDER BY occurred_at, session_id, step`,
    [GC_ACTOR],
  );
  if (rebuilt.length > 0) {
    options.onProgress?.({ phase: 'indexing', done: generated, total: plan.sessions });
    // One statement each: CREATE INDEX builds in parallel workers of its own.
    for (const definition of rebuilt) await client.query(definition);
  }
  return {
    sessions: generated,
    rows: rows.rowCount ?? 0,
    events: events.rowCount ?? 0,
    tenants,
    now: new Date(plan.now),
  };
}

/**
 * Sorting a few million events into each secondary index once is several times
 * faster than inserting them one by one (every index key compares tenant ids under
 * the database's collation): when the seed adds more events than the log holds,
 * drop those indexes here and rebuild them, from their own definitions, after the
 * insert. The table stays locked until the seed commits, which a fresh demo or
 * benchmark database does not mind. Returns the definitions to rebuild.
 */
async function dropEventIndexesIfCheaper(client: pg.Client, sessions: number): Promise<string[]> {
  const existing = await client.query<{ estimate: number }>(
    `SELECT greatest(reltuples, 0)::float8 AS estimate FROM pg_class WHERE oid = 'sessions.event'::regclass`,
  );
  // About four events per session (created, login, updates, ending).
  if (sessions < 50_000 || (existing.rows[0]?.estimate ?? 0) > sessions * 4) return [];
  const indexes = await client.query<{ name: string; definition: string }>(
    `SELECT c.relname AS name, pg_get_indexdef(i.indexrelid) AS definition
       FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
      WHERE i.indrelid = 'sessions.event'::regclass AND NOT i.indisunique
      ORDER BY c.relname`,
  );
  await client.query(`SET LOCAL maintenance_work_mem = '512MB'`);
  for (const { name } of indexes.rows) {
    await client.query(`DROP INDEX sessions.${client.escapeIdentifier(name)}`);
  }
  return indexes.rows.map((row) => row.definition);
}

const at = (ms: number | null) => (ms === null ? null : ms / 1000);

/** One chunk into the staging table: one array per column, one statement. */
function stage(client: pg.Client, sessions: readonly SeedSession[]): Promise<unknown> {
  const columns = {
    tenant: [] as string[],
    id: [] as string[],
    user: [] as (string | null)[],
    bound: [] as (number | null)[],
    created: [] as number[],
    lastSeen: [] as number[],
    idle: [] as number[],
    absolute: [] as number[],
    updates: [] as number[],
    endingKind: [] as (string | null)[],
    endingAt: [] as (number | null)[],
    endingReason: [] as (string | null)[],
    endingActor: [] as (string | null)[],
    purged: [] as (number | null)[],
    ip: [] as string[],
    agent: [] as number[],
  };
  for (const session of sessions) {
    columns.tenant.push(session.tenantId);
    columns.id.push(session.id);
    columns.user.push(session.userId);
    columns.bound.push(at(session.boundAt));
    columns.created.push(session.createdAt / 1000);
    columns.lastSeen.push(session.lastSeenAt / 1000);
    columns.idle.push(session.idleExpiresAt / 1000);
    columns.absolute.push(session.absoluteExpiresAt / 1000);
    columns.updates.push(session.updates);
    columns.endingKind.push(session.ending?.kind ?? null);
    columns.endingAt.push(at(session.ending?.at ?? null));
    columns.endingReason.push(session.ending?.reason ?? null);
    columns.endingActor.push(session.ending?.actor ?? null);
    columns.purged.push(at(session.purgedAt));
    columns.ip.push(session.ip);
    columns.agent.push(USER_AGENTS.indexOf(session.userAgent as (typeof USER_AGENTS)[number]));
  }
  return client.query(
    `INSERT INTO seed_session
     SELECT tenant_id, id, user_id, to_timestamp(bound), to_timestamp(created),
            to_timestamp(coalesce(bound, created)), to_timestamp(last_seen), to_timestamp(idle),
            to_timestamp(absolute), updates,
            CASE WHEN bound > created THEN 2 ELSE 1 END,
            CASE WHEN bound > created THEN 2 ELSE 1 END + updates
              + CASE WHEN ending_kind = 'revoked' THEN 1 ELSE 0 END,
            ending_kind, to_timestamp(ending_at), ending_reason, ending_actor, to_timestamp(purged),
            ip::inet, ($17::text[])[agent + 1]
       FROM unnest($1::text[], $2::uuid[], $3::text[], $4::float8[], $5::float8[], $6::float8[],
                   $7::float8[], $8::float8[], $9::int[], $10::text[], $11::float8[], $12::text[],
                   $13::text[], $14::float8[], $15::text[], $16::int[])
         AS t(tenant_id, id, user_id, bound, created, last_seen, idle, absolute, updates,
              ending_kind, ending_at, ending_reason, ending_actor, purged, ip, agent)`,
    [
      ...[
        columns.tenant,
        columns.id,
        columns.user,
        columns.bound,
        columns.created,
        columns.lastSeen,
        columns.idle,
        columns.absolute,
        columns.updates,
        columns.endingKind,
        columns.endingAt,
        columns.endingReason,
        columns.endingActor,
        columns.purged,
        columns.ip,
        columns.agent,
      ].map(arrayLiteral),
      [...USER_AGENTS],
    ],
  );
}

/**
 * The array's text form, as node-postgres would send it but several times faster
 * (its generic escaping is most of the staging's cost at a million sessions).
 */
function arrayLiteral(values: readonly (string | number | null)[]): string {
  const items = values.map((value) =>
    value === null
      ? 'NULL'
      : typeof value === 'number'
        ? String(value)
        : `"${value.replace(/[\\"]/g, '\\$&')}"`,
  );
  return `{${items.join(',')}}`;
}
