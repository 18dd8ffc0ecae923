import pg from 'pg';
import { resolveConnectionConfig } from '../db/connection-config.js';

/**
 * Schema `sessions` as SQL, every object with its definition: roles, the schema,
 * tables (columns, defaults, constraints, storage parameters, indexes, row-level security, policies),
 * functions with their bodies, triggers, views with their queries, ownership,
 * privileges and comments. Committed as schema.sql; the tests fail when a migration
 * changes the schema without it.
 *
 * Built from the catalogs (pg_get_functiondef, pg_get_viewdef, …) because the embedded
 * server ships no pg_dump and Debian's pg_dump 15 refuses newer servers. The text is
 * the same on PostgreSQL 15 and 18: NOT NULL constraint rows (18) are left to the
 * columns, the owner's own privileges (18 adds MAINTAIN) are left out, and view
 * queries are printed as 16 and later print them (see {@link viewQuery}). The role that
 * ran the migrations owns the schema; it is never named, so the text does not depend
 * on who migrated.
 */
export async function schemaSnapshot(url: string, schema = 'sessions'): Promise<string> {
  const client = new pg.Client(await resolveConnectionConfig(url));
  // A backend ended under us (database dropped WITH (FORCE), server stopping) must
  // reject the pending query, not crash the process.
  client.on('error', () => {});
  await client.connect();
  try {
    const rows = async <T>(query: string): Promise<T[]> =>
      (await client.query(query, [schema])).rows as T[];
    const version = await client.query<{ v: string }>(
      `SELECT current_setting('server_version_num') AS v`,
    );
    const major = Math.floor(Number(version.rows[0]?.v) / 10_000);
    const out: string[] = [
      `-- Schema "${schema}" as migrations/ leave it, every object with its definition.`,
      '-- Generated from the catalogs by `npm run schema:dump` (PostgreSQL 15 and 18 give this',
      '-- same text) and checked by tests/schema.test.ts. To install, run `pg-sessions migrate up`.',
      '-- Objects without an OWNER TO line belong to the role that ran the migrations.',
    ];

    out.push(
      '',
      '-- Roles are cluster-wide: the migrations create them only when missing, and grant',
      '-- sessions_admin to the migrating role unless it is a member already.',
    );
    for (const { line } of await rows<{ line: string }>(ROLES)) out.push(line);

    out.push('', `CREATE SCHEMA ${ident(schema)};`);
    for (const { line } of await rows<{ line: string }>(SCHEMA_GRANTS)) out.push(line);

    const columns = await rows<{ rel: string; line: string }>(COLUMNS);
    const constraints = await rows<{ rel: string; line: string }>(CONSTRAINTS);
    const indexes = await rows<{ rel: string; line: string }>(INDEXES);
    const policies = await rows<{ rel: string; line: string }>(POLICIES);
    const grants = await rows<{ rel: string; line: string }>(RELATION_GRANTS);
    const owners = await rows<{ rel: string; line: string }>(RELATION_OWNERS);
    const of = (list: { rel: string; line: string }[], rel: string) =>
      list.filter((row) => row.rel === rel).map((row) => row.line);

    for (const table of await rows<{
      rel: string;
      rls: boolean;
      forced: boolean;
      options: string | null;
    }>(TABLES)) {
      const body = [...of(columns, table.rel), ...of(constraints, table.rel)];
      // Storage parameters (autovacuum's, say) as pg_dump prints them.
      const options = table.options ? ` WITH (${table.options})` : '';
      out.push('', `CREATE TABLE ${table.rel} (\n    ${body.join(',\n    ')}\n)${options};`);
      out.push(...of(owners, table.rel), ...of(indexes, table.rel));
      if (table.rls) out.push(`ALTER TABLE ${table.rel} ENABLE ROW LEVEL SECURITY;`);
      if (table.forced) out.push(`ALTER TABLE ${table.rel} FORCE ROW LEVEL SECURITY;`);
      out.push(...of(policies, table.rel), ...of(grants, table.rel));
    }

    const functionGrants = await rows<{ fn: string; line: string }>(FUNCTION_GRANTS);
    for (const fn of await rows<{ fn: string; def: string; owner: string | null }>(FUNCTIONS)) {
      out.push('', `${fn.def.trimEnd()};`);
      if (fn.owner) out.push(fn.owner);
      out.push(...functionGrants.filter((row) => row.fn === fn.fn).map((row) => row.line));
    }

    const triggers = await rows<{ line: string }>(TRIGGERS);
    if (triggers.length > 0) out.push('', ...triggers.map((row) => `${row.line};`));

    for (const view of await rows<{ rel: string; options: string | null; query: string }>(VIEWS)) {
      const options = view.options ? ` WITH (${view.options})` : '';
      out.push('', `CREATE VIEW ${view.rel}${options} AS\n${viewQuery(view.query, major)}`);
      out.push(...of(owners, view.rel), ...of(grants, view.rel));
    }

    const comments = await rows<{ line: string }>(COMMENTS);
    if (comments.length > 0) out.push('', ...comments.map((row) => row.line));

    return `${out.join('\n')}\n`;
  } finally {
    await client.end();
  }
}

