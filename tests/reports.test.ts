import test from 'ava';
import pg from 'pg';
import {
  isLive,
  networkOf,
  resolveSeedOptions,
  type SeedSession,
  seedSessions,
} from '../seeds/generator.js';
import { loadSeed } from '../seeds/load.js';
import { createTestDatabase, type TestDatabase } from '../src/testing/index.js';
import { setupDatabase } from './helpers/database.js';

// Every expectation below is computed from the generator's sessions in TypeScript,
// never by asking the database a second time: the views must agree with the story.

const HOUR = 3_600_000;
const SEED = { sessions: 10_000, seed: 10, tenants: 2, weeks: 1 } as const;

let db: TestDatabase;
let admin: pg.Pool;
let auditor: pg.Pool;
let sessions: SeedSession[];
let seededAt: number;
let tenants: readonly string[];

test.before(async () => {
  ({ db, admin } = await setupDatabase());
  auditor = new pg.Pool({ connectionString: db.auditorUrl, max: 2 });
  // Its clients may still be closing when the database is dropped WITH (FORCE).
  auditor.on('error', () => {});
  const result = await loadSeed(db.url, SEED);
  seededAt = result.now.getTime();
  tenants = result.tenants;
  sessions = [...seedSessions(resolveSeedOptions({ ...SEED, now: result.now }))];
});

test.after.always(async () => {
  await auditor?.end();
  await admin?.end();
  await db?.drop();
});

const dayOf = (ms: number) => new Date(ms).toISOString().slice(0, 10);
const live = () => sessions.filter((session) => isLive(session, seededAt));
const liveOfUsers = () => live().filter((session) => session.userId !== null);

function groupBy<T>(items: Iterable<T>, key: (item: T) => string): Map<string, T[]> {
  const groups = new Map<string, T[]>();
  for (const item of items) {
    const name = key(item);
    const group = groups.get(name);
    if (group) group.push(item);
    else groups.set(name, [item]);
  }
  return groups;
}

const sorted = <T>(rows: T[], key: (row: T) => string) =>
  [...rows].sort((a, b) => (key(a) < key(b) ? -1 : key(a) > key(b) ? 1 : 0));
const distinct = (values: Iterable<string>) => [...new Set(values)].sort();
const min = (values: number[]) => Math.min(...values);
const max = (values: number[]) => Math.max(...values);

async function view<Row>(sql: string): Promise<Row[]> {
  return (await auditor.query(sql, [tenants])).rows as Row[];
}

test('the seed wrote the rows and events its story implies', async (t) => {
  const rows = await admin.query(
    'SELECT count(*)::int AS n FROM sessions.session WHERE tenant_id = ANY($1)',
    [tenants],
  );
  const expectedRows = sessions.filter(
    (session) =>
      session.ending === null || (session.ending.kind === 'revoked' && session.purgedAt === null),
  ).length;
  t.is(rows.rows[0].n, expectedRows);
  t.is(sessions.length, SEED.sessions);
  const created = await admin.query(
    `SELECT count(*)::int AS n FROM sessions.event WHERE kind = 'created' AND tenant_id = ANY($1)`,
    [tenants],
  );
  t.is(created.rows[0].n, SEED.sessions);
});

test('active_sessions_per_tenant counts the live sessions, users and anonymous ones', async (t) => {
  const expected = [...groupBy(live(), (session) => session.tenantId)].map(([tenant, group]) => ({
    tenant_id: tenant,
    active_sessions: group.length,
    users: new Set(group.map((session) => session.userId).filter((id) => id !== null)).size,
    anonymous_sessions: group.filter((session) => session.userId === null).length,
    oldest_created_at: min(group.map((session) => session.createdAt)),
    newest_created_at: max(group.map((session) => session.createdAt)),
  }));
  const actual = await view<Record<string, unknown>>(
    `SELECT tenant_id, active_sessions::int, users::int, anonymous_sessions::int,
            oldest_created_at, newest_created_at
       FROM sessions.active_sessions_per_tenant WHERE tenant_id = ANY($1) ORDER BY tenant_id`,
  );
  t.deepEqual(
    actual.map(
      (row): Record<string, unknown> => ({
        ...row,
        oldest_created_at: (row.oldest_created_at as Date).getTime(),
        newest_created_at: (row.newest_created_at as Date).getTime(),
      }),
    ),
    sorted(expected, (row) => row.tenant_id),
  );
  t.true(expected.every((row) => row.active_sessions > 0));
});

