import { spawn } from 'node:child_process';
import { readdir } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import { resolveBinary } from 'dbmate';
import pg from 'pg';
import {
  connectionTarget,
  negotiatedSslMode,
  resolveConnectionConfig,
} from './connection-config.js';
import {
  type MigrationPrivilegeFacts,
  missingMigrationPrivilege,
  readMigrationPrivilegeFacts,
  rolesSql,
} from './migration-privileges.js';

/** The package's own migrations, shipped in the package next to `src/`/`dist/`. */
export const MIGRATIONS_DIR = fileURLToPath(
  new URL(findPackageRoot('migrations'), import.meta.url),
);

/** dbmate's bookkeeping table, inside our schema so it never meets the application's own. */
export const MIGRATIONS_TABLE = 'sessions.schema_migrations';

/**
 * Session-level advisory lock held around dbmate (which takes none), so that deploys
 * racing to migrate run one after the other. Two int4 keys: 'pgse' and 1.
 */
export const MIGRATION_LOCK: readonly [number, number] = [0x70677365, 1];

export type MigrateAction = 'up' | 'down' | 'status';

export interface MigrateOptions {
  /** For `down`: how many migrations to roll back. @default 1 */
  readonly steps?: number;
  /** Receives dbmate's output as it comes. @default collected only */
  readonly onOutput?: (text: string) => void;
}

export interface MigrateResult {
  /** 0 on success; for `status`, 1 while migrations are pending. */
  readonly exitCode: number;
  /** dbmate's output, stdout and stderr as they came. */
  readonly output: string;
  /** For `up`: the migration files this run applied, in order. */
  readonly applied: readonly string[];
  /** For `up`: how many migrations are recorded once it ended. */
  readonly appliedCount: number;
  /** dbmate's error, from its `Error: …` line, when it failed. */
  readonly error?: DbmateError;
}

/** Why dbmate failed, parsed from its output. */
export interface DbmateError {
  /** The message without dbmate's `Error: ` and lib/pq's `pq: ` prefixes. */
  readonly message: string;
  /** The migration file being applied or rolled back when it failed, if any. */
  readonly migration?: string;
}

/** A connection or input problem the CLI reports in one line. */
export class MigrationError extends Error {
  override readonly name: string = 'MigrationError';
}

/** The connected role lacks a privilege the pending migrations need: nothing was applied. */
export class MigrationPrivilegeError extends MigrationError {
  override readonly name = 'MigrationPrivilegeError';
  constructor(
    message: string,
    readonly facts: MigrationPrivilegeFacts,
  ) {
    super(message);
  }
}

// Compiled code lives one level deeper (dist/src/db) than the sources (src/db).
function findPackageRoot(folder: string): string {
  return import.meta.url.includes('/dist/src/') ? `../../../${folder}/` : `../../${folder}/`;
}

/** Versions of the migrations this code expects, ascending (the file names' numeric prefixes). */
export async function expectedMigrationVersions(): Promise<string[]> {
  const files = await readdir(MIGRATIONS_DIR);
  return files
    .filter((file) => /^\d+_.+\.sql$/.test(file))
    .map((file) => file.split('_')[0] as string)
    .sort();
}

/**
 * Runs dbmate (`migrate --strict`, `rollback`, `status --exit-code`) against `url`
 * with the package's migrations, holding {@link MIGRATION_LOCK} for the duration.
 *
 * Before `up` applies anything it checks the role's privileges against what the
 * migrations need and throws {@link MigrationPrivilegeError} (nothing applied) when
 * one is missing; a role that may create the `sessions_*` roles, or grant itself
 * sessions_admin, does that first. Each migration runs in its own transaction.
 *
 * @example
 * await migrate(process.env.DATABASE_URL!, 'up');
 */
export async function migrate(
  url: string,
  action: MigrateAction,
  options: MigrateOptions = {},
): Promise<MigrateResult> {
  let lockClient: pg.Client;
  let dbmateUrl: string;
  try {
    lockClient = new pg.Client(
      await resolveConnectionConfig({ connectionString: url, connectionTimeoutMillis: 10_000 }),
    );
    lockClient.on('error', () => {});
    await lockClient.connect();
    // After the lock connection: the server's answer about TLS is cached by now.
    dbmateUrl = await forDbmate(url);
  } catch (error) {
    throw new MigrationError(`cannot connect to ${describeUrl(url)}: ${messageOf(error)}`, {
      cause: error,
    });
  }
  try {
    await lockClient.query('SELECT pg_advisory_lock($1, $2)', [...MIGRATION_LOCK]);
    if (action === 'down') {
      const steps = options.steps ?? 1;
      let output = '';
      for (let step = 0; step < steps; step++) {
        if ((await appliedVersions(lockClient)).length === 0) break;
        const result = await runDbmate(dbmateUrl, ['rollback'], options.onOutput);
        output += result.output;
        if (result.exitCode !== 0) return { ...result, output };
      }
      return { exitCode: 0, output, applied: [], appliedCount: 0 };
    }
    if (action === 'status')
      return await runDbmate(dbmateUrl, ['status', '--exit-code'], options.onOutput);
    const before = await appliedVersions(lockClient);
    const expected = await expectedMigrationVersions();
    if (expected.some((version) => !before.includes(version))) {
      await checkPrivileges(lockClient);
    }
    const result = await runDbmate(dbmateUrl, ['migrate', '--strict'], options.onOutput);
    return { ...result, appliedCount: (await appliedVersions(lockClient)).length };
  } finally {
    await lockClient
      .query('SELECT pg_advisory_unlock($1, $2)', [...MIGRATION_LOCK])
      .catch(() => {});
    await lockClient.end().catch(() => {});
  }
}

