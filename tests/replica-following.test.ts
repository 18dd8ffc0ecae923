import test from 'ava';
import { migrate } from '../src/db/migrator.js';
import type { ReplicaRouterOptions } from '../src/db/replica-router.js';
import { type Cluster, type PostgresServer, startCluster } from '../src/testing/index.js';
import { Browser } from './helpers/http.js';
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
  withRole,
} from './helpers/replica-apps.js';

// A replica that does not follow the current primary must leave rotation whatever lag it
// reports: its stream stalled, its primary died (orphaned by a failover), or it streams
// another timeline (from a former primary that came back). One asynchronous cluster for
// the file; the tests run in order and each leaves the cluster as the next expects.
const DATABASE = 'sessions_following';
const APP_ROLE = 'pgs_follow_app';
/** The same rights plus pg_monitor: the router then sees a receiver's status and timeline. */
const MONITOR_ROLE = 'pgs_follow_monitor';
const PASSWORD = 'pgs_test';

let cluster: Cluster;
let primary: PostgresServer;
let replica1: PostgresServer;
let replica2: PostgresServer;
const apps: RouterApp[] = [];
/** The client whose session the second test revokes on the new primary (live on timeline 1). */
let orphanedVictim: Browser | undefined;

test.before(async () => {
  cluster = await startCluster({ replicas: 2 });
  primary = cluster.primary;
  [replica1, replica2] = cluster.replicas as [PostgresServer, PostgresServer];
  await queryUrl(primary.url(), `CREATE DATABASE ${DATABASE}`);
  const migrated = await migrate(primary.url(DATABASE), 'up');
  if (migrated.exitCode !== 0) throw new Error(`migration failed:\n${migrated.output}`);
  await queryUrl(
    primary.url(),
    `CREATE ROLE ${APP_ROLE} LOGIN PASSWORD '${PASSWORD}' IN ROLE sessions_app`,
  );
  await queryUrl(
    primary.url(),
    `CREATE ROLE ${MONITOR_ROLE} LOGIN PASSWORD '${PASSWORD}' IN ROLE sessions_app, pg_monitor`,
  );
  await cluster.waitForReplay();
});

test.after.always(async () => {
  await Promise.allSettled(apps.map(({ app }) => app.close()));
  await cluster?.destroy();
});

function urls(servers: readonly PostgresServer[], role = APP_ROLE): string[] {
  return servers.map((server) => withRole(server.url(DATABASE), role, PASSWORD));
}

async function appOn(routerOptions: ReplicaRouterOptions, cache = false): Promise<RouterApp> {
  const started = await appWithRouter(
    { healthCheckInterval: 100, maxReplicaLagMs: 500, connectTimeout: 1_000, ...routerOptions },
    { cache: cache ? {} : false },
  );
  apps.push(started);
  return started;
}

async function closeAll(): Promise<void> {
  await Promise.all(apps.splice(0).map(({ app }) => app.close()));
}

/** Keeps the primary's WAL moving, as any busy primary's does. */
function writeLoad(server: PostgresServer): { stop(): Promise<void> } {
  let running = true;
  const done = (async () => {
    while (running) {
      await queryUrl(server.url(), 'SELECT pg_current_xact_id()').catch(() => {});
      await sleep(20);
    }
  })();
  return {
    stop: async () => {
      running = false;
      await done;
    },
  };
}

