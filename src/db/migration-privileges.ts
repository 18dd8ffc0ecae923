import type pg from 'pg';

/**
 * What migrating needs from the connected role, decided before dbmate applies
 * anything: a migration that fails half-way through the set leaves the schema at an
 * older version than the code, so a missing privilege must stop `migrate up` first.
 */

/** The cluster-wide roles the migrations grant to; all NOLOGIN. */
export const SESSIONS_ROLES = ['sessions_app', 'sessions_auditor', 'sessions_admin'] as const;

/** The schema the migrations create, and dbmate's table within it. */
const SCHEMA = 'sessions';

/** Everything {@link missingMigrationPrivilege} decides on, read in one query. */
export interface MigrationPrivilegeFacts {
  readonly role: string;
  readonly database: string;
  readonly serverVersionNum: number;
  readonly superuser: boolean;
  readonly createRole: boolean;
  readonly connectOnDatabase: boolean;
  /** CREATE on the database: dbmate creates schema `sessions` when it is missing. */
  readonly createOnDatabase: boolean;
  /** The owner of schema `sessions`, or null when it does not exist yet. */
  readonly schemaOwner: string | null;
  /** The role has the privileges of the schema's owner (is it, or inherits from it). */
  readonly ownsSchema: boolean;
  /** Which of {@link SESSIONS_ROLES} do not exist in the cluster. */
  readonly missingRoles: readonly string[];
  /**
   * The role inherits sessions_admin's privileges (and, on PostgreSQL 16+, may SET
   * ROLE to it): needed to hand functions over to it and to replace them later.
   */
  readonly actsAsAdmin: boolean;
  /** ADMIN OPTION on sessions_admin: the right to grant it (PostgreSQL 16+). */
  readonly adminOption: boolean;
}

/** The facts about `client`'s role and database, in one round trip. */
export async function readMigrationPrivilegeFacts(
  client: pg.ClientBase,
): Promise<MigrationPrivilegeFacts> {
  // pg_has_role() takes a role's oid here: its name would fail when the role is missing.
  // 'SET' exists from PostgreSQL 16 on; CASE keeps 15 from evaluating it.
  const result = await client.query<MigrationPrivilegeFacts>(
    `WITH me AS (SELECT rolsuper, rolcreaterole FROM pg_catalog.pg_roles WHERE rolname = current_user),
          schema AS (SELECT nspowner FROM pg_catalog.pg_namespace WHERE nspname = $1),
          admin AS (SELECT oid FROM pg_catalog.pg_roles WHERE rolname = 'sessions_admin')
     SELECT current_user::text AS role,
            current_database()::text AS database,
            current_setting('server_version_num')::int AS "serverVersionNum",
            coalesce((SELECT rolsuper FROM me), false) AS superuser,
            coalesce((SELECT rolcreaterole FROM me), false) AS "createRole",
            has_database_privilege(current_database(), 'CONNECT') AS "connectOnDatabase",
            has_database_privilege(current_database(), 'CREATE') AS "createOnDatabase",
            (SELECT pg_get_userbyid(nspowner)::text FROM schema) AS "schemaOwner",
            coalesce((SELECT pg_has_role(nspowner, 'USAGE') FROM schema), false) AS "ownsSchema",
            ARRAY(SELECT name FROM unnest($2::text[]) AS name
                   WHERE NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = name)
                   ORDER BY name) AS "missingRoles",
            coalesce((SELECT pg_has_role(oid, 'USAGE')
                             AND CASE WHEN current_setting('server_version_num')::int >= 160000
                                      THEN pg_has_role(oid, 'SET') ELSE true END
                        FROM admin), false) AS "actsAsAdmin",
            coalesce((SELECT pg_has_role(oid, 'MEMBER WITH ADMIN OPTION') FROM admin), false)
              AS "adminOption"`,
    [SCHEMA, [...SESSIONS_ROLES]],
  );
  const facts = result.rows[0];
  if (!facts) throw new Error('the privilege query returned no row');
  return facts;
}

