import pg from 'pg';
import { resolveConnectionConfig } from '../db/connection-config.js';

/**
 * A readable, deterministic listing of everything in schema `sessions` (tables,
 * columns, constraints, indexes, triggers, functions, views, policies, grants),
 * built from the catalogs so that it needs no pg_dump (the embedded server has
 * none, and Debian's pg_dump 15 refuses newer servers). Committed as schema.sql;
 * the tests fail when a migration changes the schema without updating it.
 */
export async function schemaSnapshot(url: string, schema = 'sessions'): Promise<string> {
  const client = new pg.Client(await resolveConnectionConfig(url));
  await client.connect();
  try {
    const sections: string[] = [];
    const add = async (title: string, query: string) => {
      const result = await client.query<{ line: string }>(query, [schema]);
      sections.push(`-- ${title}\n${result.rows.map((row) => row.line).join('\n')}`);
    };
    await add(
      'tables (row-level security: enabled, forced)',
      `SELECT format('TABLE %s (rls=%s, forced=%s)', c.relname, c.relrowsecurity, c.relforcerowsecurity) AS line
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = $1 AND c.relkind IN ('r', 'p') AND c.relname <> 'schema_migrations'
        ORDER BY c.relname`,
    );
    await add(
      'columns',
      `SELECT format('%s.%s %s%s%s%s', c.relname, a.attname, format_type(a.atttypid, a.atttypmod),
                     CASE WHEN a.attnotnull THEN ' NOT NULL' ELSE '' END,
                     CASE WHEN a.attidentity <> '' THEN ' IDENTITY' ELSE '' END,
                     CASE WHEN d.adbin IS NOT NULL THEN
                       CASE WHEN a.attgenerated = 's' THEN ' GENERATED ' ELSE ' DEFAULT ' END
                       || pg_get_expr(d.adbin, d.adrelid) ELSE '' END) AS line
         FROM pg_attribute a
         JOIN pg_class c ON c.oid = a.attrelid
         JOIN pg_namespace n ON n.oid = c.relnamespace
         LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
        WHERE n.nspname = $1 AND c.relkind IN ('r', 'p', 'v') AND a.attnum > 0 AND NOT a.attisdropped
          AND c.relname <> 'schema_migrations'
        ORDER BY c.relname, a.attnum`,
    );
    await add(
      'constraints',
      `SELECT format('%s %s: %s', c.relname, con.conname, pg_get_constraintdef(con.oid)) AS line
         FROM pg_constraint con JOIN pg_class c ON c.oid = con.conrelid
         JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = $1 AND c.relname <> 'schema_migrations'
          -- PostgreSQL 18 also catalogs NOT NULL as constraints; the columns list shows them.
          AND con.contype <> 'n'
        ORDER BY c.relname, con.conname`,
    );
    await add(
      'indexes',
      `SELECT pg_get_indexdef(i.indexrelid) AS line
         FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid
         JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = $1 AND c.relname <> 'schema_migrations'
        ORDER BY 1`,
    );
    await add(
      'triggers',
      `SELECT pg_get_triggerdef(t.oid) AS line
         FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
         JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = $1 AND NOT t.tgisinternal
        ORDER BY c.relname, t.tgname`,
    );
    await add(
      'policies',
      `SELECT format('POLICY %s ON %s FOR %s TO %s USING (%s) WITH CHECK (%s)', policyname, tablename, cmd,
                     array_to_string(roles, ','), coalesce(qual, ''), coalesce(with_check, '')) AS line
         FROM pg_policies WHERE schemaname = $1 ORDER BY tablename, policyname`,
    );
    await add(
      'functions (owner, security definer, configuration)',
      `SELECT format('FUNCTION %s(%s) RETURNS %s owner=%s definer=%s config=%s',
                     p.proname, pg_get_function_identity_arguments(p.oid), pg_get_function_result(p.oid),
                     pg_get_userbyid(p.proowner), p.prosecdef, coalesce(array_to_string(p.proconfig, ','), ''))
              || E'\\n' || regexp_replace(p.prosrc, '^\\s+|\\s+$', '', 'g') AS line
         FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
        WHERE n.nspname = $1
        ORDER BY p.proname, pg_get_function_identity_arguments(p.oid)`,
    );
    await add(
      'views (columns above; definitions as written are in migrations/)',
      `SELECT format('VIEW %s options=%s', c.relname, coalesce(array_to_string(c.reloptions, ','), '')) AS line
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = $1 AND c.relkind = 'v' ORDER BY c.relname`,
    );
    await add(
      'table and view privileges',
      `SELECT format('GRANT %s ON %s TO %s', string_agg(DISTINCT a.privilege_type, ', ' ORDER BY a.privilege_type),
                     c.relname, pg_get_userbyid(a.grantee)) AS line
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace,
              aclexplode(c.relacl) a
        WHERE n.nspname = $1 AND a.grantee <> c.relowner AND a.grantee <> 0
        GROUP BY c.relname, a.grantee
        ORDER BY 1`,
    );
    await add(
      'column privileges',
      `SELECT format('GRANT %s (%s) ON %s TO %s', a.privilege_type,
                     string_agg(att.attname, ', ' ORDER BY att.attnum), c.relname, pg_get_userbyid(a.grantee)) AS line
         FROM pg_attribute att JOIN pg_class c ON c.oid = att.attrelid
         JOIN pg_namespace n ON n.oid = c.relnamespace,
              aclexplode(att.attacl) a
        WHERE n.nspname = $1 AND att.attacl IS NOT NULL
        GROUP BY c.relname, a.privilege_type, a.grantee
        ORDER BY 1`,
    );
    await add(
      'function privileges',
      `SELECT format('GRANT EXECUTE ON %s(%s) TO %s', p.proname, pg_get_function_identity_arguments(p.oid),
                     CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE pg_get_userbyid(a.grantee) END) AS line
         FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace,
              aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) a
        WHERE n.nspname = $1 AND a.grantee <> p.proowner
        ORDER BY 1`,
    );
    return `-- Schema "${schema}" after all migrations: generated by \`npm run schema:dump\`, checked by the tests.\n\n${sections.join('\n\n')}\n`;
  } finally {
    await client.end();
  }
}
