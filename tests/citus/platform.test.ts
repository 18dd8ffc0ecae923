// What Citus 13.2 does with this schema, pinned before the request path is ported to it
// (issue "Past one primary"): the facts its design rests on, each checked on a real
// coordinator and two workers with the migrated schema distributed by session id, as
// the app role. When an upgrade of Citus changes one of them, this file says which.
import { randomUUID } from 'node:crypto';
import test from 'ava';
import pg from 'pg';
import { migrate } from '../../src/index.js';
import { type CitusCluster, startCitusCluster } from '../../src/testing/index.js';
import { generateToken, hashToken, sessionIdOf } from '../../src/token.js';

let cluster: CitusCluster;

/**
 * The distribution this file studies: every table by its session id, co-located, so one
 * tenant's sessions spread over the workers. Unique keys must hold the distribution
 * column; the foreign key is dropped while the tables are distributed and put back.
 */
const DISTRIBUTE_BY_SESSION = [
  'ALTER TABLE sessions.previous_token DROP CONSTRAINT previous_token_session_fkey',
  `ALTER TABLE sessions.session DROP CONSTRAINT session_token_hash_key,
     ADD CONSTRAINT session_token_hash_key UNIQUE (tenant_id, id, token_hash)`,
  `ALTER TABLE sessions.previous_token DROP CONSTRAINT previous_token_pkey,
     ADD PRIMARY KEY (tenant_id, session_id, token_hash)`,
  'ALTER TABLE sessions.event DROP CONSTRAINT event_pkey, ADD PRIMARY KEY (tenant_id, session_id, id)',
  "SELECT create_distributed_table('sessions.session', 'id')",
  "SELECT create_distributed_table('sessions.previous_token', 'session_id', colocate_with => 'sessions.session')",
  "SELECT create_distributed_table('sessions.event', 'session_id', colocate_with => 'sessions.session')",
  `ALTER TABLE sessions.previous_token ADD CONSTRAINT previous_token_session_fkey
     FOREIGN KEY (tenant_id, session_id) REFERENCES sessions.session (tenant_id, id) ON DELETE CASCADE`,
  'CREATE ROLE app LOGIN IN ROLE sessions_app',
];

/**
 * A creation as the request path would make it on Citus: a function that takes the
 * session id, distributed by it, so Citus runs the whole call on the worker holding the
 * session, where it sets the tenant and the actor for row-level security and the triggers.
 */
const CREATE_ON_WORKER = [
  `CREATE FUNCTION sessions.citus_probe_create(sid uuid, tenant text, actor text) RETURNS bigint
   LANGUAGE plpgsql AS $$
   DECLARE created bigint;
   BEGIN
     PERFORM set_config('sessions.tenant', tenant, true), set_config('sessions.actor', actor, true);
     INSERT INTO sessions.session (tenant_id, id, token_hash, idle_expires_at, absolute_expires_at)
     VALUES (tenant, sid, sha256(convert_to(sid::text, 'UTF8')), now() + interval '1 day', now() + interval '7 days')
     RETURNING version INTO created;
     RETURN created;
   END $$`,
  'GRANT EXECUTE ON FUNCTION sessions.citus_probe_create(uuid, text, text) TO sessions_app',
  `SELECT create_distributed_function('sessions.citus_probe_create(uuid, text, text)', 'sid',
     colocate_with := 'sessions.session', force_delegation := true)`,
];

test.before(async () => {
  cluster = await startCitusCluster();
  await migrate(cluster.url(), 'up');
  await superuser(cluster.url(), ...DISTRIBUTE_BY_SESSION);
  await superuser(cluster.url(), ...CREATE_ON_WORKER);
});

test.after.always(async () => {
  await cluster?.stop();
});

/**
 * Statements as the superuser, one message each (Citus propagates DDL by sending the
 * message it came in, and refuses several commands in one), with triggers on
 * distributed tables allowed.
 */
async function superuser(url: string, ...statements: string[]): Promise<pg.QueryResult[]> {
  return session(url, 'postgres', async (client) => {
    await client.query('SET citus.enable_unsafe_triggers = on');
    const results: pg.QueryResult[] = [];
    for (const statement of statements) results.push(await client.query(statement));
    return results;
  });
}

/** A connection as `user` (the app role `app`, or the superuser) for `work`. */
async function session<T>(url: string, user: string, work: (client: pg.Client) => Promise<T>) {
  const target = new URL(url);
  target.username = user;
  const client = new pg.Client({ connectionString: target.toString() });
  await client.connect();
  try {
    return await work(client);
  } finally {
    await client.end();
  }
}

const asApp = <T>(work: (client: pg.Client) => Promise<T>) => session(cluster.url(), 'app', work);

