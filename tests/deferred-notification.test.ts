import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { fileURLToPath } from 'node:url';
import test from 'ava';
import pg from 'pg';
import type { Logger } from '../src/index.js';
import type { TestDatabase } from '../src/testing/index.js';
import { setupDatabase } from './helpers/database.js';
import { Browser, startApp, type TestApp } from './helpers/http.js';

// The middleware's data writes notify from `COMMIT; SELECT sessions.notify_deferred()`,
// the same message as their commit; everything else notifies inside its commit. A
// second connection LISTENs and sees what really goes out.

let db: TestDatabase;
let admin: pg.Pool;
let listener: pg.Client;
/** Every payload heard on sessions_changed, parsed, in order. */
const heard: { op: string; s?: [string, string, string, number][]; tenant?: string }[] = [];
const payloadBytes: number[] = [];

test.before(async () => {
  ({ db, admin } = await setupDatabase());
  listener = new pg.Client(db.url);
  listener.on('error', () => {});
  await listener.connect();
  listener.on('notification', (message) => {
    payloadBytes.push(Buffer.byteLength(message.payload ?? ''));
    heard.push(JSON.parse(message.payload ?? 'null'));
  });
  await listener.query('LISTEN sessions_changed');
});

test.after.always(async () => {
  await listener?.end();
  await admin?.end();
  await db?.drop();
});

/** A live session of `tenant`, inserted as superuser. */
async function insertSession(tenant: string): Promise<{ id: string; hash: string }> {
  const { rows } = await admin.query(
    `INSERT INTO sessions.session (tenant_id, token_hash, idle_expires_at, absolute_expires_at)
     VALUES ($1, $2, now() + interval '1 hour', now() + interval '1 day')
     RETURNING id, encode(token_hash, 'hex') AS hash`,
    [tenant, randomBytes(32)],
  );
  return rows[0] as { id: string; hash: string };
}

/** The notifications that name session `id`, after a moment for delivery. */
async function heardAbout(id: string, waitMs = 300) {
  await new Promise((resolve) => setTimeout(resolve, waitMs));
  // Without each entry's time (its 8th element, since migration 11), which varies.
  return heard
    .filter((message) => message.s?.some((entry) => entry[1] === id))
    .map((message) => ({ ...message, s: message.s?.map((entry) => entry.slice(0, 7)) }));
}

/** Runs `statements` as sessions_app on a connection of its own (one simple-query message each). */
async function asApp(tenant: string, statements: string[]): Promise<pg.QueryResult[]> {
  const client = new pg.Client(db.appUrl);
  client.on('error', () => {});
  await client.connect();
  try {
    await client.query(`SELECT set_config('sessions.tenant', ${pg.escapeLiteral(tenant)}, false)`);
    const results: pg.QueryResult[] = [];
    for (const statement of statements) {
      const result = (await client.query(statement)) as pg.QueryResult | pg.QueryResult[];
      results.push(...(Array.isArray(result) ? result : [result]));
    }
    return results;
  } finally {
    await client.end();
  }
}

const DEFER = `SELECT set_config('sessions.defer_notify', 'on', true)`;
const FLUSH = 'SELECT sessions.notify_deferred() AS notified';

test.serial('a hand-written UPDATE notifies inside its commit, with no flush', async (t) => {
  const { id, hash } = await insertSession('plain');
  await asApp('plain', [
    `BEGIN; UPDATE sessions.session SET data = '{"by":"hand"}' WHERE id = '${id}'; COMMIT`,
  ]);
  t.deepEqual(await heardAbout(id), [
    { op: 'update', s: [['plain', id, hash, 2, 'updated', null, null]] },
  ]);
  // Nothing was left behind for a flush to send.
  const [pending] = await asApp('plain', [
    "SELECT coalesce(current_setting('sessions.notify_pending', true), '') AS pending",
  ]);
  t.is(pending?.rows[0]?.pending, '');
});

test.serial(
  'a deferred data write notifies nothing until notify_deferred(), then exactly once',
  async (t) => {
    const { id, hash } = await insertSession('deferred');
    const client = new pg.Client(db.appUrl);
    await client.connect();
    t.teardown(() => client.end());
    await client.query(
      `BEGIN; SELECT set_config('sessions.tenant', 'deferred', true); ${DEFER};
     UPDATE sessions.session SET data = '{"a":1}' WHERE id = '${id}'; COMMIT`,
    );
    t.deepEqual(await heardAbout(id), [], 'nothing at the commit');
    const { rows } = await client.query(FLUSH);
    t.true(rows[0]?.notified);
    t.deepEqual(await heardAbout(id), [
      { op: 'update', s: [['deferred', id, hash, 2, 'updated', null, null]] },
    ]);
    // A second flush has nothing left to send.
    await client.query(FLUSH);
    t.is((await heardAbout(id)).length, 1);
  },
);

