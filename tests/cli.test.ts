import { readFileSync } from 'node:fs';
import { userInfo } from 'node:os';
import test from 'ava';
import type { Command } from 'commander';
import pg from 'pg';
import { buildProgram } from '../src/cli/main.js';
import { sessionId, since, wholeNumber } from '../src/cli/option-parsers.js';
import { toCsv } from '../src/cli/output-format.js';
import { REPORTS as CATALOG } from '../src/cli/report-catalog.js';
import { reportQuery } from '../src/cli/report-command.js';
import { expectedMigrationVersions } from '../src/db/migrator.js';
import { freePort } from '../src/testing/free-port.js';
import { createTestDatabase, type TestDatabase } from '../src/testing/index.js';
import { runCli } from './helpers/cli.js';
import { Browser, startApp } from './helpers/http.js';

// Every test spawns the real `pg-sessions` process. Tests that change data get their
// own database (a copy of the migrated template), so they run side by side.

const databases: TestDatabase[] = [];
const pools: pg.Pool[] = [];

test.after.always(async () => {
  await Promise.allSettled(pools.map((pool) => pool.end()));
  await Promise.allSettled(databases.map((db) => db.drop()));
});

async function database(options?: { migrated?: boolean }): Promise<{
  db: TestDatabase;
  admin: pg.Pool;
}> {
  const db = await createTestDatabase(options);
  databases.push(db);
  const admin = new pg.Pool({ connectionString: db.url, max: 3 });
  admin.on('error', () => {});
  pools.push(admin);
  return { db, admin };
}

const ACTOR = `cli:${userInfo().username}`;
const REPORTS = [
  'active_sessions_per_tenant',
  'sessions_per_user',
  'user_devices',
  'daily_session_counts',
  'peak_sessions_per_hour',
  'users_with_many_sessions',
  'users_with_many_revocations',
  'users_with_many_networks',
];

/** A value as JSON carries it, timestamps in one spelling (the server's zone may differ). */
function normalise(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(normalise);
  if (typeof value === 'string' && /^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}/.test(value)) {
    return new Date(value).toISOString();
  }
  return value;
}

function normaliseRows(rows: readonly Record<string, unknown>[]): Record<string, unknown>[] {
  return rows.map((row) =>
    Object.fromEntries(Object.entries(row).map(([key, value]) => [key, normalise(value)])),
  );
}

/** Rows as comparable text: keys in one order (to_jsonb orders them its own way), rows sorted. */
const sorted = (rows: readonly unknown[]) =>
  rows
    .map((row) =>
      JSON.stringify(
        Object.fromEntries(Object.entries(row as object).sort(([a], [b]) => (a < b ? -1 : 1))),
      ),
    )
    .sort();

/** The view read directly, each row as Postgres' own to_jsonb spells it. */
async function viewRows(
  admin: pg.Pool,
  view: string,
  where = 'true',
  values: unknown[] = [],
): Promise<Record<string, unknown>[]> {
  const result = await admin.query<{ row: Record<string, unknown> }>(
    `SELECT to_jsonb(v) AS row FROM sessions.${view} v WHERE ${where}`,
    values,
  );
  return normaliseRows(result.rows.map((row) => row.row));
}

/** RFC 4180 reader: quoted fields, doubled quotes, CRLF records. */
function parseCsv(text: string): string[][] {
  const records: string[][] = [];
  let record: string[] = [];
  let field = '';
  let quoted = false;
  for (let i = 0; i < text.length; i++) {
    const char = text[i] as string;
    if (quoted) {
      if (char === '"' && text[i + 1] === '"') {
        field += '"';
        i++;
      } else if (char === '"') quoted = false;
      else field += char;
    } else if (char === '"') quoted = true;
    else if (char === ',') {
      record.push(field);
      field = '';
    } else if (char === '\r' && text[i + 1] === '\n') {
      record.push(field);
      records.push(record);
      record = [];
      field = '';
      i++;
    } else field += char;
  }
  if (field !== '' || record.length > 0) throw new Error('the last record does not end in CRLF');
  return records;
}