/** Throws when the role cannot apply the migrations; creates the roles first if it must and may. */
async function checkPrivileges(client: pg.Client): Promise<void> {
  const facts = await readMigrationPrivilegeFacts(client);
  const verdict = missingMigrationPrivilege(facts);
  if (!verdict.ok) throw new MigrationPrivilegeError(verdict.missing, facts);
  if (verdict.prepareRoles) await client.query(rolesSql(facts.role));
}

async function appliedVersions(client: pg.Client): Promise<string[]> {
  const table = await client.query<{ exists: boolean }>(
    'SELECT to_regclass($1) IS NOT NULL AS exists',
    [MIGRATIONS_TABLE],
  );
  if (!table.rows[0]?.exists) return [];
  const result = await client.query<{ version: string }>(
    `SELECT version FROM ${MIGRATIONS_TABLE} ORDER BY version`,
  );
  return result.rows.map((row) => row.version);
}

function runDbmate(
  url: string,
  args: string[],
  onOutput: ((text: string) => void) | undefined,
): Promise<MigrateResult> {
  const fullArgs = [
    '--migrations-dir',
    MIGRATIONS_DIR,
    '--migrations-table',
    MIGRATIONS_TABLE,
    '--no-dump-schema',
    '--env',
    'PG_SESSIONS_DBMATE_URL',
    ...args,
  ];
  return new Promise((resolve, reject) => {
    // The URL travels in the environment, not argv, where `ps` would show its password.
    const child = spawn(resolveBinary(), fullArgs, {
      env: { ...process.env, PG_SESSIONS_DBMATE_URL: url },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let output = '';
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (chunk: Buffer) => {
      const text = chunk.toString('utf8');
      output += text;
      stdout += text;
      onOutput?.(text);
    });
    child.stderr.on('data', (chunk: Buffer) => {
      const text = chunk.toString('utf8');
      output += text;
      stderr += text;
    });
    child.once('error', reject);
    child.once('close', (code) => {
      const exitCode = code ?? 1;
      const error = exitCode === 0 ? undefined : parseDbmateError(stdout, stderr);
      resolve({
        exitCode,
        output,
        // dbmate prints "Applied" before its transaction commits: a failure after it undoes it.
        applied: appliedFiles(stdout).filter((file) => file !== error?.migration),
        appliedCount: 0,
        ...(error ? { error } : {}),
      });
    });
  });
}

/** The files dbmate reports as applied (`Applied: <file> in <duration>`). */
export function appliedFiles(stdout: string): string[] {
  return [...stdout.matchAll(/^Applied: (\S+)/gm)].map((match) => match[1] as string);
}

/**
 * dbmate's `Error: …` line, and the migration it was working on: one it started
 * (`Applying:`, `Rolling back:`) and did not finish. dbmate prints "Applied" before
 * the transaction commits, so the last started file is the one that failed.
 */
export function parseDbmateError(stdout: string, stderr: string): DbmateError | undefined {
  const line = stderr
    .split('\n')
    .map((text) => text.trim())
    .findLast((text) => text.startsWith('Error: '));
  if (!line) return undefined;
  const message = line.slice('Error: '.length).replace(/^pq: /, '');
  const started = [...stdout.matchAll(/^(?:Applying|Rolling back): (\S+)/gm)].at(-1)?.[1];
  return started ? { message, migration: started } : { message };
}

/**
 * The URL as dbmate's driver (lib/pq) must see it. lib/pq knows `disable`, `require`,
 * `verify-ca` and `verify-full` only, and treats a URL without sslmode as `require`:
 * give it the mode libpq would end up with, `require` when the server offers TLS and
 * `disable` when it has none (asked once per host:port, see `serverOffersTls`).
 * Certificate files named by PGSSL* variables are written into the URL, so that
 * dbmate and node-postgres use the same ones.
 */
export async function forDbmate(url: string): Promise<string> {
  const target = connectionTarget(url);
  const mode = await negotiatedSslMode(target);
  const parsed = new URL(url);
  if (mode === undefined || !target.tls) return parsed.toString();
  for (const name of ['sslmode', 'sslrootcert', 'sslcert', 'sslkey']) {
    parsed.searchParams.delete(name);
  }
  parsed.searchParams.set('sslmode', mode);
  if (mode !== 'disable') {
    const { rootCert, cert, key } = target.tls;
    // `system` (Node's CA list) is lib/pq's default already; it would read it as a file name.
    if (rootCert && rootCert !== 'system') parsed.searchParams.set('sslrootcert', rootCert);
    if (cert) parsed.searchParams.set('sslcert', cert);
    if (key) parsed.searchParams.set('sslkey', key);
  }
  return parsed.toString();
}

/** host:port/database without credentials, for messages. */
export function describeUrl(url: string): string {
  try {
    const parsed = new URL(url);
    return `${parsed.hostname}:${parsed.port || '5432'}${parsed.pathname}`;
  } catch {
    return 'the database (the URL does not parse)';
  }
}

/** The first useful line of an error (node-postgres wraps several addresses in an AggregateError). */
export function messageOf(error: unknown): string {
  if (error instanceof AggregateError && error.errors.length > 0) {
    return messageOf(error.errors[0]);
  }
  if (error instanceof Error) {
    const text = error.message || (error as { code?: string }).code || error.name;
    return text.split('\n')[0] as string;
  }
  return String(error);
}