function ident(name: string): string {
  return /^[a-z_][a-z0-9_]*$/.test(name) ? name : `"${name.replaceAll('"', '""')}"`;
}

/**
 * pg_get_viewdef's text, as PostgreSQL 16 and later print it. Up to 15 a view's query
 * also listed the rule's OLD and NEW relations, so its top level always qualified
 * columns with their relation (`session.user_id`); from 16 a top level reading one
 * relation does not. Subqueries and CTEs are printed alike by both. So on 15, when the
 * top-level SELECT reads a single relation, that relation's qualifier is removed from
 * the top level only.
 */
export function viewQuery(query: string, majorVersion: number): string {
  if (majorVersion >= 16) return query;
  // pg_get_viewdef (pretty) closes the last CTE with this line, then the top level.
  const cteEnd = query.lastIndexOf('\n        )\n SELECT ');
  const start = query.startsWith(' WITH ') && cteEnd >= 0 ? cteEnd + '\n        )\n'.length : 0;
  const top = query.slice(start);
  const from = /\n {3}FROM ([\w.]+)(?: (\w+))?(?=\n|;)/.exec(top);
  if (!from || /\n {5}(?:\w+ )*JOIN /.test(top)) return query;
  const qualifier = from[2] ?? (from[1] as string).split('.').pop();
  const qualified = new RegExp(`(?<![\\w."])${qualifier}\\.(?=[a-z_"])`, 'g');
  return query.slice(0, start) + top.replace(qualified, '');
}

// Every query takes the schema name as $1.

const ROLES = `
SELECT format('CREATE ROLE %I %s;', rolname, concat_ws(' ',
         CASE WHEN rolcanlogin THEN 'LOGIN' ELSE 'NOLOGIN' END,
         CASE WHEN rolsuper THEN 'SUPERUSER' END, CASE WHEN rolcreatedb THEN 'CREATEDB' END,
         CASE WHEN rolcreaterole THEN 'CREATEROLE' END, CASE WHEN NOT rolinherit THEN 'NOINHERIT' END,
         CASE WHEN rolreplication THEN 'REPLICATION' END, CASE WHEN rolbypassrls THEN 'BYPASSRLS' END)) AS line
  FROM pg_roles WHERE rolname LIKE $1 || '\\_%' ORDER BY rolname`;

// Privileges of everyone but the owner, one statement per grantee (and grant option).
const PRIVILEGES = (acl: string) => `
  SELECT CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(a.grantee)) END AS grantee,
         string_agg(a.privilege_type, ', ' ORDER BY array_position(
           ARRAY['SELECT','INSERT','UPDATE','DELETE','TRUNCATE','REFERENCES','TRIGGER','MAINTAIN',
                 'USAGE','CREATE','EXECUTE'], a.privilege_type)) AS privileges,
         CASE WHEN a.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END AS grantable
    FROM aclexplode(${acl}) a`;