/** A CSV cell back to the JSON value it was written from. */
function csvCell(cell: string, sample: unknown): unknown {
  if (cell === '') return null;
  if (typeof sample === 'number') return Number(cell);
  if (Array.isArray(sample)) return JSON.parse(cell);
  return normalise(cell);
}

// The views depend on now() (expiry, the current hour): a direct read just before or
// just after the CLI's must agree with it.
async function agreesWithView(
  t: { deepEqual: (a: unknown, b: unknown, message?: string) => void },
  admin: pg.Pool,
  view: string,
  cliRows: readonly unknown[],
  where?: string,
  values?: unknown[],
) {
  const before = sorted(await viewRows(admin, view, where, values));
  const got = sorted(cliRows);
  if (JSON.stringify(got) === JSON.stringify(before)) {
    t.deepEqual(got, before, view);
    return;
  }
  t.deepEqual(got, sorted(await viewRows(admin, view, where, values)), view);
}

test('seed writes a history once; report prints the views as json, csv and a table that agree with them', async (t) => {
  const { db, admin } = await database();
  const seeded = await runCli([
    'seed',
    '--sessions',
    '1500',
    '--tenants',
    '3',
    '--weeks',
    '2',
    '--url',
    db.url,
  ]);
  t.is(seeded.code, 0, seeded.stderr);
  t.is(seeded.stderr, '', 'no progress output when stderr is not a terminal');
  t.regex(
    seeded.stdout,
    /^seeded 1500 sessions \(\d+ rows left, \d+ events\) for acme, globex, initech in \d+\.\d s\n$/,
  );
  const created = await admin.query(
    `SELECT tenant_id, count(*)::int AS n FROM sessions.event WHERE kind = 'created' GROUP BY 1 ORDER BY 1`,
  );
  t.deepEqual(
    created.rows.map((row) => row.tenant_id),
    ['acme', 'globex', 'initech'],
  );
  t.is(
    created.rows.reduce((sum, row) => sum + row.n, 0),
    1500,
  );

  // Every report's query (view name, filters, ORDER BY) runs against the real views.
  for (const report of CATALOG) {
    const query = reportQuery(report, {
      tenant: 'acme',
      limit: 3,
      since: report.since ? { kind: 'interval', interval: '7 days' } : undefined,
    });
    const result = await admin.query(query.text, query.values);
    t.true(result.rows.length <= 3, report.name);
  }
  t.deepEqual(
    CATALOG.map((report) => report.name),
    REPORTS,
  );

  const days = (await viewRows(admin, 'daily_session_counts')).map((row) => String(row.day)).sort();
  t.true(days.length > 20, 'two weeks of days');
  const since = days[Math.floor(days.length / 3)] as string;
  const [again, listed, usersJson, peakJson, csv, filtered, table] = await Promise.all([
    runCli(['seed', '--sessions', '10', '--tenants', '1', '--url', db.url]),
    runCli(['report', '--list']),
    runCli(['report', 'sessions_per_user', '--format', 'json', '--url', db.url]),
    runCli(['report', 'peak_sessions_per_hour', '--format', 'json', '--url', db.url]),
    runCli(['report', 'sessions.user_devices', '--format', 'csv', '--url', db.url]),
    runCli([
      'report',
      'daily_session_counts',
      ...['--format', 'csv', '--tenant', 'globex', '--since', since, '--limit', '5'],
      ...['--url', db.url],
    ]),
    runCli(['report', 'active_sessions_per_tenant', '--url', db.url]),
  ]);
  t.is(again.code, 2);
  t.regex(
    again.stderr,
    /^pg-sessions: tenants acme already hold sessions or events: pass --replace[^\n]*\n$/,
  );
  t.is(listed.code, 0);
  t.deepEqual(
    listed.stdout
      .trim()
      .split('\n')
      .map((line) => line.trim().split(/\s+/)[0]),
    REPORTS,
  );

  // json: an array of objects, the view's rows.
  for (const [name, json] of [
    ['sessions_per_user', usersJson],
    ['peak_sessions_per_hour', peakJson],
  ] as const) {
    t.is(json?.code, 0, json?.stderr);
    const rows = JSON.parse(json?.stdout ?? '') as Record<string, unknown>[];
    t.true(Array.isArray(rows) && rows.length > 0, name);
    await agreesWithView(t, admin, name, normaliseRows(rows));
  }

  // csv: parse it back; the view's rows, the header in the view's column order.
  t.is(csv.code, 0, csv.stderr);
  const [header, ...records] = parseCsv(csv.stdout);
  const columns = (
    await admin.query(
      `SELECT attname FROM pg_attribute WHERE attrelid = 'sessions.user_devices'::regclass AND attnum > 0 ORDER BY attnum`,
    )
  ).rows.map((row) => row.attname);
  t.deepEqual(header, columns);
  const sample = (await viewRows(admin, 'user_devices'))[0] ?? {};
  t.true(records.length > 0);
  const fromCsv = records.map((record) =>
    Object.fromEntries(
      columns.map((column, index) => [column, csvCell(record[index] ?? '', sample[column])]),
    ),
  );
  await agreesWithView(t, admin, 'user_devices', fromCsv);
  t.true(
    csv.stdout.includes('"Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit'),
    'a user agent with commas is quoted',
  );

  // Filters: tenant, since (an ISO date: the days from then on), limit (newest first).
  t.is(filtered.code, 0, filtered.stderr);
  const [filteredHeader = [], ...filteredRecords] = parseCsv(filtered.stdout);
  const expected = (
    await admin.query(
      `SELECT to_jsonb(v) AS row FROM sessions.daily_session_counts v
        WHERE tenant_id = 'globex' AND day >= $1::date ORDER BY day DESC LIMIT 5`,
      [since],
    )
  ).rows.map((row) => row.row);
  t.is(expected.length, 5);
  t.deepEqual(
    filteredRecords.map((record) =>
      Object.fromEntries(
        filteredHeader.map((column, index) => [
          column,
          column === 'day' || column === 'tenant_id' ? record[index] : Number(record[index]),
        ]),
      ),
    ),
    expected,
    'the newest five days of globex from then on, newest first',
  );

  // table: a header, a rule of dashes, aligned columns, the row count.
  t.is(table.code, 0, table.stderr);
  const lines = table.stdout.trimEnd().split('\n');
  const tenants = await viewRows(admin, 'active_sessions_per_tenant');
  t.regex(lines[0] ?? '', /^tenant_id\s+active_sessions\s+users\s+anonymous_sessions/);
  t.regex(lines[1] ?? '', /^-+( {2}-+)+$/);
  t.is(lines.at(-1), `(${tenants.length} rows)`);
  const rule = (lines[1] ?? '').split('  ').map((dashes) => dashes.length);
  for (const line of lines.slice(2, -1)) {
    const cells = line.split(/\s{2,}/);
    const tenant = tenants.find((row) => row.tenant_id === cells[0]);
    t.truthy(tenant, line);
    t.is(Number(cells[1]), tenant?.active_sessions as number);
    // Numbers are right-aligned: the count ends where its column's rule ends.
    t.is(
      line.indexOf(cells[1] as string) + (cells[1] as string).length,
      (rule[0] ?? 0) + 2 + (rule[1] ?? 0),
    );
  }
});

