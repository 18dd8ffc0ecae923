import test from 'ava';
import pg from 'pg';
import { migrate } from '../src/db/migrator.js';
import { ReplicaRouter, type ReplicaRouterOptions } from '../src/db/replica-router.js';
import type { SessionOptions } from '../src/index.js';
import { type Cluster, type PostgresServer, startCluster } from '../src/testing/index.js';
import { runCli } from './helpers/cli.js';
import { Browser, startApp, type TestApp } from './helpers/http.js';
import { replicaRoutes, type SessionBody } from './helpers/replica-apps.js';

// One cluster for the file: a primary, replica1 (synchronous, remote_apply) and replica2
// (asynchronous). The tests run in order; the last one kills the primary.
const DATABASE = 'sessions_replicas';
const APP_ROLE = 'pgs_test_app';
const APP_PASSWORD = 'pgs_test';

let cluster: Cluster;
/** The middleware's URLs (a login role of sessions_app): primary, replica1, replica2. */
let appUrls: string[];
const apps: TestApp[] = [];

test.before(async () => {
  cluster = await startCluster({ replicas: 2, synchronous: 'remote_apply' });
  await query(cluster.primary, `CREATE DATABASE ${DATABASE}`, [], 'postgres');
  const migrated = await migrate(cluster.primary.url(DATABASE), 'up');
  if (migrated.exitCode !== 0) throw new Error(`migration failed:\n${migrated.output}`);
  // Roles are cluster-wide: the replicas get this one by replication.
  await query(
    cluster.primary,
    `CREATE ROLE ${APP_ROLE} LOGIN PASSWORD '${APP_PASSWORD}' IN ROLE sessions_app`,
    [],
    'postgres',
  );
  await cluster.waitForReplay();
  appUrls = cluster.urls(DATABASE).map(asAppRole);
});

test.after.always(async () => {
  await Promise.allSettled(apps.map((app) => app.close()));
  await cluster?.destroy();
});

function asAppRole(url: string): string {
  const parsed = new URL(url);
  parsed.username = APP_ROLE;
  parsed.password = APP_PASSWORD;
  return parsed.toString();
}

function replica(index: number): PostgresServer {
  const server = cluster.replicas[index];
  if (!server) throw new Error(`the cluster has no replica #${index}`);
  return server;
}

async function query<R extends pg.QueryResultRow = Record<string, unknown>>(
  server: PostgresServer,
  sql: string,
  params: unknown[] = [],
  database = DATABASE,
): Promise<R[]> {
  const client = new pg.Client({ connectionString: server.url(database) });
  client.on('error', () => {});
  await client.connect();
  try {
    return (await client.query<R>(sql, params)).rows;
  } finally {
    await client.end();
  }
}

/** Index and sequential scans of sessions.session counted by `server` itself. */
async function sessionScans(server: PostgresServer): Promise<number> {
  const rows = await query<{ scans: number }>(
    server,
    `SELECT (coalesce(idx_scan, 0) + coalesce(seq_scan, 0))::int AS scans
       FROM pg_stat_user_tables WHERE schemaname = 'sessions' AND relname = 'session'`,
  );
  return rows[0]?.scans ?? 0;
}

/** The version of a session row as `server` has it now (undefined: not there). */
async function versionOn(server: PostgresServer, id: string): Promise<number | undefined> {
  const rows = await query<{ version: number }>(
    server,
    'SELECT version::int AS version FROM sessions.session WHERE id = $1',
    [id],
  );
  return rows[0]?.version;
}

/** An app process of its own: its own router over `hosts` (or primary + replicas). */
async function appOn(
  routerOptions: ReplicaRouterOptions,
  options: Omit<SessionOptions, 'database'> = {},
): Promise<{ app: TestApp; router: ReplicaRouter }> {
  const router = new ReplicaRouter(routerOptions);
  const started = await startApp({ database: router, gc: false, ...options }, replicaRoutes);
  // The middleware closes only what it created: the router is the app's.
  const app = {
    ...started,
    close: async () => {
      await started.close();
      await router.close();
    },
  };
  apps.push(app);
  return { app, router };
}

async function closeApp(app: TestApp): Promise<void> {
  apps.splice(apps.indexOf(app), 1);
  await app.close();
}

