import test from 'ava';
import { migrate } from '../../src/db/migrator.js';
import type { ReplicaRouterOptions } from '../../src/db/replica-router.js';
import { Browser } from '../helpers/http.js';
import {
  appWithRouter,
  hostState,
  inRotation,
  pollUntil,
  queryUrl,
  type RouterApp,
  type SessionBody,
  sleep,
  via,
} from '../helpers/replica-apps.js';
import { PATRONI_TTL_S, PatroniCluster, type PatroniNode } from './helpers/patroni.js';

// Three Patroni nodes (Debian's patroni, etcd-server and PostgreSQL) in synchronous mode,
// and app processes whose ReplicaRouter is given the three hosts. The tests run in order
// on one cluster: an unplanned failover, a planned switchover, a replica restart.
const DATABASE = 'sessions_patroni';
const APP_ROLE = 'pgs_patroni_app';
const PASSWORD = 'pgs_test';

let cluster: PatroniCluster;
let appUrls: string[];
const apps: RouterApp[] = [];

test.before(async () => {
  cluster = await PatroniCluster.start(3);
  const leader = (await cluster.leader())!;
  await queryUrl(leader.url(), `CREATE DATABASE ${DATABASE}`);
  const migrated = await migrate(leader.url(DATABASE), 'up');
  if (migrated.exitCode !== 0) throw new Error(`migration failed:\n${migrated.output}`);
  // pg_monitor lets the router see each replica's WAL receiver status and timeline.
  await queryUrl(
    leader.url(),
    `CREATE ROLE ${APP_ROLE} LOGIN PASSWORD '${PASSWORD}' IN ROLE sessions_app, pg_monitor`,
  );
  appUrls = cluster.nodes.map((node) => node.url(DATABASE, APP_ROLE, PASSWORD));
});

test.after.always(async () => {
  await Promise.allSettled(apps.splice(0).map(({ app }) => app.close()));
  await cluster?.destroy();
});

const ROUTER: ReplicaRouterOptions = {
  failoverTimeout: 5_000,
  connectTimeout: 1_000,
  statementTimeout: 2_000,
  healthCheckInterval: 200,
};

async function appOn(cache = true): Promise<RouterApp> {
  const started = await appWithRouter({ hosts: appUrls, ...ROUTER }, { cache: cache ? {} : false });
  apps.push(started);
  return started;
}

async function closeAll(): Promise<void> {
  await Promise.all(apps.splice(0).map(({ app }) => app.close()));
}

interface Outcome {
  i: number;
  status: number;
  code?: string;
  id?: string;
  startedAt: number;
  endedAt: number;
}

interface Writer {
  browser: Browser;
  outcomes: Outcome[];
}

/** Clients writing one new key per request through the apps, until stopped. */
async function writeLoad(targets: readonly RouterApp[], clients: number) {
  const writers: Writer[] = [];
  for (let k = 0; k < clients; k++) {
    const browser = new Browser(targets[k % targets.length]!.app.url);
    const created = await browser.post('/set?client=1');
    if (created.status !== 200) throw new Error(`could not create client ${k}'s session`);
    writers.push({ browser, outcomes: [] });
  }
  let running = true;
  const done = Promise.all(
    writers.map(async (writer) => {
      for (let i = 0; running; i++) {
        const startedAt = Date.now();
        const response = await writer.browser.post(`/write?i=${i}`);
        const body = response.body as { id?: string; error?: string };
        writer.outcomes.push({
          i,
          status: response.status,
          code: body?.error,
          id: body?.id,
          startedAt,
          endedAt: Date.now(),
        });
        // A 503 is the app saying "retry": a client backs off a little.
        if (response.status !== 200) await sleep(100);
      }
    }),
  );
  return {
    writers,
    stop: async () => {
      running = false;
      await done;
    },
  };
}