test.serial(
  'a replica whose stream stalls (replay stands still while the primary moves) leaves rotation, and returns when it streams again',
  async (t) => {
    const { router } = await appOn({ hosts: urls([primary, replica1, replica2]) });
    await pollUntil('both replicas in rotation', 5_000, () =>
      [replica1, replica2].every((r) => inRotation(router, r.port)),
    );
    // The primary's WAL sender for replica2 frozen: its receiver stays connected and
    // "streaming", has replayed all it received, and so reports no lag at all.
    const [sender] = await queryUrl<{ pid: number }>(
      primary.url(),
      `SELECT pid FROM pg_stat_replication WHERE application_name = $1`,
      [cluster.nameOf(replica2)],
    );
    t.truthy(sender);
    const load = writeLoad(primary);
    process.kill(sender!.pid, 'SIGSTOP');
    try {
      const stalledAt = Date.now();
      await pollUntil(
        'the stalled replica out of rotation',
        3_000,
        () => !inRotation(router, replica2.port),
      );
      t.log(`out of rotation ${Date.now() - stalledAt} ms after its stream stalled`);
      t.true(inRotation(router, replica1.port), 'the streaming replica stays');
    } finally {
      process.kill(sender!.pid, 'SIGCONT');
      await load.stop();
    }
    await pollUntil('the replica back in rotation', 5_000, () => inRotation(router, replica2.port));
    await closeAll();
  },
);

test.serial(
  'a replica orphaned by a failover leaves rotation at once: a session revoked on the new primary is refused by an app with the cache off; re-pointed, the replica returns',
  async (t) => {
    const writerApp = await appOn({ hosts: urls([primary, replica1, replica2]) });
    const victim = new Browser(writerApp.app.url);
    orphanedVictim = victim;
    await victim.post('/set?role=victim');
    const { id } = (await victim.get('/get')).body as SessionBody;
    t.truthy(id);
    await cluster.waitForReplay();
    const reader = await appOn({ hosts: urls([primary, replica1, replica2]) });
    await pollUntil('both replicas in rotation', 5_000, () =>
      [replica1, replica2].every((r) => inRotation(reader.router, r.port)),
    );

    // The primary dies; replica1 is promoted by hand, and nobody re-points replica2.
    await cluster.killPrimary();
    await replica1.promote();
    // The reader sees the new primary and the orphan the same check.
    await pollUntil('the reader to follow the new primary', 5_000, () =>
      reader.router
        .state()
        .some((h) => h.name.endsWith(`:${replica1.port}`) && h.role === 'primary'),
    );
    const orphan = hostState(reader.router, replica2.port);
    t.is(orphan?.role, 'replica');
    t.false(orphan?.following, 'no WAL receiver: not following');
    t.false(orphan?.inRotation);

    // Revoked on the new primary (the writer app fails over to it).
    const revoked = await new Browser(writerApp.app.url).post(`/revoke?id=${id}`);
    t.deepEqual(revoked.body, { revoked: true });
    const [onOrphan] = await queryUrl<{ revoked_at: Date | null }>(
      replica2.url(DATABASE),
      'SELECT revoked_at FROM sessions.session WHERE id = $1',
      [id],
    );
    t.is(onOrphan?.revoked_at, null, 'the orphan still has it live');
    for (let i = 0; i < 20; i++) {
      const response = await via(victim, reader.app).get('/get');
      t.is((response.body as SessionBody).id, null, 'the revoked session is refused');
      await sleep(10);
    }
    t.false(inRotation(reader.router, replica2.port));

    // Re-pointed at the new primary, it follows the new timeline and comes back by itself.
    await queryUrl(replica1.url(), `SELECT pg_create_physical_replication_slot('replica2_again')`);
    await queryUrl(
      replica2.url(),
      `ALTER SYSTEM SET primary_conninfo = 'host=${replica1.host} port=${replica1.port} user=${replica1.user} application_name=replica2'`,
    );
    await queryUrl(replica2.url(), `ALTER SYSTEM SET primary_slot_name = 'replica2_again'`);
    await queryUrl(replica2.url(), 'SELECT pg_reload_conf()');
    await pollUntil('the re-pointed replica back in rotation', 15_000, () =>
      inRotation(reader.router, replica2.port),
    );
    const rejoined = hostState(reader.router, replica2.port);
    t.true(rejoined?.following);
    const [replayed] = await queryUrl<{ revoked: boolean }>(
      replica2.url(DATABASE),
      'SELECT revoked_at IS NOT NULL AS revoked FROM sessions.session WHERE id = $1',
      [id],
    );
    t.true(replayed?.revoked, 'it has replayed the revocation');
    t.is(((await via(victim, reader.app).get('/get')).body as SessionBody).id, null);
    await closeAll();
  },
);

