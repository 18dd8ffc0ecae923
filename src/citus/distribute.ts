// `pg-sessions citus distribute`: spreads the migrated sessions schema over a Citus
// cluster, by session id (see docs/scaling.md for why not by tenant). Every step first
// checks whether it is done, so the command is safe to run again: after a failure part
// way, after `migrate up` replaced a trigger, or just to be sure.
import type pg from 'pg';
import { checkSchema } from '../db/schema-guard.js';
import { SessionSchemaError } from '../errors.js';
import { REPLACED_TRIGGERS, ROW_TRIGGER_FUNCTIONS } from './row-triggers.js';

export interface DistributionStep {
  /** What the step makes true, in a few words. */
  readonly step: string;
  /** It was not true before this run (false: found done, left alone). */
  readonly changed: boolean;
}

export interface DistributeOptions {
  /** Shards per table when they are first distributed. @default Citus' citus.shard_count (32) */
  readonly shardCount?: number;
}

/** The distributed tables, all co-located with sessions.session, by their session id. */
const TABLES = [
  { table: 'sessions.session', column: 'id' },
  { table: 'sessions.previous_token', column: 'session_id' },
  { table: 'sessions.event', column: 'session_id' },
] as const;

/**
 * Unique keys must contain the distribution column. Each key as it must read on Citus,
 * and the statement that makes it so.
 */
const KEYS = [
  {
    name: 'session_token_hash_key',
    definition: 'UNIQUE (tenant_id, id, token_hash)',
    make: `ALTER TABLE sessions.session DROP CONSTRAINT session_token_hash_key,
             ADD CONSTRAINT session_token_hash_key UNIQUE (tenant_id, id, token_hash)`,
  },
  {
    name: 'previous_token_pkey',
    definition: 'PRIMARY KEY (tenant_id, session_id, token_hash)',
    make: `ALTER TABLE sessions.previous_token DROP CONSTRAINT previous_token_pkey,
             ADD CONSTRAINT previous_token_pkey PRIMARY KEY (tenant_id, session_id, token_hash)`,
  },
  {
    name: 'event_pkey',
    definition: 'PRIMARY KEY (tenant_id, session_id, id)',
    make: `ALTER TABLE sessions.event DROP CONSTRAINT event_pkey,
             ADD CONSTRAINT event_pkey PRIMARY KEY (tenant_id, session_id, id)`,
  },
] as const;

const FOREIGN_KEY = `ALTER TABLE sessions.previous_token ADD CONSTRAINT previous_token_session_fkey
  FOREIGN KEY (tenant_id, session_id) REFERENCES sessions.session (tenant_id, id) ON DELETE CASCADE`;

/**
 * The request path's functions, each run whole on the worker that holds its session
 * (force_delegation: also inside a transaction), by the argument naming it.
 */
const DELEGATED_FUNCTIONS = [
  {
    signature:
      'sessions.create_session(text, text, bytea, jsonb, text, inet, text, interval, interval, boolean, uuid)',
    argument: 'new_id',
  },
  {
    signature: 'sessions.lookup_session(text, bytea, interval, interval, uuid)',
    argument: 'session_hint',
  },
  {
    signature: 'sessions.lock_session(text, bytea, integer, interval, interval, boolean, uuid)',
    argument: 'session_hint',
  },
  // SECURITY DEFINER: run anywhere else, their statements would reach the worker as
  // sessions_admin, which does not log in; on the worker they run locally.
  { signature: 'sessions.reauthenticate(uuid)', argument: 'session_id' },
  { signature: 'sessions.revoke_session(uuid, text, text)', argument: 'id' },
  {
    signature:
      'sessions.save_session(text, text, uuid, bigint, jsonb, text[], jsonb, boolean, text, bytea, bytea, inet, text, interval, interval, boolean)',
    argument: 'session_id',
  },
] as const;

/**
 * Runs every step on `client`, connected to the coordinator as the owner of the sessions
 * schema (the role that ran `migrate up`). Statements go one per message: Citus
 * propagates DDL by the message it came in.
 */