/** Only successes and retryable 503s; every acknowledged key on the primary, in one session per client. */
async function checkOutcomes(
  t: import('ava').ExecutionContext,
  writers: readonly Writer[],
  primary: PatroniNode,
): Promise<void> {
  const all = writers.flatMap((writer) => writer.outcomes);
  const unexpected = all.filter(
    (o) => o.status !== 200 && !(o.status === 503 && o.code === 'SESSION_STORE_UNAVAILABLE'),
  );
  t.deepEqual(unexpected, [], 'every request succeeded or got 503 SESSION_STORE_UNAVAILABLE');
  for (const writer of writers) {
    const acked = writer.outcomes.filter((o) => o.status === 200);
    const ids = new Set(acked.map((o) => o.id));
    t.is(ids.size, 1, 'one session per client');
    const [id] = ids;
    const rows = await queryUrl<{ data: Record<string, number> }>(
      primary.url(DATABASE),
      'SELECT data FROM sessions.session WHERE id = $1',
      [id],
    );
    const data = rows[0]?.data ?? {};
    const missing = acked.filter((o) => data[`w${o.i}`] !== o.i).map((o) => o.i);
    t.deepEqual(missing, [], 'no acknowledged write is missing');
  }
}

/** The longest stretch (ms) after `from` without an acknowledged write. */
function longestGap(writers: readonly Writer[], from: number): number {
  const acks = writers
    .flatMap((w) => w.outcomes)
    .filter((o) => o.status === 200 && o.endedAt >= from)
    .map((o) => o.endedAt)
    .sort((a, b) => a - b);
  let gap = 0;
  let previous = from;
  for (const at of acks) {
    gap = Math.max(gap, at - previous);
    previous = at;
  }
  return gap;
}

async function waitUntilInRotation(app: RouterApp, node: PatroniNode, timeoutMs: number) {
  await pollUntil(`${node.name} in rotation`, timeoutMs, () => inRotation(app.router, node.pgPort));
}

test.serial(
  'three app processes on one primary and two replicas: loads go to the replicas, every client reads its own writes',
  async (t) => {
    // Each app has its own router, pool and (here off) cache: uncached loads are what the
    // replicas are for. One client in ten requests writes, and its next read must see it.
    const routed = await Promise.all([appOn(false), appOn(false), appOn(false)]);
    const leader = (await cluster.leader())!;
    for (const node of cluster.nodes) {
      if (node !== leader) await waitUntilInRotation(routed[0]!, node, 30_000);
    }
    const clients = await Promise.all(
      Array.from({ length: 30 }, async (_, k) => {
        const browser = new Browser(routed[k % 3]!.app.url);
        await browser.post('/set?n=0');
        return { browser, written: 0, k };
      }),
    );
    const before = routed.map(({ router }) => ({ ...router.counters }));
    const failures: string[] = [];
    let requests = 0;
    let running = true;
    const startedAt = Date.now();
    const load = Promise.all(
      clients.map(async (client) => {
        for (let i = 1; running; i++) {
          // Each request through the next process: the fence cookie travels with the client.
          const browser = via(client.browser, routed[(client.k + i) % 3]!.app);
          const write = i % 10 === 0;
          const response = write ? await browser.post(`/set?n=${i}`) : await browser.get('/get');
          for (const [name, value] of browser.cookies) client.browser.cookies.set(name, value);
          requests++;
          if (response.status !== 200) {
            failures.push(`${response.status}`);
            continue;
          }
          if (write) client.written = i;
          else if ((response.body as SessionBody).data?.n !== String(client.written)) {
            failures.push(`read ${(response.body as SessionBody).data?.n} after ${client.written}`);
          }
        }
      }),
    );
    await sleep(5_000);
    running = false;
    await load;
    const seconds = (Date.now() - startedAt) / 1_000;
    const sum = (key: 'replicaReads' | 'primaryReads' | 'staleReplicaReads') =>
      routed.reduce((total, { router }, i) => total + router.counters[key] - before[i]![key], 0);
    const loads = sum('replicaReads') - sum('staleReplicaReads') + sum('primaryReads');
    const onReplicas = sum('replicaReads') - sum('staleReplicaReads');
    t.log(
      `${requests} requests in ${seconds.toFixed(1)} s (${Math.round(requests / seconds)}/s) through 3 app processes; ` +
        `${loads} loads, ${Math.round((100 * onReplicas) / loads)} % answered by the replicas ` +
        `(${sum('staleReplicaReads')} replica copies older than the client's fence, read again on the primary)`,
    );
    t.deepEqual(failures, []);
    t.true(onReplicas / loads > 0.5, 'most loads are answered by the replicas');
    await closeAll();
  },
);