test.serial('a rollback, or a rolled-back savepoint, leaves nothing to send', async (t) => {
  const { id } = await insertSession('rollback');
  const other = await insertSession('rollback');
  const results = await asApp('rollback', [
    `BEGIN; ${DEFER}; UPDATE sessions.session SET data = '{"a":1}' WHERE id = '${id}'; ROLLBACK`,
    `BEGIN; SAVEPOINT s; ${DEFER}; UPDATE sessions.session SET data = '{"a":2}' WHERE id = '${other.id}';
     ROLLBACK TO SAVEPOINT s; COMMIT`,
    "SELECT coalesce(current_setting('sessions.notify_pending', true), '') AS pending",
    FLUSH,
  ]);
  const row = (name: string) => results.find((result) => result.fields[0]?.name === name)?.rows[0];
  t.is(row('pending')?.pending, '', 'nothing queued');
  t.true(row('notified')?.notified);
  t.deepEqual(await heardAbout(id), []);
  t.deepEqual(await heardAbout(other.id, 0), []);
  const { rows } = await admin.query('SELECT version::int FROM sessions.session WHERE id = $1', [
    id,
  ]);
  t.is(rows[0]?.version, 1, 'the write itself was rolled back');
});

test.serial(
  'what must be refused at once notifies inside the commit even when deferral is set',
  async (t) => {
    const changes: [string, (id: string) => string][] = [
      [
        'revocation',
        (id) =>
          `UPDATE sessions.session SET revoked_at = now(), revoked_reason = 'x' WHERE id = '${id}'`,
      ],
      [
        'data and a revocation',
        (id) =>
          `UPDATE sessions.session SET data = '{"b":1}', revoked_at = now(), revoked_reason = 'x' WHERE id = '${id}'`,
      ],
      [
        'another column (absolute expiry)',
        (id) =>
          `UPDATE sessions.session SET absolute_expires_at = now() + interval '1 hour' WHERE id = '${id}'`,
      ],
      ['destroy', (id) => `DELETE FROM sessions.session WHERE id = '${id}'`],
    ];
    for (const [name, statement] of changes) {
      const { id } = await insertSession('secure');
      // No flush follows: whatever arrives was sent by the commit itself.
      await asApp('secure', [`BEGIN; ${DEFER}; ${statement(id)}; COMMIT`]);
      t.is((await heardAbout(id)).length, 1, name);
    }
  },
);

test.serial(
  'a rotation and a user binding wait for the flush when deferral is set, like data (migration 6)',
  async (t) => {
    const changes: [string, (id: string) => string][] = [
      [
        'rotation',
        (id) =>
          `UPDATE sessions.session SET token_hash = '\\x${randomBytes(32).toString('hex')}' WHERE id = '${id}'`,
      ],
      [
        'user binding',
        (id) => `UPDATE sessions.session SET user_id = 'someone' WHERE id = '${id}'`,
      ],
      [
        'data and a user binding',
        (id) => `UPDATE sessions.session SET data = '{"b":1}', user_id = 'u2' WHERE id = '${id}'`,
      ],
    ];
    for (const [name, statement] of changes) {
      const unflushed = await insertSession('rotating');
      await asApp('rotating', [`BEGIN; ${DEFER}; ${statement(unflushed.id)}; COMMIT`]);
      t.is((await heardAbout(unflushed.id)).length, 0, `${name}: nothing without the flush`);
      const flushed = await insertSession('rotating');
      await asApp('rotating', [`BEGIN; ${DEFER}; ${statement(flushed.id)}; COMMIT`, FLUSH]);
      t.is((await heardAbout(flushed.id)).length, 1, `${name}: once with it`);
    }
  },
);

test.serial(
  'deferral is asked per statement: the next statement of the transaction notifies inside the commit',
  async (t) => {
    const first = await insertSession('once');
    const second = await insertSession('once');
    await asApp('once', [
      `BEGIN; ${DEFER};
     UPDATE sessions.session SET data = '{"a":1}' WHERE id = '${first.id}';
     UPDATE sessions.session SET data = '{"a":1}' WHERE id = '${second.id}'; COMMIT`,
    ]);
    t.deepEqual(await heardAbout(first.id), [], 'the deferred one waits for its flush');
    t.is((await heardAbout(second.id, 0)).length, 1, 'the other notified at the commit');
  },
);

test.serial('more deferred entries than fit one payload are split under 8000 bytes', async (t) => {
  const tenant = `split-${'t'.repeat(100)}`;
  const ids: string[] = [];
  for (let index = 0; index < 150; index++) ids.push((await insertSession(tenant)).id);
  const before = heard.length;
  await asApp(tenant, [
    `BEGIN; ${DEFER}; UPDATE sessions.session SET data = '{"bulk":true}' WHERE tenant_id = ${pg.escapeLiteral(tenant)}; COMMIT; ${FLUSH}`,
  ]);
  await new Promise((resolve) => setTimeout(resolve, 300));
  const messages = heard.slice(before).filter((message) => message.s?.[0]?.[0] === tenant);
  const sizes = payloadBytes.slice(before);
  t.true(messages.length >= 3, `${messages.length} payloads`);
  t.true(
    sizes.every((size) => size < 8000),
    `payload sizes ${sizes.join(', ')}`,
  );
  const named = messages.flatMap((message) => message.s!.map((entry) => entry[1])).sort();
  t.deepEqual(named, [...ids].sort(), 'every session exactly once');
});