test('a session revoked by the CLI stops working over HTTP at once; revoke --user ends all of a user’s', async (t) => {
  const { db, admin } = await database();
  const app = await startApp({ database: db.appUrl, touchInterval: 0 }, (router) => {
    router.post('/set', (ctx) => {
      Object.assign(ctx.session!, ctx.request.query);
      ctx.body = 'ok';
    });
    router.post('/login', (ctx) => {
      ctx.sessions.bindUser(String(ctx.query.user));
      ctx.session!.loggedIn = true;
      ctx.body = 'ok';
    });
    router.get('/get', (ctx) => {
      ctx.body = { id: ctx.sessions.id, data: ctx.session!.toJSON() };
    });
  });
  t.teardown(() => app.close());
  type Seen = { id: string | null; data: Record<string, unknown> };

  const browser = new Browser(app.url);
  await browser.post('/set?color=blue');
  const before = (await browser.get('/get')).body as Seen;
  t.deepEqual(before.data, { color: 'blue' });
  t.truthy(before.id);
  // Served from the node cache from now on: only the notification can evict it.
  t.deepEqual(((await browser.get('/get')).body as Seen).data, { color: 'blue' });
  t.truthy(app.middleware.listenerPid, 'the listener is up');

  const status = await runCli(['status', '--format', 'json', '--url', db.url]);
  t.is(status.code, 0, status.stderr + status.stdout);
  t.is(JSON.parse(status.stdout).listeners, 1, 'status counts the app’s LISTEN connection');

  const revoked = await runCli([
    'revoke',
    '--session',
    before.id as string,
    '--reason',
    'stolen laptop',
    '--url',
    db.url,
  ]);
  t.is(revoked.code, 0, revoked.stderr);
  t.is(revoked.stdout, '1 session revoked\n');
  let after = (await browser.get('/get')).body as Seen;
  for (let attempt = 0; attempt < 20 && after.data.color; attempt++) {
    await new Promise((resolve) => setTimeout(resolve, 25));
    after = (await browser.get('/get')).body as Seen;
  }
  t.deepEqual(after.data, {}, 'a fresh, empty session');
  t.not(after.id, before.id);
  const event = await admin.query(
    `SELECT reason, actor FROM sessions.event WHERE session_id = $1 AND kind = 'revoked'`,
    [before.id],
  );
  t.deepEqual(event.rows, [{ reason: 'stolen laptop', actor: ACTOR }]);

  const again = await runCli([
    'revoke',
    '--session',
    (before.id as string).toUpperCase(),
    '--reason',
    'stolen laptop',
    '--url',
    db.url,
  ]);
  t.is(again.code, 0, 'a revocation that matches nothing is not an error');
  t.is(again.stdout, '0 sessions revoked\n');

  // Two devices of alice, one of bob; alice's end, bob's stays.
  const laptop = new Browser(app.url);
  const phone = new Browser(app.url);
  const other = new Browser(app.url);
  await laptop.post('/login?user=alice');
  await phone.post('/login?user=alice');
  await other.post('/login?user=bob');
  for (const device of [laptop, phone, other]) {
    t.true(((await device.get('/get')).body as Seen).data.loggedIn === true);
  }
  const user = await runCli(
    ['revoke', '--user', 'alice', '--tenant', 'default', '--reason', 'password changed'],
    { DATABASE_URL: db.url },
  );
  t.is(user.code, 0, user.stderr);
  t.is(user.stdout, 'tenant default: 2 sessions revoked\ntotal: 2 sessions revoked in 1 tenant\n');
  for (const device of [laptop, phone]) {
    let seen = (await device.get('/get')).body as Seen;
    for (let attempt = 0; attempt < 20 && seen.data.loggedIn; attempt++) {
      await new Promise((resolve) => setTimeout(resolve, 25));
      seen = (await device.get('/get')).body as Seen;
    }
    t.deepEqual(seen.data, {});
  }
  t.true(((await other.get('/get')).body as Seen).data.loggedIn === true, 'bob is still in');
});