export async function distributeOnCitus(
  client: pg.Client,
  options: DistributeOptions = {},
): Promise<DistributionStep[]> {
  await requireCoordinator(client);
  const steps: DistributionStep[] = [];
  const step = async (name: string, done: () => Promise<boolean>, make: () => Promise<void>) => {
    const already = await done();
    if (!already) await make();
    steps.push({ step: name, changed: !already });
  };
  const run = async (...statements: string[]) => {
    for (const statement of statements) await client.query(statement);
  };

  // Triggers on distributed tables are refused unless this is on (they run on the
  // workers, where they must not reach other shards: these write the co-located event
  // shard of their own row only).
  await run('SET citus.enable_unsafe_triggers = on');
  await step(
    'row-level audit functions and the per-shard collector installed',
    async () => installedAsShipped(client),
    async () => {
      await run(...ROW_TRIGGER_FUNCTIONS);
      // Handing a function to sessions_admin needs its CREATE on the schema, for the
      // moment of the handover only (as the migrations do).
      await run('GRANT CREATE ON SCHEMA sessions TO sessions_admin');
      await run(
        'ALTER FUNCTION sessions.citus_gc_shard(regclass, integer, text) OWNER TO sessions_admin',
        'REVOKE EXECUTE ON FUNCTION sessions.citus_gc_shard(regclass, integer, text) FROM PUBLIC',
        'GRANT EXECUTE ON FUNCTION sessions.citus_gc_shard(regclass, integer, text) TO sessions_app',
        'REVOKE EXECUTE ON FUNCTION sessions.citus_colocated_id(uuid) FROM PUBLIC',
        'GRANT EXECUTE ON FUNCTION sessions.citus_colocated_id(uuid) TO sessions_app',
        ...REPLACED_TRIGGERS.map(
          ({ fn }) => `ALTER FUNCTION sessions.${fn}() OWNER TO sessions_admin`,
        ),
        ...REPLACED_TRIGGERS.map(
          ({ fn }) => `REVOKE EXECUTE ON FUNCTION sessions.${fn}() FROM PUBLIC`,
        ),
      );
      await run('REVOKE CREATE ON SCHEMA sessions FROM sessions_admin');
    },
  );
  for (const trigger of REPLACED_TRIGGERS) {
    await step(
      `${trigger.name} row-level`,
      async () => (await triggerFunction(client, trigger.table, trigger.name)) === trigger.fn,
      () =>
        run(
          `DROP TRIGGER IF EXISTS ${trigger.name} ON ${trigger.table}`,
          `CREATE TRIGGER ${trigger.name} ${trigger.timing} ON ${trigger.table}
             FOR EACH ROW EXECUTE FUNCTION sessions.${trigger.fn}()`,
        ),
    );
  }
  const distributed = await distributedTables(client);
  const allDistributed = TABLES.every(({ table }) => distributed.has(table));
  if (!allDistributed) {
    // A foreign key to a table being distributed must wait until both are.
    await run(
      'ALTER TABLE sessions.previous_token DROP CONSTRAINT IF EXISTS previous_token_session_fkey',
    );
  }
  for (const key of KEYS) {
    await step(
      `${key.name} ${key.definition}`,
      async () => (await constraintDefinition(client, key.name)) === key.definition,
      () => run(key.make),
    );
  }
  await step(
    'the app may insert the columns Citus fills with defaults',
    async () => (await defaultedColumnGrants(client)).length === 0,
    async () => run(...(await defaultedColumnGrants(client))),
  );
  for (const { table, column } of TABLES) {
    await step(
      `${table} distributed by ${column}`,
      async () => distributed.has(table),
      () =>
        run(
          `SELECT create_distributed_table('${table}', '${column}'${
            table === 'sessions.session'
              ? options.shardCount
                ? `, shard_count := ${Math.trunc(options.shardCount)}`
                : ''
              : ", colocate_with := 'sessions.session'"
          })`,
        ),
    );
  }
  await step(
    'previous_token_session_fkey',
    async () => (await constraintDefinition(client, 'previous_token_session_fkey')) !== undefined,
    () => run(FOREIGN_KEY),
  );
  for (const fn of DELEGATED_FUNCTIONS) {
    await step(
      `${fn.signature.replace(/\(.*/, '')} runs on the worker of its ${fn.argument}`,
      async () => isDelegated(client, fn.signature),
      () =>
        run(`SELECT create_distributed_function('${fn.signature}', '${fn.argument}',
               colocate_with := 'sessions.session', force_delegation := true)`),
    );
  }
  return steps;
}

