import { createHash, randomBytes } from 'node:crypto';
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import pg from 'pg';
import { resolveConnectionConfig } from '../db/connection-config.js';
import { MIGRATIONS_DIR, migrate } from '../db/migrator.js';
import { delay } from './postgres-server.js';
import { type TestServer, testServer } from './test-server.js';

/** An isolated database on the test server, dropped by `drop()`. */
export interface TestDatabase {
  /** Superuser URL of this database (bypasses row-level security). */
  readonly url: string;
  /** URL of a login role that is a member of `sessions_app`: what the middleware should use. */
  readonly appUrl: string;
  /** URL of a login role that is a member of `sessions_auditor`. */
  readonly auditorUrl: string;
  readonly name: string;
  readonly server: TestServer;
  /** Drops the database, ending any connection still open to it. */
  drop(): Promise<void>;
}

export interface TestDatabaseOptions {
  /** Apply the package's migrations (copied from a migrated template, which is fast). @default true */
  readonly migrated?: boolean;
}

/**
 * A fresh database for one test file (or one test): a copy of a template migrated
 * once per server and migration set, or an empty one with `migrated: false`.
 * With `PG_SESSIONS_TEST_CITUS=1`, a database on a Citus cluster started once per
 * process, migrated and distributed (`npm run test:citus`).
 *
 * @example
 * const db = await createTestDatabase();
 * test.after.always(() => db.drop());
 */
export async function createTestDatabase(options: TestDatabaseOptions = {}): Promise<TestDatabase> {
  if (process.env.PG_SESSIONS_TEST_CITUS === '1') {
    // Imported lazily: only this mode needs Citus, and that module imports this one.
    const { createCitusTestDatabase } = await import('./citus-test-database.js');
    return createCitusTestDatabase(options);
  }
  const server = await testServer();
  const template = options.migrated === false ? 'template0' : await migratedTemplate(server);
  const name = `pgs_test_${process.pid}_${randomBytes(4).toString('hex')}`;
  await withAdmin(server.adminUrl, async (admin) => {
    // Copying a template fails while another session is connected to it; that is brief.
    for (let attempt = 0; ; attempt++) {
      try {
        await admin.query(`CREATE DATABASE ${quote(name)} TEMPLATE ${quote(template)}`);
        return;
      } catch (error) {
        if ((error as { code?: string }).code !== '55006' || attempt > 50) throw error;
        await delay(100);
      }
    }
  });
  return testDatabase(server, name, () =>
    withAdmin(server.adminUrl, async (admin) => {
      await admin.query(`DROP DATABASE IF EXISTS ${quote(name)} WITH (FORCE)`);
    }),
  );
}

/** The database `name` on `server` as a test sees it: its URLs as superuser, app and auditor. */
export function testDatabase(
  server: TestServer,
  name: string,
  drop: () => Promise<void>,
): TestDatabase {
  const url = databaseUrl(server.adminUrl, name);
  return {
    url,
    appUrl: withCredentials(url, TEST_APP_ROLE),
    auditorUrl: withCredentials(url, TEST_AUDITOR_ROLE),
    name,
    server,
    drop,
  };
}

const templates = new Map<string, Promise<string>>();

/** The template's name carries a hash of the migrations, so a changed migration makes a new one. */
function migratedTemplate(server: TestServer): Promise<string> {
  let template = templates.get(server.adminUrl);
  if (!template) {
    template = buildTemplate(server).catch((error: unknown) => {
      templates.delete(server.adminUrl);
      throw error;
    });
    templates.set(server.adminUrl, template);
  }
  return template;
}

async function buildTemplate(server: TestServer): Promise<string> {
  const name = `pgs_tpl_${await migrationsHash()}`;
  await withAdmin(server.adminUrl, async (admin) => {
    // Several test processes may share one server (PG_TEST_URL): build it once.
    await admin.query('SELECT pg_advisory_lock(hashtext($1))', [name]);
    try {
      const exists = await admin.query('SELECT 1 FROM pg_database WHERE datname = $1', [name]);
      if (exists.rowCount) return;
      const building = `${name}_building`;
      await admin.query(`DROP DATABASE IF EXISTS ${quote(building)} WITH (FORCE)`);
      await admin.query(`CREATE DATABASE ${quote(building)} TEMPLATE template0`);
      const result = await migrate(databaseUrl(server.adminUrl, building), 'up');
      if (result.exitCode !== 0)
        throw new Error(`migrating the test template failed:\n${result.output}`);
      await createLoginRoles(admin);
      await admin.query(`ALTER DATABASE ${quote(building)} RENAME TO ${quote(name)}`);
      await admin.query(`ALTER DATABASE ${quote(name)} WITH IS_TEMPLATE true`);
    } finally {
      await admin.query('SELECT pg_advisory_unlock(hashtext($1))', [name]);
    }
  });
  return name;
}

/** Login roles for the tests, members of the schema's NOLOGIN roles (cluster-wide, made once). */
export const TEST_APP_ROLE = 'pgs_test_app';
export const TEST_AUDITOR_ROLE = 'pgs_test_auditor';
const TEST_ROLE_PASSWORD = 'pgs_test';

export async function createLoginRoles(admin: pg.Client): Promise<void> {
  for (const [login, member] of [
    [TEST_APP_ROLE, 'sessions_app'],
    [TEST_AUDITOR_ROLE, 'sessions_auditor'],
  ] as const) {
    const exists = await admin.query('SELECT 1 FROM pg_roles WHERE rolname = $1', [login]);
    if (!exists.rowCount) {
      await admin.query(
        `CREATE ROLE ${quote(login)} LOGIN PASSWORD '${TEST_ROLE_PASSWORD}' IN ROLE ${quote(member)}`,
      );
    }
  }
}

function withCredentials(url: string, role: string): string {
  const parsed = new URL(url);
  parsed.username = role;
  parsed.password = TEST_ROLE_PASSWORD;
  return parsed.toString();
}

async function migrationsHash(): Promise<string> {
  const hash = createHash('sha256');
  for (const file of (await readdir(MIGRATIONS_DIR)).sort()) {
    hash.update(file).update(await readFile(join(MIGRATIONS_DIR, file)));
  }
  return hash.digest('hex').slice(0, 16);
}

async function withAdmin<T>(adminUrl: string, work: (client: pg.Client) => Promise<T>): Promise<T> {
  const client = new pg.Client(await resolveConnectionConfig(adminUrl));
  client.on('error', () => {});
  await client.connect();
  try {
    return await work(client);
  } finally {
    await client.end();
  }
}

/** The same server URL pointing at another database. */
export function databaseUrl(serverUrl: string, database: string): string {
  const url = new URL(serverUrl);
  url.pathname = `/${encodeURIComponent(database)}`;
  return url.toString();
}

export function quote(identifier: string): string {
  return `"${identifier.replaceAll('"', '""')}"`;
}