test('sessions_per_user counts each user’s live sessions and addresses', async (t) => {
  const expected = [...groupBy(liveOfUsers(), (s) => `${s.tenantId}/${s.userId}`)].map(
    ([, group]) => ({
      tenant_id: group[0]!.tenantId,
      user_id: group[0]!.userId,
      active_sessions: group.length,
      distinct_ips: new Set(group.map((session) => session.ip)).size,
      last_seen_at: max(group.map((session) => session.lastSeenAt)),
      first_created_at: min(group.map((session) => session.createdAt)),
    }),
  );
  const actual = await view<Record<string, unknown>>(
    `SELECT tenant_id, user_id, active_sessions::int, distinct_ips::int, last_seen_at, first_created_at
       FROM sessions.sessions_per_user WHERE tenant_id = ANY($1)`,
  );
  const key = (row: Record<string, unknown>) => `${row.tenant_id}/${row.user_id}`;
  t.deepEqual(
    sorted(
      actual.map(
        (row): Record<string, unknown> => ({
          ...row,
          last_seen_at: (row.last_seen_at as Date).getTime(),
          first_created_at: (row.first_created_at as Date).getTime(),
        }),
      ),
      key,
    ),
    sorted(expected, key),
  );
  t.true(expected.length > 100);
});

test('user_devices lists every live session of a user with its address, network and version', async (t) => {
  const expected = liveOfUsers().map((session) => ({
    tenant_id: session.tenantId,
    user_id: session.userId,
    session_id: session.id,
    ip: session.ip,
    network: networkOf(session.ip),
    user_agent: session.userAgent,
    expires_at: Math.min(session.idleExpiresAt, session.absoluteExpiresAt),
    // Created (1), the login's rotation (+1 when it came later), each update (+1).
    version: 1 + (session.boundAt !== session.createdAt ? 1 : 0) + session.updates,
  }));
  const actual = await view<Record<string, unknown>>(
    `SELECT tenant_id, user_id, session_id, host(ip) AS ip, network::text, user_agent, expires_at,
            version::int
       FROM sessions.user_devices WHERE tenant_id = ANY($1)`,
  );
  t.deepEqual(
    sorted(
      actual.map(
        (row): Record<string, unknown> => ({
          ...row,
          expires_at: (row.expires_at as Date).getTime(),
        }),
      ),
      (row) => String(row.session_id),
    ),
    sorted(expected, (row) => row.session_id),
  );
});

test('daily_session_counts counts creations and each kind of ending per UTC day', async (t) => {
  const days = new Map<
    string,
    { created: number; revoked: number; expired: number; destroyed: number }
  >();
  const bump = (
    tenant: string,
    at: number,
    kind: 'created' | 'revoked' | 'expired' | 'destroyed',
  ) => {
    const key = `${dayOf(at)}|${tenant}`;
    const counts = days.get(key) ?? { created: 0, revoked: 0, expired: 0, destroyed: 0 };
    counts[kind]++;
    days.set(key, counts);
  };
  for (const session of sessions) {
    bump(session.tenantId, session.createdAt, 'created');
    if (session.ending) bump(session.tenantId, session.ending.at, session.ending.kind);
  }
  const expected = [...days].map(([key, counts]) => {
    const [day, tenant] = key.split('|');
    return {
      day,
      tenant_id: tenant,
      ended: counts.revoked + counts.expired + counts.destroyed,
      ...counts,
    };
  });
  const actual = await view<Record<string, unknown>>(
    `SELECT day::text, tenant_id, created::int, ended::int, revoked::int, expired::int, destroyed::int
       FROM sessions.daily_session_counts WHERE tenant_id = ANY($1)`,
  );
  const key = (row: Record<string, unknown>) => `${row.day}|${row.tenant_id}`;
  t.deepEqual(sorted(actual, key), sorted(expected, key));
  t.true(
    expected.length >= 8 * SEED.tenants - 1,
    'a row for every day of the week and each tenant',
  );
});