async function requireCoordinator(client: pg.Client): Promise<void> {
  const { rows } = await client.query<{ version: string | null }>(
    "SELECT (SELECT extversion FROM pg_catalog.pg_extension WHERE extname = 'citus') AS version",
  );
  if (!rows[0]?.version) {
    throw new SessionSchemaError(
      'this server has no Citus: install it, CREATE EXTENSION citus on the coordinator, add the workers, then run this again (nothing was changed)',
    );
  }
  const coordinator = await client.query<{ yes: boolean }>('SELECT citus_is_coordinator() AS yes');
  if (!coordinator.rows[0]?.yes) {
    throw new SessionSchemaError(
      'this server is a Citus worker, not the coordinator: connect to the coordinator (nothing was changed)',
    );
  }
  // The functions distributed here must be this package's: every migration applied.
  await checkSchema(client);
}

async function triggerFunction(
  client: pg.Client,
  table: string,
  trigger: string,
): Promise<string | undefined> {
  const { rows } = await client.query<{ fn: string }>(
    `SELECT p.proname AS fn FROM pg_catalog.pg_trigger t JOIN pg_catalog.pg_proc p ON p.oid = t.tgfoid
      WHERE t.tgrelid = $1::regclass AND t.tgname = $2 AND (t.tgtype & 1) = 1`,
    [table, trigger],
  );
  return rows[0]?.fn;
}

async function constraintDefinition(client: pg.Client, name: string): Promise<string | undefined> {
  const { rows } = await client.query<{ definition: string }>(
    `SELECT pg_catalog.pg_get_constraintdef(c.oid) AS definition
       FROM pg_catalog.pg_constraint c JOIN pg_catalog.pg_namespace n ON n.oid = c.connamespace
      WHERE n.nspname = 'sessions' AND c.conname = $1`,
    [name],
  );
  return rows[0]?.definition;
}

async function distributedTables(client: pg.Client): Promise<Set<string>> {
  const { rows } = await client.query<{ table: string }>(
    `SELECT logicalrelid::regclass::text AS table FROM pg_catalog.pg_dist_partition
      WHERE logicalrelid::regclass::text LIKE 'sessions.%'`,
  );
  return new Set(rows.map((row) => row.table));
}

/**
 * Citus' insert into a shard names every column it filled with a default on the
 * coordinator (the id, the version, the timestamps): the app role, which may insert
 * only the columns it writes, needs INSERT on those too.
 */
async function defaultedColumnGrants(client: pg.Client): Promise<string[]> {
  const { rows } = await client.query<{ table: string; columns: string[] }>(
    `SELECT a.attrelid::regclass::text AS table, array_agg(quote_ident(a.attname) ORDER BY a.attnum) AS columns
       FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
      WHERE a.attrelid IN ('sessions.session'::regclass, 'sessions.previous_token'::regclass)
        AND NOT a.attisdropped AND a.attgenerated = ''
        AND NOT has_column_privilege('sessions_app', a.attrelid, a.attnum, 'INSERT')
      GROUP BY a.attrelid`,
  );
  return rows.map(
    ({ table, columns }) => `GRANT INSERT (${columns.join(', ')}) ON ${table} TO sessions_app`,
  );
}

async function isDelegated(client: pg.Client, signature: string): Promise<boolean> {
  const { rows } = await client.query<{ yes: boolean }>(
    `SELECT EXISTS (
       SELECT FROM pg_catalog.pg_dist_object
        WHERE classid = 'pg_catalog.pg_proc'::regclass AND objid = $1::regprocedure
          AND distribution_argument_index IS NOT NULL AND force_delegation
     ) AS yes`,
    [signature],
  );
  return rows[0]?.yes === true;
}

/** Every function of row-triggers.ts exists with the body this package ships. */
async function installedAsShipped(client: pg.Client): Promise<boolean> {
  for (const statement of ROW_TRIGGER_FUNCTIONS) {
    const name = /FUNCTION (sessions\.\w+)\(/.exec(statement)?.[1];
    const body = /AS \$\$([\s\S]*)\$\$$/.exec(statement)?.[1];
    const { rows } = await client.query<{ src: string }>(
      `SELECT p.prosrc AS src FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
        WHERE n.nspname || '.' || p.proname = $1`,
      [name],
    );
    if (rows.length !== 1 || rows[0]?.src !== body) return false;
  }
  // A run that stopped before the handover left them with the role that ran it.
  const { rows } = await client.query<{ handed: boolean }>(
    `SELECT bool_and(p.proowner = 'sessions_admin'::regrole) AS handed
       FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
      WHERE n.nspname = 'sessions' AND p.prosecdef AND p.proname LIKE 'citus\\_%'`,
  );
  return rows[0]?.handed === true;
}