test.serial(
  'notify_deferred() never raises: what it cannot send it reports as false',
  async (t) => {
    const [, result, pending] = await asApp('broken', [
      "SELECT set_config('sessions.notify_pending', 'not json', false)",
      FLUSH,
      "SELECT current_setting('sessions.notify_pending', true) AS pending",
    ]);
    t.false(result?.rows[0]?.notified);
    t.is(pending?.rows[0]?.pending, '', 'and the queue is cleared');
  },
);

/** One app node with its cache, and a logger that keeps its warnings. */
async function node(
  options: Record<string, unknown> = {},
): Promise<TestApp & { warnings: string[] }> {
  const warnings: string[] = [];
  const logger: Logger = {
    debug: () => {},
    info: () => {},
    warn: (_fields, message) => warnings.push(message),
    error: (_fields, message) => warnings.push(message),
  };
  const app = await startApp(
    { database: db.appUrl, gc: false, touchInterval: 60_000, logger, ...options },
    (router) => {
      router.post('/set', (ctx) => {
        Object.assign(ctx.session!, ctx.request.query);
        ctx.body = 'ok';
      });
      router.get('/me', (ctx) => {
        ctx.body = { id: ctx.sessions.id, data: ctx.session!.toJSON() };
      });
    },
  );
  await app.middleware.start();
  return Object.assign(app, { warnings });
}

for (const [shape, options] of [
  ['a pool write', {}],
  ['a request transaction', { transaction: 'request' }],
  ['lock mode', { mode: 'lock' }],
] as const) {
  test.serial(
    `${shape}: the middleware's data write notifies once, after its commit, and another node evicts`,
    async (t) => {
      const [a, b] = await Promise.all([node(options), node()]);
      t.teardown(() => Promise.all([a.close(), b.close()]));
      const browser = new Browser(a.url);
      await browser.post('/set?v=1');
      const { id } = (await browser.get('/me')).body as { id: string };
      const other = new Browser(b.url);
      for (const [name, value] of browser.cookies) other.cookies.set(name, value);
      t.like((await other.get('/me')).body, { data: { v: '1' } });
      t.like((await other.get('/me')).body, { data: { v: '1' } }, 'B serves it from its cache');
      // After the creation's own notification has arrived (CI saw it arrive late, under load).
      const before = (await heardAbout(id)).length;
      t.is((await browser.post('/set?v=2')).status, 200);
      t.is((await heardAbout(id)).length, before + 1, 'one notification');
      t.like((await other.get('/me')).body, { data: { v: '2' } }, 'B evicted its copy');
      t.is(a.middleware.metrics.snapshot().notifyFailures, 0);
    },
  );
}

test.serial('a failed flush leaves the write acknowledged, counted and logged', async (t) => {
  const a = await node();
  t.teardown(() => a.close());
  const browser = new Browser(a.url);
  await browser.post('/set?v=1');
  const { id } = (await browser.get('/me')).body as { id: string };
  // The statement after the COMMIT fails: the app role may no longer run the flush.
  await admin.query('REVOKE EXECUTE ON FUNCTION sessions.notify_deferred() FROM sessions_app');
  t.teardown(() =>
    admin.query('GRANT EXECUTE ON FUNCTION sessions.notify_deferred() TO sessions_app'),
  );
  const response = await browser.post('/set?v=2');
  t.is(response.status, 200, 'the write is acknowledged');
  const { rows } = await admin.query('SELECT data FROM sessions.session WHERE id = $1', [id]);
  t.deepEqual(rows[0]?.data, { v: '2' }, 'and committed');
  t.is(a.middleware.metrics.snapshot().notifyFailures, 1);
  t.true(a.warnings.some((message) => /committed, change notification failed/.test(message)));
  t.like((await browser.get('/me')).body, { data: { v: '2' } });
});

test.serial(
  'the writing process killed (SIGKILL) right after sending its write: another node still evicts',
  async (t) => {
    const b = await node();
    t.teardown(() => b.close());
    const browser = new Browser(b.url);
    await browser.post('/set?v=before');
    const { id } = (await browser.get('/me')).body as { id: string };
    t.like((await browser.get('/me')).body, { data: { v: 'before' } }, 'cached on B');
    const evictions = b.middleware.metrics.snapshot().cacheEvictions;
    const writer = spawn(
      process.execPath,
      ['--import', 'tsx', fileURLToPath(new URL('./helpers/kill-after-write.ts', import.meta.url))],
      { env: { ...process.env, DATABASE_URL: db.appUrl, SESSION_ID: id }, stdio: 'inherit' },
    );
    const [code, signal] = (await once(writer, 'exit')) as [number | null, string | null];
    t.is(signal, 'SIGKILL', `the writer ended with code ${code}`);
    const started = Date.now();
    while (b.middleware.metrics.snapshot().cacheEvictions === evictions) {
      if (Date.now() - started > 3_000) break;
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
    t.true(b.middleware.metrics.snapshot().cacheEvictions > evictions, 'B heard it');
    t.like((await browser.get('/me')).body, { data: { v: 'after' } });
  },
);
