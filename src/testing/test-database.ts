import { createHash, randomBytes } from 'node:crypto';
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import pg from 'pg';
import { MIGRATIONS_DIR, migrate } from '../db/migrator.js';
import { delay } from './postgres-server.js';
import { type TestServer, testServer } from './test-server.js';

/** An isolated database on the test server, dropped by `drop()`. */
export interface TestDatabase {
  /** Superuser URL of this database. */
  readonly url: string;
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
 *
 * @example
 * const db = await createTestDatabase();
 * test.after.always(() => db.drop());
 */
export async function createTestDatabase(options: TestDatabaseOptions = {}): Promise<TestDatabase> {
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
  return {
    url: databaseUrl(server.adminUrl, name),
    name,
    server,
    drop: () =>
      withAdmin(server.adminUrl, async (admin) => {
        await admin.query(`DROP DATABASE IF EXISTS ${quote(name)} WITH (FORCE)`);
      }),
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
      await admin.query(`ALTER DATABASE ${quote(building)} RENAME TO ${quote(name)}`);
      await admin.query(`ALTER DATABASE ${quote(name)} WITH IS_TEMPLATE true`);
    } finally {
      await admin.query('SELECT pg_advisory_unlock(hashtext($1))', [name]);
    }
  });
  return name;
}

async function migrationsHash(): Promise<string> {
  const hash = createHash('sha256');
  for (const file of (await readdir(MIGRATIONS_DIR)).sort()) {
    hash.update(file).update(await readFile(join(MIGRATIONS_DIR, file)));
  }
  return hash.digest('hex').slice(0, 16);
}

async function withAdmin<T>(adminUrl: string, work: (client: pg.Client) => Promise<T>): Promise<T> {
  const client = new pg.Client({ connectionString: adminUrl });
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

function quote(identifier: string): string {
  return `"${identifier.replaceAll('"', '""')}"`;
}