async function pollUntil(what: string, timeoutMs: number, check: () => Promise<boolean> | boolean) {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (await check()) return;
    await sleep(25);
  }
  throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function inRotation(router: ReplicaRouter, server: PostgresServer): boolean {
  const name = `${server.host}:${server.port}`;
  return router.state().some((host) => host.name === name && host.inRotation);
}

test.serial(
  "session loads are answered by the replicas, by the replicas' own statistics",
  async (t) => {
    // Stale-free by construction (every row replayed first), so every load should stay there.
    const { app, router } = await appOn({ hosts: appUrls }, { cache: false });
    const browsers = Array.from({ length: 20 }, () => new Browser(app.url));
    for (const [i, browser] of browsers.entries()) {
      t.is((await browser.post(`/set?n=${i}`)).status, 200);
    }
    await cluster.waitForReplay();
    const servers = [cluster.primary, replica(0), replica(1)];
    const before = await Promise.all(servers.map(sessionScans));

    const rounds = 5;
    for (let round = 0; round < rounds; round++) {
      const responses = await Promise.all(browsers.map((browser) => browser.get('/get')));
      for (const [i, response] of responses.entries()) {
        t.is(response.status, 200);
        t.is((response.body as SessionBody).data?.n, String(i));
      }
    }
    const loads = rounds * browsers.length;
    t.deepEqual(router.counters, {
      replicaReads: loads,
      primaryReads: 0,
      staleReplicaReads: 0,
      failovers: 0,
    });

    // A backend publishes its statistics when it exits at the latest: close the pools.
    await closeApp(app);
    let deltas: number[] = [];
    await pollUntil('the replicas to publish their statistics', 15_000, async () => {
      const after = await Promise.all(servers.map(sessionScans));
      deltas = after.map((scans, i) => scans - before[i]!);
      return deltas[1]! + deltas[2]! >= loads;
    });
    const [primary, replica1, replica2] = deltas as [number, number, number];
    t.log(
      `scans of sessions.session: primary ${primary}, replica1 ${replica1}, replica2 ${replica2}`,
    );
    t.is(replica1 + replica2, loads, 'each load is one scan on a replica');
    t.true(replica1 > 0 && replica2 > 0, 'both replicas take a share');
    t.is(primary, 0, 'the primary answered none of them');
  },
);

test.serial(
  'with a replica 2 s behind, a client reads its own write from the primary in any app process, while the others keep reading from the replica',
  async (t) => {
    // The delayed replica is the only one, and kept in rotation (maxReplicaLagMs far above
    // 2 s): so only the version fence can keep the writer from reading its old row there.
    const topology = { primary: appUrls[0]!, replicas: [appUrls[2]!], maxReplicaLagMs: 60_000 };
    const a = await appOn(topology, { cache: false });
    const b = await appOn(topology, { cache: false });
    const delayed = replica(1);
    const writer = new Browser(a.app.url);
    const others = Array.from({ length: 6 }, () => new Browser(a.app.url));
    await writer.post('/set?step=0');
    // A new session gets its id when the request that created it commits.
    const writerId = ((await writer.get('/get')).body as SessionBody).id!;
    for (const [i, other] of others.entries()) await other.post(`/set?who=${i}`);
    await cluster.waitForReplay(delayed);
    await cluster.setApplyDelay(delayed, 2_000);
    try {
      await pollUntil('the delayed replica in rotation', 5_000, () =>
        [a.router, b.router].every((router) => inRotation(router, delayed)),
      );
      const start = { ...b.router.counters };
      const startedAt = Date.now();
      const steps = 4;
      for (let step = 1; step <= steps; step++) {
        // Written through process A, read back through process B: the cookie carries the fence.
        const written = await writer.post(`/set?step=${step}`);
        t.is(written.status, 200);
        // The reply shows the version the request loaded; its write commits the next one.
        const version = (written.body as SessionBody).version! + 1;
        const readBack = await via(writer, b.app).get('/get');
        t.is(readBack.status, 200);
        t.is((readBack.body as SessionBody).data?.step, String(step), 'reads its own write');
        t.is((readBack.body as SessionBody).version, version);
        const onReplica = await versionOn(delayed, writerId);
        t.true(onReplica! < version!, `the replica still had version ${onReplica} < ${version}`);
        for (const [i, other] of others.entries()) {
          const response = await via(other, b.app).get('/get');
          t.is((response.body as SessionBody).data?.who, String(i));
        }
      }
      t.true(Date.now() - startedAt < 2_000, 'all of it inside the replica delay');
      const counted = diff(b.router.counters, start);
      const othersReads = steps * others.length;
      t.log(`process B: ${JSON.stringify(counted)}`);
      t.is(counted.staleReplicaReads, steps, "the writer's reads found the replica behind…");
      t.is(counted.primaryReads, steps, '…and only those went to the primary');
      t.is(counted.replicaReads - counted.staleReplicaReads, othersReads, 'the others: replica');
    } finally {
      await cluster.setApplyDelay(delayed, 0);
    }
    await Promise.all([closeApp(a.app), closeApp(b.app)]);
  },
);