const SCHEMA_GRANTS = `
SELECT format('GRANT %s ON SCHEMA %I TO %s%s;', p.privileges, n.nspname, p.grantee, p.grantable) AS line
  FROM pg_namespace n,
       LATERAL (${PRIVILEGES('n.nspacl')} WHERE a.grantee <> n.nspowner
                GROUP BY a.grantee, a.is_grantable) p
 WHERE n.nspname = $1
 ORDER BY p.grantee`;

const RELATIONS = `
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = $1`;

const TABLES = `
SELECT format('%I.%I', n.nspname, c.relname) AS rel, c.relrowsecurity AS rls, c.relforcerowsecurity AS forced,
       (SELECT string_agg(o, ', ' ORDER BY o) FROM unnest(c.reloptions) o) AS options
${RELATIONS} AND c.relkind IN ('r', 'p')
 ORDER BY c.relname`;

const COLUMNS = `
SELECT format('%I.%I', n.nspname, c.relname) AS rel,
       format('%I %s', a.attname, concat_ws(' ', format_type(a.atttypid, a.atttypmod),
         CASE a.attidentity WHEN 'a' THEN 'GENERATED ALWAYS AS IDENTITY'
                            WHEN 'd' THEN 'GENERATED BY DEFAULT AS IDENTITY' END,
         CASE WHEN a.attgenerated = 's' THEN format('GENERATED ALWAYS AS (%s) STORED', pg_get_expr(d.adbin, d.adrelid))
              WHEN d.adbin IS NOT NULL THEN 'DEFAULT ' || pg_get_expr(d.adbin, d.adrelid) END,
         CASE WHEN a.attnotnull THEN 'NOT NULL' END)) AS line
  FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
  JOIN pg_namespace n ON n.oid = c.relnamespace
  LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
 WHERE n.nspname = $1 AND c.relkind IN ('r', 'p') AND a.attnum > 0 AND NOT a.attisdropped
 ORDER BY c.relname, a.attnum`;

// NOT NULL is shown on the columns (PostgreSQL 18 also catalogs it as constraints).
const CONSTRAINTS = `
SELECT format('%I.%I', n.nspname, c.relname) AS rel,
       format('CONSTRAINT %I %s', con.conname, pg_get_constraintdef(con.oid)) AS line
  FROM pg_constraint con JOIN pg_class c ON c.oid = con.conrelid
  JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = $1
   AND con.contype <> 'n'
 ORDER BY c.relname, con.contype = 'c', con.conname`;

// Indexes that back a constraint are shown by the constraint.
const INDEXES = `
SELECT format('%I.%I', n.nspname, c.relname) AS rel, pg_get_indexdef(i.indexrelid) || ';' AS line
  FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid
  JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = $1
   AND NOT EXISTS (SELECT FROM pg_constraint con WHERE con.conindid = i.indexrelid AND con.conrelid = i.indrelid)
 ORDER BY c.relname, i.indexrelid::regclass::text`;

const POLICIES = `
SELECT format('%I.%I', n.nspname, c.relname) AS rel,
       concat_ws(' ', format('CREATE POLICY %I ON %I.%I', p.polname, n.nspname, c.relname),
         CASE WHEN NOT p.polpermissive THEN 'AS RESTRICTIVE' END,
         CASE p.polcmd WHEN 'r' THEN 'FOR SELECT' WHEN 'a' THEN 'FOR INSERT' WHEN 'w' THEN 'FOR UPDATE'
                       WHEN 'd' THEN 'FOR DELETE' END,
         CASE WHEN p.polroles <> '{0}' THEN 'TO ' || (SELECT string_agg(quote_ident(pg_get_userbyid(r)), ', ' ORDER BY 1)
                                                       FROM unnest(p.polroles) r) END,
         'USING (' || pg_get_expr(p.polqual, p.polrelid) || ')',
         'WITH CHECK (' || pg_get_expr(p.polwithcheck, p.polrelid) || ')') || ';' AS line
  FROM pg_policy p JOIN pg_class c ON c.oid = p.polrelid
  JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = $1
 ORDER BY c.relname, p.polname`;