test('peak_sessions_per_hour replays the history: level at the start and peak of every hour', async (t) => {
  const nowRow = await auditor.query(`SELECT date_trunc('hour', now(), 'UTC') AS hour`);
  const lastHour = (nowRow.rows[0].hour as Date).getTime();
  const expected: Record<string, unknown>[] = [];
  for (const [tenant, group] of groupBy(sessions, (session) => session.tenantId)) {
    // Changes at one instant apply together, as in the view.
    const instants = new Map<number, { delta: number; created: number; ended: number }>();
    const change = (at: number, delta: number) => {
      const instant = instants.get(at) ?? { delta: 0, created: 0, ended: 0 };
      instant.delta += delta;
      if (delta > 0) instant.created++;
      else instant.ended++;
      instants.set(at, instant);
    };
    for (const session of group) {
      change(session.createdAt, 1);
      if (session.ending) change(session.ending.at, -1);
    }
    const times = [...instants.keys()].sort((a, b) => a - b);
    const firstHour = Math.floor(times[0]! / HOUR) * HOUR;
    let level = 0;
    let index = 0;
    for (let hour = firstHour; hour <= lastHour; hour += HOUR) {
      const atStart = level;
      let peak = level;
      let created = 0;
      let ended = 0;
      while (index < times.length && times[index]! < hour + HOUR) {
        const instant = instants.get(times[index]!)!;
        level += instant.delta;
        peak = Math.max(peak, level);
        created += instant.created;
        ended += instant.ended;
        index++;
      }
      expected.push({
        hour,
        tenant_id: tenant,
        sessions_at_start: atStart,
        peak_sessions: peak,
        created,
        ended,
      });
    }
  }
  const actual = await view<Record<string, unknown>>(
    `SELECT hour, tenant_id, sessions_at_start::int, peak_sessions::int, created::int, ended::int
       FROM sessions.peak_sessions_per_hour WHERE tenant_id = ANY($1)`,
  );
  const key = (row: Record<string, unknown>) => `${row.tenant_id}|${String(row.hour).padStart(15)}`;
  t.deepEqual(
    sorted(
      actual.map(
        (row): Record<string, unknown> => ({ ...row, hour: (row.hour as Date).getTime() }),
      ),
      key,
    ),
    sorted(expected, key),
  );
  // The live sessions now are the level at the end of the history.
  const liveNow = live().length;
  const lastRows = expected.filter((row) => row.hour === lastHour);
  t.true(
    lastRows.reduce((sum, row) => sum + (row.peak_sessions as number), 0) >= liveNow,
    'the current hour holds at least the live sessions',
  );
});

test('users_with_many_sessions names the users with more than 5 live sessions', async (t) => {
  const expected = [...groupBy(liveOfUsers(), (s) => `${s.tenantId}/${s.userId}`)]
    .filter(([, group]) => group.length > 5)
    .map(([, group]) => ({
      tenant_id: group[0]!.tenantId,
      user_id: group[0]!.userId,
      live_sessions: group.length,
      distinct_ips: new Set(group.map((session) => session.ip)).size,
      distinct_networks: new Set(group.map((session) => networkOf(session.ip))).size,
      oldest_created_at: min(group.map((session) => session.createdAt)),
      last_seen_at: max(group.map((session) => session.lastSeenAt)),
    }));
  const actual = await view<Record<string, unknown>>(
    `SELECT tenant_id, user_id, live_sessions::int, distinct_ips::int, distinct_networks::int,
            oldest_created_at, last_seen_at
       FROM sessions.users_with_many_sessions WHERE tenant_id = ANY($1)`,
  );
  const key = (row: Record<string, unknown>) => `${row.tenant_id}/${row.user_id}`;
  t.deepEqual(
    sorted(
      actual.map(
        (row): Record<string, unknown> => ({
          ...row,
          oldest_created_at: (row.oldest_created_at as Date).getTime(),
          last_seen_at: (row.last_seen_at as Date).getTime(),
        }),
      ),
      key,
    ),
    sorted(expected, key),
  );
  t.log(`${expected.length} users with more than 5 live sessions`);
});