test('revoke --user needs --tenant or --all-tenants, and prints what it revoked per tenant', async (t) => {
  const { db, admin } = await database();
  // u1 has live sessions in three tenants (two in acme), one revoked already; u2 one.
  await admin.query(
    `INSERT INTO sessions.session (tenant_id, token_hash, user_id, idle_expires_at, absolute_expires_at, revoked_at, revoked_reason)
     SELECT tenant, sha256(convert_to(tenant || i, 'UTF8')), user_id,
            now() + interval '1 hour', now() + interval '1 day',
            CASE WHEN revoked THEN now() END, CASE WHEN revoked THEN 'earlier' END
       FROM (VALUES (1, 'acme', 'u1', false), (2, 'acme', 'u1', false), (3, 'beta', 'u1', false),
                    (4, 'gamma', 'u1', false), (5, 'gamma', 'u1', true), (6, 'acme', 'u2', false))
            AS s(i, tenant, user_id, revoked)`,
  );
  const live = async () =>
    (
      await admin.query(
        `SELECT tenant_id, user_id FROM sessions.session WHERE revoked_at IS NULL ORDER BY 1, 2`,
      )
    ).rows;

  const unscoped = await runCli(['revoke', '--user', 'u1', '--reason', 'x', '--url', db.url]);
  t.is(unscoped.code, 2);
  t.is(
    unscoped.stderr,
    'pg-sessions: revoke --user needs --tenant <tenant>, or --all-tenants to revoke in every tenant\n',
  );
  t.is((await live()).length, 5, 'nothing revoked');

  const one = await runCli([
    'revoke',
    '--user',
    'u1',
    '--tenant',
    'beta',
    '--reason',
    'password changed',
    '--url',
    db.url,
  ]);
  t.is(one.code, 0, one.stderr);
  t.is(one.stdout, 'tenant beta: 1 session revoked\ntotal: 1 session revoked in 1 tenant\n');

  const all = await runCli([
    'revoke',
    '--user',
    'u1',
    '--all-tenants',
    '--reason',
    'account closed',
    '--url',
    db.url,
  ]);
  t.is(all.code, 0, all.stderr);
  t.is(
    all.stdout,
    'tenant acme: 2 sessions revoked\ntenant gamma: 1 session revoked\ntotal: 3 sessions revoked in 2 tenants\n',
  );
  t.deepEqual(await live(), [{ tenant_id: 'acme', user_id: 'u2' }], 'u2 keeps its session');

  const none = await runCli(['revoke', '--user', 'u1', '--all-tenants', '--reason', 'x'], {
    DATABASE_URL: db.url,
  });
  t.is(none.code, 0);
  t.is(none.stdout, 'total: 0 sessions revoked in 0 tenants\n');
});