test.serial(
  "the leader's node killed under write load: a new leader, no acknowledged write lost, writes resume within ttl + 5 s, revocations made meanwhile hold, and the old leader rejoins (pg_rewind where it diverged)",
  async (t) => {
    const a = await appOn();
    const b = await appOn();
    const oldLeader = (await cluster.leader())!;
    const victims = await Promise.all(
      Array.from({ length: 4 }, async () => {
        const browser = new Browser(a.app.url);
        await browser.post('/set?role=victim');
        const { id } = (await browser.get('/get')).body as SessionBody;
        return { browser, id: id!, revokedAt: undefined as number | undefined };
      }),
    );
    const load = await writeLoad([a, b], 6);
    await sleep(1_000);
    const killedAt = Date.now();
    await cluster.nodes.find((n) => n === oldLeader)!.kill();
    t.log(`killed ${oldLeader.name} (Patroni and PostgreSQL)`);
    // Revocations asked for during the failover, each retried until acknowledged.
    const revoking = Promise.all(
      victims.map(async (victim, k) => {
        await sleep(k * 2_000);
        for (;;) {
          const response = await new Browser(a.app.url).post(`/revoke?id=${victim.id}`);
          if (response.status === 200) {
            victim.revokedAt = Date.now();
            return;
          }
          await sleep(200);
        }
      }),
    );
    const newLeader = await cluster.waitForLeader((PATRONI_TTL_S + 30) * 1_000, oldLeader);
    const electedAt = Date.now();
    await pollUntil('a write acknowledged after the kill', 15_000, () =>
      load.writers.some((w) => w.outcomes.some((o) => o.status === 200 && o.startedAt > killedAt)),
    );
    await revoking;
    await sleep(1_000);
    await load.stop();
    const all = load.writers.flatMap((w) => w.outcomes);
    const firstAck = Math.min(
      ...all.filter((o) => o.status === 200 && o.startedAt > killedAt).map((o) => o.endedAt),
    );
    const unavailable = all.filter((o) => o.status === 503).length;
    t.log(
      `${newLeader.name} leads ${Math.round((electedAt - killedAt) / 100) / 10} s after the kill; ` +
        `first write acknowledged ${Math.round((firstAck - killedAt) / 100) / 10} s after the kill; ` +
        `${all.length} writes, ${unavailable} × 503`,
    );
    t.true(firstAck - killedAt < (PATRONI_TTL_S + 5) * 1_000, 'writes resume within ttl + 5 s');
    await checkOutcomes(t, load.writers, newLeader);
    for (const { router } of [a, b]) t.is(hostState(router, newLeader.pgPort)?.role, 'primary');

    // Every revocation holds, through every app and on every server that serves reads.
    const c = await appOn(false);
    const checkRevoked = async () => {
      for (const victim of victims) {
        for (const app of [a, b, c]) {
          for (let i = 0; i < 5; i++) {
            const response = await via(victim.browser, app.app).get('/get');
            t.is((response.body as SessionBody).id, null, 'a revoked session stays revoked');
          }
        }
      }
    };
    await checkRevoked();

    // The old leader's node comes back: Patroni rewinds it and it follows the new leader.
    const restartedAt = Date.now();
    await oldLeader.start();
    await cluster.waitForMembers(3, 120_000);
    for (const app of [a, b, c]) await waitUntilInRotation(app, oldLeader, 60_000);
    t.log(
      `${oldLeader.name} back in rotation ${Math.round((Date.now() - restartedAt) / 100) / 10} s after its restart`,
    );
    // Patroni rewinds only when the old leader's WAL went past the fork (timing decides).
    const rewound = /running pg_rewind|rewind.*succe/i.test(await oldLeader.log());
    t.log(`${oldLeader.name} ${rewound ? 'was rewound by pg_rewind' : 'needed no pg_rewind'}`);
    const rejoined = hostState(c.router, oldLeader.pgPort);
    t.is(rejoined?.role, 'replica');
    t.true(rejoined?.following);
    t.is(rejoined?.timeline, hostState(c.router, newLeader.pgPort)?.timeline);
    for (const victim of victims) {
      for (const node of cluster.nodes) {
        const [row] = await queryUrl<{ revoked: boolean }>(
          node.url(DATABASE),
          'SELECT revoked_at IS NOT NULL AS revoked FROM sessions.session WHERE id = $1',
          [victim.id],
        );
        t.true(row?.revoked, `revoked on ${node.name}`);
      }
    }
    await checkRevoked();
    await closeAll();
  },
);