test.serial(
  'with the cache on in two processes, a client reads its own write through the other one even while its notification is held back',
  async (t) => {
    // Each process has its own router, cache and LISTEN connection. B's listener backend
    // is stopped (SIGSTOP) while the client writes through A: B hears nothing, so only
    // the version fence can tell B that its cached row is older than the client's write.
    const a = await appOn({ hosts: appUrls });
    const b = await appOn({ hosts: appUrls });
    const client = new Browser(a.app.url);
    t.is((await client.post('/set?step=0')).status, 200);
    const onB = via(client, b.app);
    const cacheHits = () => b.app.middleware.metrics.snapshot().cacheHits;
    // B caches version 1: the second read is a cache hit.
    t.is(((await onB.get('/get')).body as SessionBody).data?.step, '0');
    const hitsBefore = cacheHits();
    t.is(((await onB.get('/get')).body as SessionBody).data?.step, '0');
    t.is(cacheHits(), hitsBefore + 1, 'B serves version 1 from its cache');

    const listener = b.app.middleware.listenerPid;
    t.truthy(listener);
    for (let step = 1; step <= 3; step++) {
      process.kill(listener!, 'SIGSTOP');
      const heard = new Promise((resolve) =>
        b.app.middleware.events.once('cache:notification', resolve),
      );
      try {
        const written = await client.post(`/set?step=${step}`);
        t.is(written.status, 200);
        const version = (written.body as SessionBody).version! + 1;
        const moved = via(client, b.app);
        const readBack = await moved.get('/get');
        t.is((readBack.body as SessionBody).data?.step, String(step), 'reads its own write');
        t.is((readBack.body as SessionBody).version, version);
        // The fresh row is cached now: the next read costs no round trip.
        const hits = cacheHits();
        const roundTrips = b.app.middleware.metrics.snapshot().roundTrips;
        t.is(((await moved.get('/get')).body as SessionBody).version, version);
        t.is(cacheHits(), hits + 1, 'the fenced row is served from the cache once it is there');
        t.is(
          b.app.middleware.metrics.snapshot().roundTrips,
          roundTrips,
          'a cache hit: 0 round trips',
        );
      } finally {
        process.kill(listener!, 'SIGCONT');
      }
      await heard;
    }
    // Without holding anything back: every write read back through B at once.
    for (let step = 4; step <= 20; step++) {
      t.is((await client.post(`/set?step=${step}`)).status, 200);
      t.is(((await via(client, b.app).get('/get')).body as SessionBody).data?.step, String(step));
    }
    await Promise.all([closeApp(a.app), closeApp(b.app)]);
  },
);