test('--version prints the version in package.json', async (t) => {
  const manifest = JSON.parse(
    readFileSync(new URL('../package.json', import.meta.url), 'utf8'),
  ) as { version: string };
  for (const flag of ['--version', '-V']) {
    const result = await runCli([flag]);
    t.is(result.code, 0, flag);
    t.is(result.stdout, `${manifest.version}\n`, flag);
    t.is(result.stderr, '', flag);
  }
});

test('gc collects expired and revoked rows in batches, logs them, and prints the count; prune-events trims the log', async (t) => {
  const { db, admin } = await database();
  await admin.query(
    `INSERT INTO sessions.session (tenant_id, token_hash, idle_expires_at, absolute_expires_at, revoked_at, revoked_reason)
     SELECT 't' || (i % 2), sha256(convert_to('gc' || i, 'UTF8')),
            CASE WHEN i <= 7 THEN now() - interval '1 minute' ELSE now() + interval '1 hour' END,
            now() + interval '1 day',
            CASE WHEN i = 8 THEN now() END, CASE WHEN i = 8 THEN 'test' END
       FROM generate_series(1, 10) AS i`,
  );
  const result = await runCli(['gc', '--batch-size', '3', '--url', db.url]);
  t.is(result.code, 0, result.stderr);
  t.is(result.stderr, '', 'no progress output when stderr is not a terminal');
  t.regex(result.stdout, /^8 sessions collected \(3 batches, \d+\.\d s\)\n$/);
  const left = await admin.query('SELECT count(*)::int AS n FROM sessions.session');
  t.is(left.rows[0].n, 2, 'the live sessions stay');
  const events = await admin.query(
    `SELECT kind, reason, actor, count(*)::int AS n FROM sessions.event
      WHERE kind IN ('expired', 'purged') GROUP BY 1, 2, 3 ORDER BY 1`,
  );
  t.deepEqual(events.rows, [
    { kind: 'expired', reason: 'gc', actor: ACTOR, n: 7 },
    { kind: 'purged', reason: 'gc', actor: ACTOR, n: 1 },
  ]);

  // Retention: events older than the age go, in batches; the rest stay.
  await admin.query(
    `INSERT INTO sessions.event (tenant_id, occurred_at, session_id, kind, actor)
     SELECT 't0', now() - interval '100 days', gen_random_uuid(), 'created', 'test'
       FROM generate_series(1, 5)`,
  );
  const eventsBefore = (await admin.query('SELECT count(*)::int AS n FROM sessions.event')).rows[0]
    .n;
  const pruned = await runCli([
    'prune-events',
    ...['--older-than', '90d', '--batch-size', '2', '--url', db.url],
  ]);
  t.is(pruned.code, 0, pruned.stderr);
  t.regex(pruned.stdout, /^5 events older than 90 days deleted \(\d+\.\d s\)\n$/);
  const eventsAfter = (await admin.query('SELECT count(*)::int AS n FROM sessions.event')).rows[0]
    .n;
  t.is(eventsAfter, eventsBefore - 5);

  // An app node's collector holds the lock: gc waits for it, then gives up after --lock-wait.
  const holder = await admin.connect();
  try {
    await holder.query('SELECT pg_advisory_lock($1, $2)', [0x70677365, 2]);
    const blocked = await runCli(['gc', '--lock-wait', '1', '--url', db.url]);
    t.is(blocked.code, 1);
    t.regex(blocked.stderr, /^pg-sessions: another process has held the GC lock for more than 1 s/);
  } finally {
    await holder.query('SELECT pg_advisory_unlock_all()');
    holder.release();
  }
});