test.serial(
  'a replica streaming another timeline (from a former primary that came back) is out of rotation, and the former primary is not taken for the primary',
  async (t) => {
    // replica1 is the primary now (timeline 2), replica2 follows it. The former primary
    // restarts as a primary on timeline 1 and gets a replica of its own: one that streams,
    // replays, and sits past the real primary's WAL position.
    await primary.launch();
    const stray = await cluster.addReplica();
    await queryUrl(
      primary.url(),
      'CREATE TABLE wal_filler AS SELECT g, md5(g::text) FROM generate_series(1, 50000) g',
    );
    await cluster.waitForReplay(stray);
    const hosts = [primary, replica1, replica2, stray];
    const [behind] = await queryUrl<{ ahead: boolean }>(
      stray.url(),
      `SELECT pg_last_wal_replay_lsn() > $1::pg_lsn AS ahead`,
      [
        (
          await queryUrl<{ lsn: string }>(
            replica1.url(),
            'SELECT pg_current_wal_lsn()::text AS lsn',
          )
        )[0]!.lsn,
      ],
    );
    t.true(behind?.ahead, 'the stray replica is past the real primary by WAL position');
    const writerApp = await appOn({ hosts: urls(hosts, MONITOR_ROLE) });
    const reader = await appOn({ hosts: urls(hosts, MONITOR_ROLE) });
    // Both routers have checked every host (a loaded machine may take a few checks).
    for (const { router } of [writerApp, reader]) {
      await pollUntil(
        'every host checked and replica2 in rotation',
        15_000,
        () =>
          router.state().every((host) => host.role !== 'unknown') &&
          inRotation(router, replica2.port),
      );
    }
    for (const { router } of [writerApp, reader]) {
      t.is(hostState(router, primary.port)?.role, 'primary', 'the former primary claims the role');
      t.is(hostState(router, primary.port)?.timeline, 1);
      t.is(hostState(router, replica1.port)?.timeline, 2);
    }
    const strayState = hostState(reader.router, stray.port);
    t.is(strayState?.role, 'replica');
    t.is(strayState?.timeline, 1);
    t.false(strayState?.following);
    t.false(strayState?.inRotation);

    // The session revoked on the real primary is live on timeline 1: never served from there.
    const victim = orphanedVictim!;
    const { id } = (await via(victim, writerApp.app).get('/get')).body as SessionBody;
    t.is(id, null, 'refused by the writer app');
    const [onStray] = await queryUrl<{ live: boolean }>(
      stray.url(DATABASE),
      'SELECT revoked_at IS NULL AS live FROM sessions.session WHERE data ->> $1 = $2',
      ['role', 'victim'],
    );
    t.true(onStray?.live, 'the stray replica has it live');
    const before = { ...reader.router.counters };
    for (let i = 0; i < 20; i++) {
      const response = await via(victim, reader.app).get('/get');
      t.is((response.body as SessionBody).id, null, 'the revoked session is refused');
    }
    t.true(reader.router.counters.replicaReads > before.replicaReads, 'replica2 serves reads');
    t.false(inRotation(reader.router, stray.port));

    // Writes go to the newest timeline's primary, not to the one that came back.
    const client = new Browser(writerApp.app.url);
    t.is((await client.post('/set?on=timeline2')).status, 200);
    const [landed] = await queryUrl<{ n: number }>(
      replica1.url(DATABASE),
      `SELECT count(*)::int AS n FROM sessions.session WHERE data ->> 'on' = 'timeline2'`,
    );
    t.is(landed?.n, 1);
    await closeAll();
  },
);