test.serial(
  'patronictl switchover under write load: writes resume within 5 s, nothing but retryable 503s, no acknowledged write lost, every replica back in rotation',
  async (t) => {
    const a = await appOn();
    const b = await appOn();
    const members = await cluster.members();
    const leader = (await cluster.leader())!;
    const candidate = cluster.nodes.find(
      (n) => members.find((m) => m.name === n.name)?.role === 'sync_standby',
    )!;
    t.truthy(candidate, 'a synchronous standby to switch over to');
    for (const node of cluster.nodes) {
      if (node !== leader) await waitUntilInRotation(a, node, 30_000);
    }
    const load = await writeLoad([a, b], 6);
    await sleep(1_000);
    const startedAt = Date.now();
    await cluster.switchover(leader, candidate);
    const switchedAt = Date.now();
    await cluster.waitForLeader(30_000, leader);
    await pollUntil('a write acknowledged after the switchover', 15_000, () =>
      load.writers.some((w) =>
        w.outcomes.some((o) => o.status === 200 && o.startedAt > switchedAt),
      ),
    );
    await sleep(2_000);
    await load.stop();
    const gap = longestGap(load.writers, startedAt);
    const all = load.writers.flatMap((w) => w.outcomes);
    t.log(
      `switchover ${leader.name} → ${candidate.name}: patronictl returned after ${Math.round((switchedAt - startedAt) / 100) / 10} s; ` +
        `longest stretch without an acknowledged write ${Math.round(gap / 100) / 10} s; ` +
        `${all.length} writes, ${all.filter((o) => o.status === 503).length} × 503`,
    );
    t.true(gap < 5_000, 'writes resume within 5 s');
    await checkOutcomes(t, load.writers, candidate);
    for (const { router } of [a, b]) t.is(hostState(router, candidate.pgPort)?.role, 'primary');
    // The old leader and the third node are re-pointed by Patroni: both return by themselves.
    await cluster.waitForMembers(3, 60_000);
    for (const node of cluster.nodes) {
      if (node !== candidate) await waitUntilInRotation(a, node, 60_000);
    }
    await closeAll();
  },
);

test.serial(
  'a replica restarted by Patroni leaves rotation and rejoins by itself, without a failed request',
  async (t) => {
    const a = await appOn(false);
    const leader = (await cluster.leader())!;
    const replica = cluster.nodes.find((n) => n !== leader)!;
    await waitUntilInRotation(a, replica, 30_000);
    const reader = new Browser(a.app.url);
    await reader.post('/set?n=1');
    let sawOut = false;
    let running = true;
    const failures: string[] = [];
    let reads = 0;
    const load = (async () => {
      while (running) {
        const response = await reader.get('/get');
        reads++;
        if (response.status !== 200 || (response.body as SessionBody).data?.n !== '1') {
          failures.push(`${response.status} ${JSON.stringify(response.body)}`);
        }
        if (!inRotation(a.router, replica.pgPort)) sawOut = true;
      }
    })();
    try {
      await cluster.restart(replica);
      await pollUntil('the restarted replica out of rotation', 10_000, () => sawOut);
      await waitUntilInRotation(a, replica, 60_000);
    } finally {
      running = false;
      await load;
    }
    t.true(sawOut, 'it left rotation while it restarted');
    t.deepEqual(failures, []);
    t.log(`${reads} reads during the restart`);
    await closeAll();
  },
);