// Table privileges, then column privileges (in column order).
const RELATION_GRANTS = `
SELECT rel, line FROM (
  SELECT format('%I.%I', n.nspname, c.relname) AS rel, c.relname, 0 AS part, p.grantee,
         format('GRANT %s ON TABLE %I.%I TO %s%s;', p.privileges, n.nspname, c.relname, p.grantee, p.grantable) AS line
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace,
         LATERAL (${PRIVILEGES('c.relacl')} WHERE a.grantee <> c.relowner GROUP BY a.grantee, a.is_grantable) p
   WHERE n.nspname = $1
  UNION ALL
  SELECT format('%I.%I', n.nspname, c.relname), c.relname, 1, g.grantee,
         format('GRANT %s (%s) ON TABLE %I.%I TO %s%s;', g.privilege,
                string_agg(quote_ident(g.attname), ', ' ORDER BY g.attnum), n.nspname, c.relname, g.grantee, g.grantable)
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace,
         LATERAL (SELECT att.attname, att.attnum, a.privilege_type AS privilege,
                         CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(a.grantee)) END AS grantee,
                         CASE WHEN a.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END AS grantable
                    FROM pg_attribute att, aclexplode(att.attacl) a
                   WHERE att.attrelid = c.oid AND att.attacl IS NOT NULL AND a.grantee <> c.relowner) g
   WHERE n.nspname = $1
   GROUP BY n.nspname, c.relname, g.privilege, g.grantee, g.grantable
) grants
ORDER BY relname, part, grantee, line`;

// Ownership is shown where it is not the migrating role (the schema's owner).
const RELATION_OWNERS = `
SELECT format('%I.%I', n.nspname, c.relname) AS rel,
       format('ALTER %s %I.%I OWNER TO %I;', CASE c.relkind WHEN 'v' THEN 'VIEW' ELSE 'TABLE' END,
              n.nspname, c.relname, pg_get_userbyid(c.relowner)) AS line
${RELATIONS} AND c.relkind IN ('r', 'p', 'v') AND c.relowner <> n.nspowner`;

const FUNCTIONS = `
SELECT p.oid::regprocedure::text AS fn, pg_get_functiondef(p.oid) AS def,
       CASE WHEN p.proowner <> n.nspowner THEN
         format('ALTER FUNCTION %s OWNER TO %I;', p.oid::regprocedure, pg_get_userbyid(p.proowner)) END AS owner
  FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
 WHERE n.nspname = $1
 ORDER BY p.proname, pg_get_function_identity_arguments(p.oid)`;

// New functions are executable by PUBLIC: say so when that was taken away.
const FUNCTION_GRANTS = `
SELECT p.oid::regprocedure::text AS fn, line FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace,
  LATERAL (
    SELECT 0 AS part, format('REVOKE EXECUTE ON FUNCTION %s FROM PUBLIC;', p.oid::regprocedure) AS line
     WHERE NOT EXISTS (SELECT FROM aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) a
                        WHERE a.grantee = 0 AND a.privilege_type = 'EXECUTE')
    UNION ALL
    SELECT 1, format('GRANT %s ON FUNCTION %s TO %s%s;', g.privileges, p.oid::regprocedure, g.grantee, g.grantable)
      FROM (${PRIVILEGES("coalesce(p.proacl, acldefault('f', p.proowner))")}
             WHERE a.grantee <> p.proowner GROUP BY a.grantee, a.is_grantable) g
  ) lines
 WHERE n.nspname = $1
 ORDER BY p.proname, part, line`;