test('users_with_many_revocations names the users with 3 or more revocations on one day', async (t) => {
  const revoked = sessions.filter(
    (session) => session.ending?.kind === 'revoked' && session.userId !== null,
  );
  const expected = [...groupBy(revoked, (s) => `${dayOf(s.ending!.at)}|${s.tenantId}|${s.userId}`)]
    .filter(([, group]) => group.length >= 3)
    .map(([key, group]) => ({
      day: key.split('|')[0],
      tenant_id: group[0]!.tenantId,
      user_id: group[0]!.userId,
      revocations: group.length,
      reasons: distinct(group.map((session) => session.ending!.reason!)),
      actors: distinct(group.map((session) => session.ending!.actor)),
    }));
  const actual = await view<Record<string, unknown>>(
    `SELECT day::text, tenant_id, user_id, revocations::int, reasons, actors
       FROM sessions.users_with_many_revocations WHERE tenant_id = ANY($1)`,
  );
  const key = (row: Record<string, unknown>) => `${row.day}|${row.tenant_id}|${row.user_id}`;
  t.deepEqual(
    sorted(
      actual.map(
        (row): Record<string, unknown> => ({
          ...row,
          reasons: distinct(row.reasons as string[]),
          actors: distinct(row.actors as string[]),
        }),
      ),
      key,
    ),
    sorted(expected, key),
  );
  t.true(expected.length > 0, 'the seed logs some users out everywhere');
});

test('users_with_many_networks names the users who logged in from 4 or more networks on one day', async (t) => {
  const logins = sessions.filter((session) => session.boundAt !== null);
  const expected = [...groupBy(logins, (s) => `${dayOf(s.boundAt!)}|${s.tenantId}|${s.userId}`)]
    .map(([key, group]) => ({
      day: key.split('|')[0],
      tenant_id: group[0]!.tenantId,
      user_id: group[0]!.userId,
      sessions: group.length,
      networks: new Set(group.map((session) => networkOf(session.ip))).size,
      network_list: distinct(group.map((session) => networkOf(session.ip))),
    }))
    .filter((row) => row.networks >= 4);
  const actual = await view<Record<string, unknown>>(
    `SELECT day::text, tenant_id, user_id, sessions::int, networks::int, network_list
       FROM sessions.users_with_many_networks WHERE tenant_id = ANY($1)`,
  );
  const key = (row: Record<string, unknown>) => `${row.day}|${row.tenant_id}|${row.user_id}`;
  t.deepEqual(
    sorted(
      actual.map(
        (row): Record<string, unknown> => ({
          ...row,
          network_list: distinct(row.network_list as string[]),
        }),
      ),
      key,
    ),
    sorted(expected, key),
  );
  t.true(expected.length > 0, 'the seed has travelling users');
});