test('status reports schema version, live sessions, listeners and the host, as json and as a table', async (t) => {
  const { db, admin } = await database();
  await admin.query(
    `INSERT INTO sessions.session (tenant_id, token_hash, idle_expires_at, absolute_expires_at)
     SELECT 'a', sha256(convert_to('st' || i, 'UTF8')),
            now() + CASE WHEN i <= 3 THEN interval '1 hour' ELSE interval '-1 hour' END,
            now() + interval '1 day'
       FROM generate_series(1, 5) AS i`,
  );
  const expected = await expectedMigrationVersions();
  const json = await runCli(['status', '--format', 'json', '--url', db.url]);
  t.is(json.code, 0, json.stderr);
  const status = JSON.parse(json.stdout);
  t.deepEqual(status.schema, {
    version: expected.at(-1),
    applied: expected.length,
    pending: [],
    unknown: [],
  });
  t.is(status.liveSessions, 3);
  t.is(status.listeners, 0);
  t.is(status.hosts.length, 1);
  const [host] = status.hosts;
  t.is(host.role, 'primary');
  t.regex(host.currentLsn, /^[0-9A-F]+\/[0-9A-F]+$/);
  const { port, pathname } = new URL(db.url);
  t.is(host.host, `127.0.0.1:${port}${pathname}`);
  t.is(host.lagBytes, null);

  const table = await runCli(['status', '--url', db.url]);
  t.is(table.code, 0);
  t.regex(
    table.stdout,
    new RegExp(`^schema +${expected.at(-1)} \\(${expected.length} applied, 0 pending\\)`),
  );
  t.regex(table.stdout, /\nsessions +3 live\n/);
  t.regex(table.stdout, /\nhost +role +current_lsn +replay_lsn +lag_bytes +lag_ms\n/);

  // One host down among several: listed as down, exit code 1.
  const port2 = await freePort();
  const down = await runCli([
    'status',
    '--format',
    'json',
    '--hosts',
    `${db.url},postgres://nobody@127.0.0.1:${port2}/none`,
  ]);
  t.is(down.code, 1);
  const partial = JSON.parse(down.stdout);
  t.is(partial.hosts[1].role, 'down');
  t.regex(partial.hosts[1].error, /ECONNREFUSED/);

  // Pending migrations: exit code 1, and the table says what to run.
  const { db: empty } = await database({ migrated: false });
  const pending = await runCli(['status', '--url', empty.url]);
  t.is(pending.code, 1);
  t.regex(pending.stdout, /^schema +not installed \(\d+ pending: run `pg-sessions migrate up`\)/);
});