/** What the role lacks, with the way to fix it; and whether it must set up roles first. */
export type MigrationPrivilegeVerdict =
  | { readonly ok: true; readonly prepareRoles: boolean }
  | { readonly ok: false; readonly missing: string };

/**
 * Decides whether the role described by `facts` can apply the migrations, as a
 * sentence naming the first thing missing and how to get it.
 *
 * `prepareRoles` says the role can and must create the missing roles, or grant itself
 * sessions_admin, before the migrations run ({@link rolesSql} for itself): on
 * PostgreSQL 16+ a role that creates sessions_admin holds it only WITH ADMIN OPTION,
 * neither inheriting it nor able to SET ROLE, which is not enough to give it functions.
 */
export function missingMigrationPrivilege(
  facts: MigrationPrivilegeFacts,
): MigrationPrivilegeVerdict {
  const role = quoteIdentifier(facts.role);
  const database = quoteIdentifier(facts.database);
  if (facts.superuser) return { ok: true, prepareRoles: false };
  if (!facts.connectOnDatabase) {
    return {
      ok: false,
      missing: `role ${facts.role} lacks CONNECT on database ${facts.database}: GRANT CONNECT ON DATABASE ${database} TO ${role}`,
    };
  }
  if (facts.schemaOwner === null && !facts.createOnDatabase) {
    return {
      ok: false,
      missing: `role ${facts.role} lacks CREATE on database ${facts.database} (to create schema ${SCHEMA}): migrate as the database owner, or GRANT CREATE ON DATABASE ${database} TO ${role}`,
    };
  }
  if (facts.schemaOwner !== null && !facts.ownsSchema) {
    return {
      ok: false,
      missing: `schema ${SCHEMA} belongs to ${facts.schemaOwner}, not ${facts.role}: migrate as ${facts.schemaOwner} (or a role granted it)`,
    };
  }
  const fix = `run \`pg-sessions migrate roles --owner ${facts.role}\` and have a superuser or your DBA execute its SQL once`;
  if (facts.missingRoles.length > 0 && !facts.createRole) {
    return {
      ok: false,
      missing: `role ${facts.role} lacks CREATEROLE to create ${facts.missingRoles.join(', ')}: ${fix}`,
    };
  }
  if (facts.actsAsAdmin) return { ok: true, prepareRoles: facts.missingRoles.length > 0 };
  // Not (fully) a member of sessions_admin: can it grant itself the role?
  const canGrant =
    facts.serverVersionNum >= 160000
      ? facts.adminOption || (facts.createRole && facts.missingRoles.includes('sessions_admin'))
      : facts.createRole;
  if (!canGrant) {
    return {
      ok: false,
      missing: `role ${facts.role} is not a member of sessions_admin and cannot grant it to itself (${
        facts.serverVersionNum >= 160000
          ? 'needs ADMIN OPTION on sessions_admin'
          : 'needs CREATEROLE'
      }): ${fix}`,
    };
  }
  return { ok: true, prepareRoles: true };
}

/**
 * The SQL that prepares a cluster for a migrating role without CREATEROLE: the three
 * NOLOGIN roles, created when missing, and sessions_admin granted to `owner`. A DBA
 * runs it once (as a superuser, or a role with CREATEROLE and ADMIN OPTION on the
 * roles); `migrate up` runs it itself for a role that may.
 *
 * @example
 * process.stdout.write(rolesSql('app_owner'));
 */
export function rolesSql(owner: string): string {
  const creates = SESSIONS_ROLES.map(
    (name) =>
      `  IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = '${name}') THEN\n    CREATE ROLE ${name} NOLOGIN;\n  END IF;`,
  ).join('\n');
  return `-- pg-sessions: roles for migrating as ${owner} (once per cluster; safe to repeat)
DO $$
BEGIN
${creates}
END
$$;
GRANT sessions_admin TO ${quoteIdentifier(owner)};
`;
}

/** An identifier as SQL spells it, double-quoted (a role may be called `user`). */
export function quoteIdentifier(name: string): string {
  return `"${name.replaceAll('"', '""')}"`;
}