/**
 * A row insert with the settings before it in one message, as the middleware sends its
 * statements; the id is left to its default, as the app role may not choose it.
 */
function insertText(tenant: string, settings: string): string {
  return `BEGIN; ${settings}; INSERT INTO sessions.session (tenant_id, token_hash, idle_expires_at, absolute_expires_at)
    VALUES ('${tenant}', sha256(convert_to(gen_random_uuid()::text, 'UTF8')), now() + interval '1 day', now() + interval '7 days'); COMMIT`;
}

test.serial(
  'a column-level INSERT grant is not enough: Citus sends the defaults it evaluated',
  async (t) => {
    // The migrations grant the app INSERT on the columns it writes; Citus' INSERT to a
    // shard names id, version and the timestamps as well (their defaults, evaluated on
    // the coordinator).
    const error = await asApp((client) =>
      client.query(insertText('t1', "SET LOCAL sessions.tenant = 't1'")).catch((e: unknown) => e),
    );
    t.regex(String((error as Error).message), /permission denied for table session_\d+/);
    await superuser(
      cluster.url(),
      'GRANT INSERT (id, version, created_at, updated_at, last_seen_at, token_issued_at) ON sessions.session TO sessions_app',
    );
  },
);

test.serial(
  'set_config() in the message does not reach the workers: their row-level security sees no tenant',
  async (t) => {
    const error = await asApp((client) =>
      client
        .query(insertText('t1', "SELECT set_config('sessions.tenant', 't1', true)"))
        .catch((e: unknown) => e),
    );
    t.regex(String((error as Error).message), /new row violates row-level security policy/);
  },
);

test.serial(
  'a propagated SET LOCAL works in a message of its own, not inside a multi-statement one',
  async (t) => {
    // Citus propagates a SET by sending the query string it came in: with the statements
    // after it, which the worker then refuses to run as a nested distributed query. Each
    // SET in a message of its own costs a round trip per setting.
    const settings = [
      "SET LOCAL citus.propagate_set_commands = 'local'",
      "SET LOCAL sessions.tenant = 't1'",
    ];
    const count = 'SELECT count(*) AS n FROM sessions.session';
    const inOne = await asApp((client) =>
      client.query(['BEGIN', ...settings, count, 'COMMIT'].join('; ')).catch((e: unknown) => e),
    );
    t.regex(
      String((inOne as Error).message),
      /cannot execute a distributed query from a query on a shard/,
    );
    const apart = await asApp(async (client) => {
      await client.query('BEGIN');
      for (const setting of settings) await client.query(setting);
      const { rows } = await client.query(count);
      await client.query('COMMIT');
      return rows[0]?.n as string;
    });
    t.regex(apart, /^\d+$/);
  },
);

test.serial(
  'statement-level audit triggers cannot write the event log from a shard; row-level ones can',
  async (t) => {
    const error = await asApp((client) =>
      client
        .query(
          `BEGIN; SELECT sessions.citus_probe_create('${randomUUID()}', 't1', 'user:ada'); COMMIT`,
        )
        .catch((e: unknown) => e),
    );
    t.regex(String((error as Error).message), /could not find named tuplestore "new_rows"/);

    await superuser(
      cluster.url(),
      `CREATE FUNCTION sessions.citus_probe_log_insert() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER
         SET search_path = pg_catalog AS $$
       BEGIN
         INSERT INTO sessions.event (tenant_id, session_id, user_id, kind, version, actor)
         VALUES (NEW.tenant_id, NEW.id, NEW.user_id, 'created', NEW.version, sessions.current_actor());
         PERFORM pg_notify('sessions_changed', NEW.id::text);
         RETURN NULL;
       END $$`,
      'DROP TRIGGER session_log_insert ON sessions.session',
      `CREATE TRIGGER session_log_insert AFTER INSERT ON sessions.session
         FOR EACH ROW EXECUTE FUNCTION sessions.citus_probe_log_insert()`,
    );
    const id = randomUUID();
    await asApp((client) =>
      client.query(`BEGIN; SELECT sessions.citus_probe_create('${id}', 't1', 'user:ada'); COMMIT`),
    );
    const [event] = (
      await superuser(
        cluster.url(),
        `SELECT tenant_id, kind, actor FROM sessions.event WHERE session_id = '${id}'`,
      )
    )[0]!.rows;
    t.deepEqual(event, { tenant_id: 't1', kind: 'created', actor: 'user:ada' });
  },
);