test('every command has --help, exiting 0', async (t) => {
  // Spawned for the exit code; every (nested) command's help checked in process.
  const spawned = await Promise.all([runCli(['--help']), runCli(['revoke', '--help'])]);
  for (const result of spawned) {
    t.is(result.code, 0);
    t.regex(result.stdout, /^Usage: pg-sessions/);
  }
  t.regex(spawned[1]?.stdout ?? '', /--session <id>[\s\S]*--reason <text>/);
  const visit = (command: Command, path: string[]): string[] => [
    path.join(' '),
    ...command.commands.flatMap((sub) => visit(sub, [...path, sub.name()])),
  ];
  const program = buildProgram();
  t.deepEqual(visit(program, ['pg-sessions']), [
    'pg-sessions',
    'pg-sessions migrate',
    'pg-sessions migrate up',
    'pg-sessions migrate down',
    'pg-sessions migrate status',
    'pg-sessions migrate roles',
    'pg-sessions gc',
    'pg-sessions revoke',
    'pg-sessions export',
    'pg-sessions erase',
    'pg-sessions prune-events',
    'pg-sessions report',
    'pg-sessions seed',
    'pg-sessions status',
    'pg-sessions citus',
    'pg-sessions citus distribute',
  ]);
  const check = (command: Command) => {
    t.not(command.description(), '', command.name());
    t.regex(command.helpInformation(), /^Usage: /, command.name());
    t.true(
      command.commands.length > 0 || command.options.some((option) => option.long === '--url'),
      `${command.name()} takes --url`,
    );
    for (const sub of command.commands) check(sub);
  };
  for (const sub of program.commands) check(sub);
});

test('input parsers: session ids, --since forms, whole numbers; csv quoting', (t) => {
  t.is(sessionId(' 2F1C7E2A-8D4B-4F7E-9A51-0C3D5E6F7A8B '), '2f1c7e2a-8d4b-4f7e-9a51-0c3d5e6f7a8b');
  t.throws(() => sessionId('2f1c7e2a8d4b4f7e9a510c3d5e6f7a8b'));
  t.deepEqual(since('2026-11-01'), { kind: 'instant', iso: '2026-11-01T00:00:00.000Z' });
  t.deepEqual(since('2026-11-01T12:30'), { kind: 'instant', iso: '2026-11-01T12:30:00.000Z' });
  t.deepEqual(since('2026-11-01T12:30+02:00'), {
    kind: 'instant',
    iso: '2026-11-01T10:30:00.000Z',
  });
  t.deepEqual(since('90m'), { kind: 'interval', interval: '90 minutes' });
  t.deepEqual(since('24h'), { kind: 'interval', interval: '24 hours' });
  t.deepEqual(since('7 days'), { kind: 'interval', interval: '7 days' });
  t.deepEqual(since('2w'), { kind: 'interval', interval: '2 weeks' });
  t.deepEqual(since('3 months'), { kind: 'interval', interval: '3 months' });
  t.deepEqual(since('P1DT12H'), { kind: 'interval', interval: 'P1DT12H' });
  for (const bad of ['yesterday', '2026-13-45', '7', 'P', '-1d', "1d'; drop table x"]) {
    t.throws(() => since(bad), undefined, bad);
  }
  t.is(wholeNumber(1, 10)('10'), 10);
  for (const bad of ['0', '11', '1.5', '1e1', '', ' ']) {
    t.throws(() => wholeNumber(1, 10)(bad), undefined, bad);
  }
  t.is(
    toCsv(
      ['a', 'b', 'c', 'd'],
      [
        { a: 'x,y', b: 'say "hi"', c: 'two\nlines', d: ['p', 'q'] },
        { a: null, b: 1 },
      ],
    ),
    'a,b,c,d\r\n"x,y","say ""hi""","two\nlines","[""p"",""q""]"\r\n,1,,\r\n',
  );
});

