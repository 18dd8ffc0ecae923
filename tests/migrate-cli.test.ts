import { readdir } from 'node:fs/promises';
import test from 'ava';
import pg from 'pg';
import { expectedMigrationVersions, MIGRATIONS_DIR, parseDbmateError } from '../src/db/migrator.js';
import { createTestDatabase } from '../src/testing/index.js';
import { runCli } from './helpers/cli.js';

async function appliedVersions(url: string): Promise<string[]> {
  const client = new pg.Client(url);
  await client.connect();
  try {
    const exists = await client.query(
      `SELECT to_regclass('sessions.schema_migrations') IS NOT NULL AS e`,
    );
    if (!exists.rows[0].e) return [];
    const result = await client.query(
      'SELECT version FROM sessions.schema_migrations ORDER BY version',
    );
    return result.rows.map((row) => row.version);
  } finally {
    await client.end();
  }
}

test('migrate up, down to zero and up again; status tells pending from applied', async (t) => {
  const db = await createTestDatabase({ migrated: false });
  t.teardown(() => db.drop());
  const expected = await expectedMigrationVersions();
  t.true(expected.length > 0);

  const pending = await runCli(['migrate', 'status', '--url', db.url]);
  t.is(pending.code, 1, 'status exits 1 while migrations are pending');

  const up = await runCli(['migrate', 'up', '--url', db.url]);
  t.is(up.code, 0, up.stderr + up.stdout);
  t.deepEqual(await appliedVersions(db.url), expected);
  const files = (await readdir(MIGRATIONS_DIR)).filter((file) => /^\d+_.+\.sql$/.test(file)).sort();
  t.is(up.stdout, files.map((file) => `applied ${file}\n`).join(''), 'one line per migration');
  t.is(up.stderr, '');
  const nothing = await runCli(['migrate', 'up', '--url', db.url]);
  t.is(nothing.code, 0, nothing.stderr);
  t.is(nothing.stdout, `up to date (${expected.length} applied)\n`);
  const applied = await runCli(['migrate', 'status'], { DATABASE_URL: db.url });
  t.is(applied.code, 0, applied.stdout);

  const down = await runCli(['migrate', 'down', '--all', '--url', db.url]);
  t.is(down.code, 0, down.stderr + down.stdout);
  t.deepEqual(await appliedVersions(db.url), []);
  const client = new pg.Client(db.url);
  await client.connect();
  const leftovers = await client.query(
    `SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
      WHERE n.nspname = 'sessions' AND c.relname NOT LIKE 'schema_migrations%'
     UNION ALL
     SELECT p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'sessions'`,
  );
  await client.end();
  t.deepEqual(leftovers.rows, [], 'down removes every object up created');

  const again = await runCli(['migrate', 'up', '--url', db.url]);
  t.is(again.code, 0, again.stderr + again.stdout);
  t.deepEqual(await appliedVersions(db.url), expected);

  const oneStep = await runCli(['migrate', 'down', '--url', db.url]);
  t.is(oneStep.code, 0);
  t.deepEqual(await appliedVersions(db.url), expected.slice(0, -1));
});

test('ten migrate up processes started at once all succeed and apply each migration once', async (t) => {
  const db = await createTestDatabase({ migrated: false });
  t.teardown(() => db.drop());
  const results = await Promise.all(
    Array.from({ length: 10 }, () => runCli(['migrate', 'up', '--url', db.url])),
  );
  for (const result of results) t.is(result.code, 0, result.stderr + result.stdout);
  const client = new pg.Client(db.url);
  await client.connect();
  const counts = await client.query(
    'SELECT version, count(*)::int AS n FROM sessions.schema_migrations GROUP BY version ORDER BY version',
  );
  await client.end();
  t.deepEqual(
    counts.rows,
    (await expectedMigrationVersions()).map((version) => ({ version, n: 1 })),
  );
  const applying = results.filter((result) => result.stdout.startsWith('applied ')).length;
  t.is(applying, 1, 'exactly one process applied the migrations; the others found nothing to do');
  const upToDate = results.filter((result) => /^up to date \(\d+ applied\)\n$/.test(result.stdout));
  t.is(upToDate.length, 9);
});

test('an unreachable database gives a one-line error and exit code 2', async (t) => {
  const result = await runCli(['migrate', 'up', '--url', 'postgres://nobody@127.0.0.1:1/none']);
  t.is(result.code, 2);
  t.regex(result.stderr, /^pg-sessions: cannot connect to 127\.0\.0\.1:1\/none: .+\n$/);
  t.notRegex(result.stderr, /\n\s+at /, 'no stack trace');
});

test('no database URL at all gives a one-line error and exit code 2', async (t) => {
  const result = await runCli(['migrate', 'status'], { DATABASE_URL: '' });
  t.is(result.code, 2);
  t.is(result.stderr, 'pg-sessions: no database given: pass --url or set DATABASE_URL\n');
});

test('a missing database gives a one-line error, not a stack trace', async (t) => {
  const db = await createTestDatabase({ migrated: false });
  const url = new URL(db.url);
  url.pathname = '/does_not_exist';
  await db.drop();
  const result = await runCli(['migrate', 'up', '--url', url.toString()]);
  t.is(result.code, 2);
  t.regex(result.stderr, /does_not_exist.*does not exist/);
  t.is(result.stderr.trim().split('\n').length, 1);
});

test('a migration that fails is rolled back whole, and dbmate’s error becomes one pg-sessions line, exit 1', async (t) => {
  const db = await createTestDatabase({ migrated: false });
  t.teardown(() => db.drop());
  const client = new pg.Client(db.url);
  await client.connect();
  t.teardown(() => client.end());
  // In the way of the first migration's table: it fails after creating other objects.
  await client.query('CREATE SCHEMA sessions; CREATE TABLE sessions.session (x int)');
  const before = await client.query(
    `SELECT count(*)::int AS n FROM pg_class WHERE relnamespace = 'sessions'::regnamespace`,
  );

  const result = await runCli(['migrate', 'up', '--url', db.url]);
  t.is(result.code, 1, result.stderr);
  t.regex(
    result.stderr,
    /^pg-sessions: migration \d+_[\w.]+\.sql failed: relation "session" already exists\n$/,
  );
  t.is(result.stdout, '', 'nothing reported as applied');
  t.deepEqual(await appliedVersions(db.url), []);
  const after = await client.query(
    `SELECT count(*)::int AS n FROM pg_class
      WHERE relnamespace = 'sessions'::regnamespace AND relname NOT LIKE 'schema_migrations%'`,
  );
  t.is(after.rows[0].n, before.rows[0].n, 'the failed migration left no object behind');
});

test('dbmate’s Error line is parsed into the message and the migration it was applying', (t) => {
  t.deepEqual(
    parseDbmateError(
      'Applying: 1_a.sql\nApplied: 1_a.sql in 1ms\nApplying: 2_b.sql\nApplied: 2_b.sql in 2ms\n',
      'Error: pq: permission denied to create role\n',
    ),
    { message: 'permission denied to create role', migration: '2_b.sql' },
  );
  t.deepEqual(parseDbmateError('', 'Error: unable to connect to database: dial tcp: refused\n'), {
    message: 'unable to connect to database: dial tcp: refused',
  });
  t.is(parseDbmateError('', ''), undefined);
});