test.serial(
  'a call distributed by session id runs on its worker: the tenant it sets there holds for row-level security',
  async (t) => {
    // As the app role on the worker itself: tenant t1 sees t1's rows, never t2's.
    const [first, second] = [randomUUID(), randomUUID()];
    await asApp(async (client) => {
      await client.query(
        `BEGIN; SELECT sessions.citus_probe_create('${first}', 't1', 'anonymous'); COMMIT`,
      );
      await client.query(
        `BEGIN; SELECT sessions.citus_probe_create('${second}', 't2', 'anonymous'); COMMIT`,
      );
    });
    for (const index of [0, 1]) {
      const seen = await session(cluster.workerUrl(index), 'app', async (client) => {
        const result = await client.query(
          `BEGIN; SELECT set_config('sessions.tenant', 't2', true); SELECT tenant_id FROM sessions.session; COMMIT`,
        );
        return (result as unknown as pg.QueryResult[])[2]!.rows.map(
          (row) => row.tenant_id as string,
        );
      });
      t.true(
        seen.every((tenant) => tenant === 't2'),
        `worker ${index}: ${seen.join(',')}`,
      );
    }
  },
);

test.serial(
  'one tenant’s sessions spread over both workers; a trigger’s notification is heard on its worker only',
  async (t) => {
    const listeners = await Promise.all(
      [cluster.url(), cluster.workerUrl(0), cluster.workerUrl(1)].map(async (url) => {
        const client = new pg.Client({ connectionString: url });
        await client.connect();
        const heard: string[] = [];
        client.on('notification', (message) => heard.push(message.payload ?? ''));
        await client.query('LISTEN sessions_changed');
        return { client, heard };
      }),
    );
    try {
      const ids = Array.from({ length: 20 }, () => randomUUID());
      await asApp(async (client) => {
        for (const id of ids) {
          await client.query(
            `BEGIN; SELECT sessions.citus_probe_create('${id}', 'solo', 'anonymous'); COMMIT`,
          );
        }
      });
      await new Promise((resolve) => setTimeout(resolve, 300));
      const [coordinator, worker0, worker1] = listeners.map(({ heard }) => heard) as [
        string[],
        string[],
        string[],
      ];
      t.deepEqual(coordinator, [], 'nothing on the coordinator');
      t.true(worker0.length > 0 && worker1.length > 0, `${worker0.length} + ${worker1.length}`);
      t.deepEqual([...worker0, ...worker1].sort(), [...ids].sort());
    } finally {
      await Promise.all(listeners.map(({ client }) => client.end()));
    }
  },
);

test.serial(
  'the request path’s own functions, distributed by the id the token names, create and find a session on its worker',
  async (t) => {
    // Migration 12's create_session (by new_id) and lookup_session (by session_hint), as
    // the store calls them (src/store/statements.ts), in one message each, with the
    // transaction's settings made on the coordinator only, as the middleware does.
    await superuser(
      cluster.url(),
      `SELECT create_distributed_function(
         'sessions.create_session(text, text, bytea, jsonb, text, inet, text, interval, interval, boolean, uuid)',
         'new_id', colocate_with := 'sessions.session', force_delegation := true)`,
      `SELECT create_distributed_function(
         'sessions.lookup_session(text, bytea, interval, interval, uuid)',
         'session_hint', colocate_with := 'sessions.session', force_delegation := true)`,
    );
    const token = generateToken();
    const id = sessionIdOf(token)!;
    const hash = `'\\x${hashToken(token).toString('hex')}'::bytea`;
    const settings = (tenant: string) =>
      `SELECT set_config('sessions.tenant', '${tenant}', true), set_config('sessions.actor', 'user:grace', true)`;
    const created = await asApp((client) =>
      client.query(
        `BEGIN; ${settings('t1')}; SELECT * FROM sessions.create_session('t1', 'user:grace', ${hash},
           '{"cart": ["tea"]}', NULL, NULL, NULL, '1 day', '7 days', false, '${id}'); COMMIT`,
      ),
    );
    t.is((created as unknown as pg.QueryResult[])[2]?.rows[0]?.id, id);
    const lookup = (tenant: string, hint: string) =>
      asApp(async (client) => {
        const results = (await client.query(
          `${settings(tenant)}; SELECT * FROM sessions.lookup_session('${tenant}', ${hash}, '1 minute', NULL, '${hint}') LIMIT 1`,
        )) as unknown as pg.QueryResult[];
        return results[1]?.rows[0] as { id: string; data: unknown } | undefined;
      });
    const found = await lookup('t1', id);
    t.is(found?.id, id);
    t.deepEqual(found?.data, { cart: ['tea'] });
    t.is(await lookup('t2', id), undefined, 'another tenant finds nothing');
    t.is(await lookup('t1', randomUUID()), undefined, 'another id finds nothing');
    const [event] = (
      await superuser(
        cluster.url(),
        `SELECT kind, actor FROM sessions.event WHERE session_id = '${id}'`,
      )
    )[0]!.rows;
    t.deepEqual(event, { kind: 'created', actor: 'user:grace' });
  },
);