test.serial(
  'a session revoked on the primary is not served by a lagging replica to a process that heard the notification',
  async (t) => {
    const topology = { primary: appUrls[0]!, replicas: [appUrls[2]!], maxReplicaLagMs: 60_000 };
    const a = await appOn(topology, { cache: false });
    const c = await appOn(topology); // cache on: its listener hears the revocation
    const delayed = replica(1);
    const victim = new Browser(c.app.url);
    await victim.post('/set?role=victim');
    // A new session gets its id when the request that created it commits.
    const { id } = (await victim.get('/get')).body as SessionBody;
    await cluster.waitForReplay(delayed);
    await cluster.setApplyDelay(delayed, 2_000);
    try {
      await pollUntil('the delayed replica in rotation', 5_000, () =>
        inRotation(c.router, delayed),
      );
      t.is(((await victim.get('/get')).body as SessionBody).id, id);
      const heard = new Promise((resolve) =>
        c.app.middleware.events.once('cache:notification', resolve),
      );
      const revokedAt = Date.now();
      const revoked = await new Browser(a.app.url).post(`/revoke?id=${id}`);
      t.deepEqual(revoked.body, { revoked: true });
      await heard;
      const stale = c.router.counters.staleReplicaReads;
      const after = await victim.get('/get');
      t.true(Date.now() - revokedAt < 2_000, 'asked while the replica still had it live');
      t.is(
        (await query(delayed, 'SELECT revoked_at FROM sessions.session WHERE id = $1', [id]))[0]
          ?.revoked_at,
        null,
      );
      t.is((after.body as SessionBody).id, null, 'the revoked session is not served');
      t.is(
        c.router.counters.staleReplicaReads,
        stale + 1,
        'the announced version sent it to the primary',
      );
    } finally {
      await cluster.setApplyDelay(delayed, 0);
    }
    await Promise.all([closeApp(a.app), closeApp(c.app)]);
  },
);

test.serial(
  'a session a lagging replica still has as expired, but the primary has extended, is served from the primary',
  async (t) => {
    const topology = { primary: appUrls[0]!, replicas: [appUrls[2]!], maxReplicaLagMs: 60_000 };
    const { app, router } = await appOn(topology, { cache: false });
    const delayed = replica(1);
    const user = new Browser(app.url);
    await user.post('/set?role=extended');
    const { id } = (await user.get('/get')).body as SessionBody;
    await query(
      cluster.primary,
      `UPDATE sessions.session SET idle_expires_at = now() - interval '1 minute' WHERE id = $1`,
      [id],
    );
    await cluster.waitForReplay(delayed);
    await cluster.setApplyDelay(delayed, 5_000);
    try {
      await pollUntil('the delayed replica in rotation', 5_000, () => inRotation(router, delayed));
      // A sliding expiry moved on the primary keeps the version: no fence can tell.
      await query(
        cluster.primary,
        `UPDATE sessions.session SET idle_expires_at = now() + interval '1 hour' WHERE id = $1`,
        [id],
      );
      const stale = router.counters.staleReplicaReads;
      const after = (await user.get('/get')).body as SessionBody;
      t.deepEqual(after, { id, version: after.version, data: { role: 'extended' } });
      t.is(router.counters.staleReplicaReads, stale + 1, 'the primary had the last word');
    } finally {
      await cluster.setApplyDelay(delayed, 0);
    }
    await closeApp(app);
  },
);

test.serial(
  'a replica stopped under load leaves rotation without a failed request and rejoins when started',
  async (t) => {
    const { app, router } = await appOn({ hosts: appUrls }, { cache: false });
    const stopping = replica(1);
    const clients = await Promise.all(
      Array.from({ length: 6 }, async (_, i) => {
        const browser = new Browser(app.url);
        await browser.post(`/set?n=0&client=${i}`);
        return { browser, written: 0 };
      }),
    );
    const failures: string[] = [];
    let requests = 0;
    let running = true;
    const load = Promise.all(
      clients.map(async (client) => {
        for (let i = 1; running; i++) {
          // Mostly reads; every fifth request writes, and the next read must see it.
          const write = i % 5 === 0;
          const response = write
            ? await client.browser.post(`/set?n=${i}`)
            : await client.browser.get('/get');
          requests++;
          if (response.status !== 200) {
            failures.push(`${response.status} ${JSON.stringify(response.body)}`);
            continue;
          }
          if (write) client.written = i;
          const seen = Number((response.body as SessionBody).data?.n);
          if (seen !== client.written)
            failures.push(`read n=${seen} after writing ${client.written}`);
        }
      }),
    );
    try {
      await sleep(300);
      await cluster.stopReplica(stopping);
      await pollUntil(
        'the stopped replica out of rotation',
        5_000,
        () => !inRotation(router, stopping),
      );
      t.is(router.state().find((host) => host.name.endsWith(`:${stopping.port}`))?.role, 'down');
      await sleep(300);
      await cluster.startReplica(stopping);
      const before = await sessionScans(stopping);
      await pollUntil('the replica back in rotation', 5_000, () => inRotation(router, stopping));
      await sleep(500);
      running = false;
      await load;
      await closeApp(app);
      let served = 0;
      await pollUntil('reads on the restarted replica', 15_000, async () => {
        served = (await sessionScans(stopping)) - before;
        return served > 0;
      });
      t.log(`${requests} requests, ${served} loads on the restarted replica`);
    } finally {
      running = false;
      await load;
    }
    t.deepEqual(failures, []);
    t.true(requests > 100);
  },
);

