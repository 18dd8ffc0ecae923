import test from 'ava';
import pg from 'pg';
import { expectedMigrationVersions } from '../src/index.js';
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
  const applying = results.filter((result) => result.stdout.includes('Applying')).length;
  t.is(applying, 1, 'exactly one process applied the migrations; the others found nothing to do');
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
