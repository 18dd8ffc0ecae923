import test from 'ava';
import pg from 'pg';
import {
  type MigrationPrivilegeFacts,
  missingMigrationPrivilege,
} from '../src/db/migration-privileges.js';
import { PostgresServer } from '../src/testing/index.js';
import { runCli } from './helpers/cli.js';

// Roles are cluster-wide and the shared test server already has the sessions_* roles
// (its migrated template made them): these tests run on a server of their own, one
// case after the other, dropping the roles between cases that need them missing.

let server: PostgresServer | undefined;

test.before(async () => {
  server = await PostgresServer.start();
});
test.after.always(async () => {
  await server?.destroy();
});

function urlAs(role: string, database: string): string {
  const url = new URL((server as PostgresServer).url(database));
  url.username = role;
  return url.toString();
}

async function sql(url: string, text: string): Promise<pg.QueryResult> {
  const client = new pg.Client(url);
  await client.connect();
  try {
    return await client.query(text);
  } finally {
    await client.end();
  }
}

const superuser = (database = 'postgres') => urlAs('postgres', database);

/** A login role owning a database of the same name plus `_db`. */
async function owner(name: string, attributes = ''): Promise<string> {
  await sql(superuser(), `CREATE ROLE ${name} LOGIN ${attributes}`);
  await sql(superuser(), `CREATE DATABASE ${name}_db OWNER ${name}`);
  return urlAs(name, `${name}_db`);
}

async function installed(database: string): Promise<{ schema: boolean; migrations: boolean }> {
  const result = await sql(
    superuser(database),
    `SELECT to_regnamespace('sessions') IS NOT NULL AS schema,
            to_regclass('sessions.schema_migrations') IS NOT NULL AS migrations`,
  );
  return result.rows[0];
}

async function dropSessionRoles(): Promise<void> {
  await sql(superuser(), 'DROP ROLE IF EXISTS sessions_app, sessions_auditor, sessions_admin');
}

test.serial(
  'a database owner without CREATEROLE is stopped before anything is applied, and migrates once a DBA ran the printed SQL',
  async (t) => {
    const url = await owner('plain_owner');
    const refused = await runCli(['migrate', 'up', '--url', url]);
    t.is(refused.code, 2, refused.stderr + refused.stdout);
    t.is(
      refused.stderr,
      'pg-sessions: role plain_owner lacks CREATEROLE to create sessions_admin, sessions_app, sessions_auditor: run `pg-sessions migrate roles --owner plain_owner` and have a superuser or your DBA execute its SQL once\n',
    );
    t.is(refused.stdout, '');
    t.deepEqual(await installed('plain_owner_db'), { schema: false, migrations: false });

    // The DBA's part, as the README says: the printed SQL, run once as a superuser.
    const printed = await runCli(['migrate', 'roles'], { DATABASE_URL: url });
    t.is(printed.code, 0, printed.stderr);
    t.regex(printed.stdout, /GRANT sessions_admin TO "plain_owner";\n$/);
    await sql(superuser(), printed.stdout);
    const roles = await sql(
      superuser(),
      `SELECT rolname, rolcanlogin FROM pg_roles WHERE rolname LIKE 'sessions\\_%' ORDER BY 1`,
    );
    t.deepEqual(roles.rows, [
      { rolname: 'sessions_admin', rolcanlogin: false },
      { rolname: 'sessions_app', rolcanlogin: false },
      { rolname: 'sessions_auditor', rolcanlogin: false },
    ]);

    const up = await runCli(['migrate', 'up', '--url', url]);
    t.is(up.code, 0, up.stderr + up.stdout);
    t.regex(up.stdout, /^(applied \d+_\S+\.sql\n)+$/);
    const status = await runCli(['migrate', 'status', '--url', url]);
    t.is(status.code, 0, status.stderr + status.stdout);
    const schemaOwner = await sql(
      superuser('plain_owner_db'),
      `SELECT pg_get_userbyid(nspowner) AS owner FROM pg_namespace WHERE nspname = 'sessions'`,
    );
    t.deepEqual(schemaOwner.rows, [{ owner: 'plain_owner' }]);

    // The roles exist now, but a second owner without CREATEROLE is not in sessions_admin
    // and may not grant it to itself.
    const other = await owner('other_owner');
    const notMember = await runCli(['migrate', 'up', '--url', other]);
    t.is(notMember.code, 2, notMember.stderr);
    t.regex(
      notMember.stderr,
      /^pg-sessions: role other_owner is not a member of sessions_admin and cannot grant it to itself \(needs (ADMIN OPTION on sessions_admin|CREATEROLE)\): run `pg-sessions migrate roles --owner other_owner`[^\n]*\n$/,
    );
    t.deepEqual(await installed('other_owner_db'), { schema: false, migrations: false });
  },
);