test.serial(
  'a replica lagging beyond maxReplicaLagMs leaves rotation, reads go to the primary, and it returns once caught up',
  async (t) => {
    const delayed = replica(1);
    const { app, router } = await appOn(
      {
        primary: appUrls[0]!,
        replicas: [appUrls[2]!],
        maxReplicaLagMs: 500,
        healthCheckInterval: 100,
      },
      { cache: false },
    );
    const browser = new Browser(app.url);
    await browser.post('/set?lag=1');
    await cluster.waitForReplay(delayed);
    await pollUntil('the replica in rotation', 5_000, () => inRotation(router, delayed));
    await cluster.setApplyDelay(delayed, 3_000);
    // Commits the replica receives but holds back: its last replayed one grows old.
    let writing = true;
    const writes = (async () => {
      while (writing) {
        await query(cluster.primary, 'SELECT pg_current_xact_id()');
        await sleep(50);
      }
    })();
    try {
      await pollUntil(
        'the lagging replica out of rotation',
        5_000,
        () => !inRotation(router, delayed),
      );
      const before = { ...router.counters };
      const response = await browser.get('/get');
      t.is(response.status, 200);
      t.is((response.body as SessionBody).data?.lag, '1');
      t.deepEqual(diff(router.counters, before), {
        replicaReads: 0,
        primaryReads: 1,
        staleReplicaReads: 0,
        failovers: 0,
      });
    } finally {
      writing = false;
      await writes;
      await cluster.setApplyDelay(delayed, 0);
    }
    await pollUntil('the replica back in rotation', 10_000, () => inRotation(router, delayed));
    const before = router.counters.replicaReads;
    t.is((await browser.get('/get')).status, 200);
    t.is(router.counters.replicaReads, before + 1, 'reads go to the replica again');
    await closeApp(app);
  },
);

test.serial(
  'pg-sessions status --hosts shows each host role, replay position and lag',
  async (t) => {
    const [synchronous, delayed] = [replica(0), replica(1)];
    await cluster.waitForReplay();
    await cluster.setApplyDelay(delayed, 2_000);
    try {
      // A commit the synchronous replica applies at once and the delayed one holds back.
      await query(cluster.primary, 'SELECT pg_current_xact_id()');
      const result = await runCli([
        'status',
        '--hosts',
        cluster.urls(DATABASE).join(','),
        '--format',
        'json',
      ]);
      t.is(result.code, 0, result.stderr);
      const report = JSON.parse(result.stdout) as {
        hosts: { host: string; role: string; replayLsn: string | null; lagBytes: number | null }[];
      };
      const byPort = (server: PostgresServer) =>
        report.hosts.find((host) => host.host.includes(`:${server.port}/`));
      t.is(byPort(cluster.primary)?.role, 'primary');
      t.is(byPort(synchronous)?.role, 'replica');
      t.is(byPort(synchronous)?.lagBytes, 0, 'remote_apply: replayed before the commit returned');
      t.is(byPort(delayed)?.role, 'replica');
      t.truthy(byPort(delayed)?.replayLsn);
      t.true((byPort(delayed)?.lagBytes ?? 0) > 0, 'the delayed replica is behind');
    } finally {
      await cluster.setApplyDelay(delayed, 0);
    }
  },
);