test('the auditor reads every view and the event log, never token_hash or data, and writes nothing', async (t) => {
  for (const name of [
    'active_sessions_per_tenant',
    'sessions_per_user',
    'user_devices',
    'daily_session_counts',
    'peak_sessions_per_hour',
    'users_with_many_sessions',
    'users_with_many_revocations',
    'users_with_many_networks',
  ]) {
    await t.notThrowsAsync(auditor.query(`SELECT * FROM sessions.${name} LIMIT 1`), name);
  }
  const events = await auditor.query('SELECT count(*)::int AS n FROM sessions.event');
  t.true(events.rows[0].n > SEED.sessions);
  for (const statement of [
    'SELECT token_hash FROM sessions.session LIMIT 1',
    'SELECT data FROM sessions.session LIMIT 1',
    `UPDATE sessions.event SET actor = 'forged'`,
    'DELETE FROM sessions.event',
    `INSERT INTO sessions.event (tenant_id, session_id, kind, actor) VALUES ('a', gen_random_uuid(), 'created', 'x')`,
    `UPDATE sessions.session SET revoked_at = now(), revoked_reason = 'x'`,
    'DELETE FROM sessions.session',
    `UPDATE sessions.user_devices SET user_agent = 'forged'`,
    'DELETE FROM sessions.user_devices',
    `SELECT sessions.prune_events(interval '1 day')`,
    `SELECT * FROM sessions.revoke_user('u000001', 'audit')`,
    'SELECT sessions.gc_batch(10)',
  ]) {
    await t.throwsAsync(auditor.query(statement), { message: /permission denied/ }, statement);
  }
});

test('the app role can neither update nor delete events, nor prune them', async (t) => {
  const app = new pg.Client(db.appUrl);
  await app.connect();
  t.teardown(() => app.end());
  await app.query(`SELECT set_config('sessions.tenant', $1, false)`, [tenants[0]]);
  for (const statement of [
    `UPDATE sessions.event SET actor = 'forged'`,
    'DELETE FROM sessions.event',
    'TRUNCATE sessions.event',
    `SELECT sessions.prune_events(interval '1 day')`,
  ]) {
    await t.throwsAsync(app.query(statement), { message: /permission denied/ }, statement);
  }
});

test('prune_events deletes exactly the events older than the age, in batches', async (t) => {
  // Its own database: pruning would change what the view tests above see.
  const own = await createTestDatabase();
  const client = new pg.Client(own.url);
  await client.connect();
  t.teardown(async () => {
    await client.end();
    await own.drop();
  });
  await loadSeed(own.url, { sessions: 1_500, seed: 3, tenants: 2, weeks: 1 });
  // An age whose cutoff has no event within a minute either side, so the seconds the
  // test takes cannot move an event across it.
  let age = 3 * 24 * 60;
  for (; ; age++) {
    const near = await client.query(
      `SELECT count(*)::int AS n FROM sessions.event
        WHERE occurred_at BETWEEN now() - make_interval(mins => $1) - interval '1 minute'
                              AND now() - make_interval(mins => $1) + interval '1 minute'`,
      [age],
    );
    if (near.rows[0].n === 0) break;
  }
  const before = await client.query<{ id: string; old: boolean }>(
    `SELECT id::text, occurred_at < now() - make_interval(mins => $1) AS old FROM sessions.event`,
    [age],
  );
  const old = before.rows.filter((row) => row.old).map((row) => row.id);
  const kept = before.rows.filter((row) => !row.old).map((row) => row.id);
  t.true(old.length > 1_000 && kept.length > 1_000);
  await client.query('SET ROLE sessions_admin');
  const batches: number[] = [];
  for (;;) {
    const result = await client.query<{ n: number }>(
      'SELECT sessions.prune_events(make_interval(mins => $1), 400) AS n',
      [age],
    );
    batches.push(result.rows[0]!.n);
    if (result.rows[0]!.n < 400) break;
  }
  await client.query('RESET ROLE');
  t.deepEqual(batches, [
    ...Array.from({ length: Math.floor(old.length / 400) }, () => 400),
    old.length % 400,
  ]);
  const after = await client.query<{ id: string }>('SELECT id::text FROM sessions.event');
  t.deepEqual(after.rows.map((row) => row.id).sort(), [...kept].sort());
  await t.throwsAsync(client.query(`SELECT sessions.prune_events(interval '0')`), {
    message: /positive interval/,
  });
});