test('bad input gives a one-line error and exit code 2, before touching the database', async (t) => {
  const cases: [string[], RegExp][] = [
    [['revoke', '--session', 'not-a-uuid', '--reason', 'x'], /argument 'not-a-uuid' is invalid/],
    [['revoke', '--user', 'alice'], /required option '--reason <text>' not specified/],
    [
      [
        'revoke',
        '--session',
        '2f1c7e2a-8d4b-4f7e-9a51-0c3d5e6f7a8b',
        '--user',
        'a',
        '--reason',
        'x',
      ],
      /exactly one of --session <id> and --user <id>/,
    ],
    [['report', 'nope'], /no report called "nope"/],
    [
      ['report', 'active_sessions_per_tenant', '--since', '7d'],
      /^pg-sessions: report active_sessions_per_tenant shows the present only: --since does not apply\n$/,
    ],
    [['gc', '--batch-size', '0'], /expected a whole number from 1 to 10000/],
    [['migrate', 'up', '--bogus'], /unknown option '--bogus'/],
    [
      ['revoke', '--user', 'alice', '--reason', 'x'],
      /revoke --user needs --tenant <tenant>, or --all-tenants/,
    ],
    [
      ['revoke', '--user', 'alice', '--tenant', 't', '--all-tenants', '--reason', 'x'],
      /--tenant <tenant> or --all-tenants, not both/,
    ],
    // Not PostgreSQL: refused at once (a mysql:// URL used to hang until killed).
    [
      ['migrate', 'status', '--url', 'mysql://root@127.0.0.1:3306/app'],
      /the database URL is mysql:\/\/…, not PostgreSQL/,
    ],
    [['migrate', 'up', '--url', 'http://127.0.0.1:1/'], /the database URL is http:\/\/…/],
    [['status', '--url', 'garbage'], /the database URL does not parse/],
    [['gc', '--url', 'redis://127.0.0.1:1'], /not PostgreSQL/],
  ];
  await Promise.all(
    cases.map(async ([args, message]) => {
      // A URL nothing listens on: input is checked before any connection is tried.
      const result = await runCli(args, { DATABASE_URL: 'postgres://nobody@127.0.0.1:1/none' });
      t.is(result.code, 2, args.join(' '));
      t.regex(result.stderr, /^pg-sessions: [^\n]+\n$/, args.join(' '));
      t.regex(result.stderr, message, args.join(' '));
      t.is(result.stdout, '');
    }),
  );
});

test('an unreachable database gives a one-line error and exit code 2 from every command', async (t) => {
  const port = await freePort();
  const url = `postgres://nobody@127.0.0.1:${port}/none`;
  // One per way of connecting: withClient (gc, revoke, report), seed, status' probes.
  const commands = [
    ['revoke', '--session', '2f1c7e2a-8d4b-4f7e-9a51-0c3d5e6f7a8b', '--reason', 'x'],
    ['seed', '--sessions', '10'],
    ['status', '--hosts', `${url},${url}`],
  ];
  await Promise.all(
    commands.map(async (command) => {
      const result = await runCli([...command, '--url', url]);
      t.is(result.code, 2, command.join(' '));
      t.is(
        result.stderr,
        `pg-sessions: cannot connect to 127.0.0.1:${port}/none: connect ECONNREFUSED 127.0.0.1:${port}\n`,
        command.join(' '),
      );
      t.is(result.stdout, '');
    }),
  );
});