test.serial(
  'kill -9 of the primary under write load: no acknowledged write lost or applied twice, writes resume within 5 s of the promotion, revocations reach every app',
  async (t) => {
    const routerOptions: ReplicaRouterOptions = {
      hosts: appUrls,
      failoverTimeout: 5_000,
      connectTimeout: 1_000,
      statementTimeout: 2_000,
    };
    // Two app processes, each with its own router, cache and listener.
    const a = await appOn(routerOptions);
    const b = await appOn(routerOptions);
    const victim = new Browser(a.app.url);
    await victim.post('/set?role=victim');
    const victimId = ((await victim.get('/get')).body as SessionBody).id!;

    interface Outcome {
      i: number;
      status: number;
      code?: string;
      id?: string;
      startedAt: number;
      endedAt: number;
    }
    const writers = Array.from({ length: 8 }, (_, k) => ({
      browser: new Browser((k % 2 === 0 ? a : b).app.url),
      outcomes: [] as Outcome[],
    }));
    // Each client's session exists before the load (a new session has no id until it commits).
    for (const writer of writers) t.is((await writer.browser.post('/set?client=1')).status, 200);
    let running = true;
    const load = Promise.all(
      writers.map(async (writer) => {
        for (let i = 0; running; i++) {
          const startedAt = performance.now();
          // Every fifth write also rotates the token: applied twice, it would lose the session.
          const response = await writer.browser.post(
            `/write?i=${i}${i % 5 === 4 ? '&rotate=1' : ''}`,
          );
          const body = response.body as { id?: string; error?: string };
          writer.outcomes.push({
            i,
            status: response.status,
            code: body?.error,
            id: body?.id,
            startedAt,
            endedAt: performance.now(),
          });
        }
      }),
    );
    const listenersUp = [a, b].map(
      ({ app }) =>
        new Promise<number>((resolve) =>
          app.middleware.events.on('cache:listener:up', () => resolve(performance.now())),
        ),
    );
    const newPrimary = replica(0);
    let killedAt = 0;
    let promotionStartedAt = 0;
    let promotedAt = 0;
    try {
      await sleep(500);
      await cluster.killPrimary();
      killedAt = performance.now();
      // An orchestrator takes a moment to decide; writes meanwhile wait for a primary.
      await sleep(200);
      promotionStartedAt = performance.now();
      await cluster.promote(newPrimary);
      promotedAt = performance.now();
      await sleep(1_500);
    } finally {
      running = false;
      await load;
    }
    t.is(cluster.primary, newPrimary);

    const all = writers.flatMap((writer) => writer.outcomes);
    const unexpected = all.filter(
      (o) => o.status !== 200 && !(o.status === 503 && o.code === 'SESSION_STORE_UNAVAILABLE'),
    );
    t.deepEqual(unexpected, [], 'every request succeeded or got 503 SESSION_STORE_UNAVAILABLE');
    const longest = Math.max(...all.map((o) => o.endedAt - o.startedAt));
    const firstAfter = Math.min(
      ...all.filter((o) => o.status === 200 && o.startedAt > killedAt).map((o) => o.endedAt),
    );
    const unavailable = all.filter((o) => o.status === 503).length;
    t.log(
      `${all.length} writes, ${unavailable} × 503; promotion took ${Math.round(promotedAt - promotionStartedAt)} ms; ` +
        `first write begun after the kill acknowledged ${Math.round(firstAfter - promotionStartedAt)} ms after the promotion began; ` +
        `longest request ${Math.round(longest)} ms`,
    );
    t.true(firstAfter - promotionStartedAt < 5_000, 'writes succeed again within 5 s');
    t.true(
      longest < 5_000 + 1_000 + 2_000,
      'no request outlives failoverTimeout + connect + statement',
    );

    // Everything acknowledged is on the new primary, in the one session each client has.
    for (const writer of writers) {
      const acked = writer.outcomes.filter((o) => o.status === 200);
      const ids = new Set(acked.map((o) => o.id));
      t.is(ids.size, 1, 'one session per client, however its writes were retried');
      const [id] = ids;
      const rows = await query<{ data: Record<string, number> }>(
        newPrimary,
        'SELECT data FROM sessions.session WHERE id = $1 AND revoked_at IS NULL',
        [id],
      );
      const data = rows[0]?.data ?? {};
      const missing = acked.filter((o) => data[`w${o.i}`] !== o.i).map((o) => o.i);
      t.deepEqual(missing, [], 'no acknowledged write is missing');
      // The client still holds a valid cookie (a rotation applied twice would have lost it).
      const final = await writer.browser.get('/get');
      t.is((final.body as SessionBody).id, id ?? null);
    }
    const ids = writers.map((writer) => writer.outcomes.find((o) => o.status === 200)?.id);
    const twice = await query(
      newPrimary,
      `SELECT session_id, kind, changed_keys, count(*)::int AS n FROM sessions.event
        WHERE session_id = ANY($1::uuid[]) AND kind IN ('created', 'updated')
        GROUP BY session_id, kind, changed_keys HAVING count(*) > 1`,
      [ids],
    );
    t.deepEqual(twice, [], 'no creation or key change recorded twice');
    // Rotations carry no key names: count them against the rotating requests instead.
    const rotations = await query<{ session_id: string; n: number }>(
      newPrimary,
      `SELECT session_id, count(*)::int AS n FROM sessions.event
        WHERE session_id = ANY($1::uuid[]) AND kind = 'rotated' GROUP BY session_id`,
      [ids],
    );
    for (const [k, writer] of writers.entries()) {
      const rotating = writer.outcomes.filter((o) => o.i % 5 === 4);
      const acked = rotating.filter((o) => o.status === 200).length;
      const recorded = rotations.find((row) => row.session_id === ids[k])?.n ?? 0;
      t.true(
        recorded >= acked && recorded <= rotating.length,
        `client ${k}: ${recorded} rotations recorded for ${acked} acknowledged of ${rotating.length} sent`,
      );
    }
    const versions = await query(
      newPrimary,
      `SELECT session_id, version, count(*)::int AS n FROM sessions.event
        WHERE session_id = ANY($1::uuid[]) AND kind = 'updated'
        GROUP BY session_id, version HAVING count(*) > 1`,
      [ids],
    );
    t.deepEqual(versions, [], 'each version is one landed write');

    // Invalidation on the new primary: both listeners moved there; B serves the victim
    // from its cache, A revokes it, and B stops accepting it within 2 s.
    const [upA, upB] = await Promise.all(listenersUp);
    t.log(
      `listeners on the new primary ${Math.round(upA! - promotedAt)} / ${Math.round(upB! - promotedAt)} ms after the promotion returned`,
    );
    const listening = await query<{ pid: number }>(
      newPrimary,
      `SELECT pid FROM pg_stat_activity WHERE application_name = 'pg-sessions-listener'`,
    );
    const pids = listening.map((row) => row.pid);
    t.true(
      pids.includes(a.app.middleware.listenerPid!) && pids.includes(b.app.middleware.listenerPid!),
    );
    const onB = via(victim, b.app);
    t.is(((await onB.get('/get')).body as SessionBody).id, victimId);
    const hits = b.app.middleware.metrics.snapshot().cacheHits;
    t.is(((await onB.get('/get')).body as SessionBody).id, victimId);
    t.is(b.app.middleware.metrics.snapshot().cacheHits, hits + 1, 'B serves it from its cache');

    const revokedAt = performance.now();
    t.deepEqual((await new Browser(a.app.url).post(`/revoke?id=${victimId}`)).body, {
      revoked: true,
    });
    let rejectedAfter = Number.POSITIVE_INFINITY;
    await pollUntil('B to reject the revoked session', 2_000, async () => {
      const response = await onB.get('/get');
      if ((response.body as SessionBody).id !== null) return false;
      rejectedAfter = performance.now() - revokedAt;
      return true;
    });
    t.log(`B rejected the revoked session ${Math.round(rejectedAfter)} ms after the revocation`);
    t.true(rejectedAfter < 2_000);
  },
);

/** The same client (its cookies) talking to another app process. */
function via(browser: Browser, app: TestApp): Browser {
  const moved = new Browser(app.url);
  for (const [name, value] of browser.cookies) moved.cookies.set(name, value);
  return moved;
}

function diff<T extends object>(now: T, before: T): T {
  return Object.fromEntries(
    Object.entries(now).map(([key, value]) => [
      key,
      (value as number) - (before as Record<string, number>)[key]!,
    ]),
  ) as T;
}