const TRIGGERS = `
SELECT pg_get_triggerdef(t.oid) AS line
  FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
  JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = $1
   AND NOT t.tgisinternal
 ORDER BY c.relname, t.tgname`;

const VIEWS = `
SELECT format('%I.%I', n.nspname, c.relname) AS rel, pg_get_viewdef(c.oid, true) AS query,
       (SELECT string_agg(split_part(o, '=', 1) || ' = ' || substr(o, strpos(o, '=') + 1), ', ')
          FROM unnest(c.reloptions) o) AS options
${RELATIONS} AND c.relkind = 'v'
 ORDER BY c.relname`;

const COMMENTS = `
SELECT line FROM (
  SELECT 0 AS part, '' AS name, format('COMMENT ON SCHEMA %I IS %L;', n.nspname, d.description) AS line
    FROM pg_namespace n JOIN pg_description d ON d.objoid = n.oid AND d.classoid = 'pg_namespace'::regclass
   WHERE n.nspname = $1
  UNION ALL
  SELECT 1, c.relname || coalesce('.' || a.attname, ''),
         CASE WHEN d.objsubid = 0 THEN
                format('COMMENT ON %s %I.%I IS %L;', CASE c.relkind WHEN 'v' THEN 'VIEW' WHEN 'i' THEN 'INDEX'
                       WHEN 'S' THEN 'SEQUENCE' ELSE 'TABLE' END, n.nspname, c.relname, d.description)
              ELSE format('COMMENT ON COLUMN %I.%I.%I IS %L;', n.nspname, c.relname, a.attname, d.description) END
    FROM pg_description d JOIN pg_class c ON d.classoid = 'pg_class'::regclass AND d.objoid = c.oid
    JOIN pg_namespace n ON n.oid = c.relnamespace
    LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = d.objsubid AND d.objsubid > 0
   WHERE n.nspname = $1
  UNION ALL
  SELECT 2, p.oid::regprocedure::text, format('COMMENT ON FUNCTION %s IS %L;', p.oid::regprocedure, d.description)
    FROM pg_description d JOIN pg_proc p ON d.classoid = 'pg_proc'::regclass AND d.objoid = p.oid
    JOIN pg_namespace n ON n.oid = p.pronamespace
   WHERE n.nspname = $1
  UNION ALL
  SELECT 3, c.relname || '.' || con.conname,
         format('COMMENT ON CONSTRAINT %I ON %I.%I IS %L;', con.conname, n.nspname, c.relname, d.description)
    FROM pg_description d JOIN pg_constraint con ON d.classoid = 'pg_constraint'::regclass AND d.objoid = con.oid
    JOIN pg_class c ON c.oid = con.conrelid JOIN pg_namespace n ON n.oid = c.relnamespace
   WHERE n.nspname = $1
  UNION ALL
  SELECT 4, c.relname || '.' || t.tgname,
         format('COMMENT ON TRIGGER %I ON %I.%I IS %L;', t.tgname, n.nspname, c.relname, d.description)
    FROM pg_description d JOIN pg_trigger t ON d.classoid = 'pg_trigger'::regclass AND d.objoid = t.oid
    JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace
   WHERE n.nspname = $1
  UNION ALL
  SELECT 5, c.relname || '.' || p.polname,
         format('COMMENT ON POLICY %I ON %I.%I IS %L;', p.polname, n.nspname, c.relname, d.description)
    FROM pg_description d JOIN pg_policy p ON d.classoid = 'pg_policy'::regclass AND d.objoid = p.oid
    JOIN pg_class c ON c.oid = p.polrelid JOIN pg_namespace n ON n.oid = c.relnamespace
   WHERE n.nspname = $1
) comments
ORDER BY part, name`;