test.serial(
  'a role without CREATE on the database is told so, and nothing is applied',
  async (t) => {
    await sql(superuser(), 'CREATE ROLE visitor LOGIN');
    await sql(superuser(), 'CREATE DATABASE visited');
    const result = await runCli(['migrate', 'up', '--url', urlAs('visitor', 'visited')]);
    t.is(result.code, 2, result.stderr + result.stdout);
    t.regex(
      result.stderr,
      /^pg-sessions: role visitor lacks CREATE on database visited \(to create schema sessions\): [^\n]*GRANT CREATE ON DATABASE "visited" TO "visitor"\n$/,
    );
    t.deepEqual(await installed('visited'), { schema: false, migrations: false });
  },
);

test.serial(
  'a database owner with CREATEROLE, not a superuser, creates the roles and migrates',
  async (t) => {
    // Cluster-wide leftovers of the first case: the databases go, then the roles.
    for (const database of ['plain_owner_db', 'other_owner_db']) {
      await sql(superuser(), `DROP DATABASE IF EXISTS ${database}`);
    }
    await dropSessionRoles();
    const url = await owner('role_maker', 'CREATEROLE');
    const up = await runCli(['migrate', 'up', '--url', url]);
    t.is(up.code, 0, up.stderr + up.stdout);
    const status = await runCli(['migrate', 'status', '--url', url]);
    t.is(status.code, 0, status.stderr + status.stdout);
    const member = await sql(
      superuser(),
      `SELECT pg_has_role('role_maker', 'sessions_admin', 'USAGE') AS usage`,
    );
    t.deepEqual(member.rows, [{ usage: true }]);
    const again = await runCli(['migrate', 'up', '--url', url]);
    t.regex(again.stdout, /^up to date \(\d+ applied\)\n$/);
  },
);

const facts: MigrationPrivilegeFacts = {
  role: 'app_owner',
  database: 'app',
  serverVersionNum: 180000,
  superuser: false,
  createRole: false,
  connectOnDatabase: true,
  createOnDatabase: true,
  schemaOwner: null,
  ownsSchema: false,
  missingRoles: [],
  actsAsAdmin: true,
  adminOption: false,
};

test('the privilege check decides on the facts alone', (t) => {
  t.deepEqual(missingMigrationPrivilege(facts), { ok: true, prepareRoles: false });
  t.deepEqual(
    missingMigrationPrivilege({ ...facts, superuser: true, createOnDatabase: false }),
    { ok: true, prepareRoles: false },
    'a superuser needs nothing more',
  );
  const missing = (changed: Partial<MigrationPrivilegeFacts>) => {
    const verdict = missingMigrationPrivilege({ ...facts, ...changed });
    return verdict.ok ? undefined : verdict.missing;
  };
  t.regex(missing({ connectOnDatabase: false }) ?? '', /lacks CONNECT on database app/);
  t.regex(missing({ createOnDatabase: false }) ?? '', /lacks CREATE on database app/);
  t.is(
    missing({ createOnDatabase: false, schemaOwner: 'app_owner', ownsSchema: true }),
    undefined,
    'no CREATE on the database needed once the schema is there and ours',
  );
  t.regex(
    missing({ schemaOwner: 'someone', ownsSchema: false }) ?? '',
    /schema sessions belongs to someone, not app_owner/,
  );
  t.regex(
    missing({ missingRoles: ['sessions_app'] }) ?? '',
    /lacks CREATEROLE to create sessions_app/,
  );
  // Not in sessions_admin: PostgreSQL 15 grants it with CREATEROLE, 16+ needs ADMIN OPTION.
  t.regex(missing({ actsAsAdmin: false }) ?? '', /needs ADMIN OPTION on sessions_admin/);
  t.regex(missing({ actsAsAdmin: false, serverVersionNum: 150000 }) ?? '', /needs CREATEROLE/);
  t.deepEqual(
    missingMigrationPrivilege({
      ...facts,
      actsAsAdmin: false,
      createRole: true,
      serverVersionNum: 150000,
    }),
    { ok: true, prepareRoles: true },
  );
  t.regex(
    missing({ actsAsAdmin: false, createRole: true }) ?? '',
    /needs ADMIN OPTION/,
    'CREATEROLE alone does not grant an existing role on 16+',
  );
  t.deepEqual(missingMigrationPrivilege({ ...facts, actsAsAdmin: false, adminOption: true }), {
    ok: true,
    prepareRoles: true,
  });
  t.deepEqual(
    missingMigrationPrivilege({
      ...facts,
      actsAsAdmin: false,
      createRole: true,
      missingRoles: ['sessions_admin', 'sessions_app', 'sessions_auditor'],
    }),
    { ok: true, prepareRoles: true },
    'a role that creates sessions_admin may grant it',
  );
});
