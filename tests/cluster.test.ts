import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { stat } from 'node:fs/promises';
import { join } from 'node:path';
import test from 'ava';
import pg from 'pg';
import { type Cluster, type PostgresServer, startCluster } from '../src/testing/index.js';

// One cluster for the file; the failover tests make their own, since they break them.
let cluster: Cluster;
const broken: Cluster[] = [];

test.before(async () => {
  cluster = await startCluster({ replicas: 2, synchronous: 'remote_apply' });
  await query(cluster.primary, 'CREATE TABLE probe (id serial PRIMARY KEY, note text NOT NULL)');
});

test.after.always(async () => {
  await Promise.all([cluster?.destroy(), ...broken.map((c) => c.destroy())]);
});

async function query<R extends pg.QueryResultRow = Record<string, unknown>>(
  server: PostgresServer,
  sql: string,
  params: unknown[] = [],
): Promise<R[]> {
  const client = new pg.Client(server.url());
  await client.connect();
  try {
    return (await client.query<R>(sql, params)).rows;
  } finally {
    await client.end();
  }
}

async function countNotes(server: PostgresServer, note: string): Promise<number> {
  const rows = await query<{ n: number }>(
    server,
    'SELECT count(*)::int AS n FROM probe WHERE note = $1',
    [note],
  );
  return rows[0]!.n;
}

function replicaAt(index: number): PostgresServer {
  const replica = cluster.replicas[index];
  if (!replica) throw new Error(`the cluster has no replica #${index}`);
  return replica;
}

test.serial(
  'each replica streams through its own physical slot and runs unprivileged',
  async (t) => {
    const slots = await query<{ slot_name: string; slot_type: string; active: boolean }>(
      cluster.primary,
      'SELECT slot_name, slot_type, active FROM pg_replication_slots ORDER BY slot_name',
    );
    t.deepEqual(slots, [
      { slot_name: 'replica1', slot_type: 'physical', active: true },
      { slot_name: 'replica2', slot_type: 'physical', active: true },
    ]);
    const senders = await query<{ application_name: string; state: string; sync_state: string }>(
      cluster.primary,
      'SELECT application_name, state, sync_state FROM pg_stat_replication ORDER BY application_name',
    );
    t.deepEqual(senders, [
      { application_name: 'replica1', state: 'streaming', sync_state: 'sync' },
      { application_name: 'replica2', state: 'streaming', sync_state: 'potential' },
    ]);
    t.is(new Set(cluster.hosts).size, 3, 'three servers on three ports');
    t.is(cluster.hosts[0], cluster.primary.url());

    const primaryControl = await stat(join(cluster.primary.dataDir, 'global', 'pg_control'));
    for (const replica of cluster.replicas) {
      const folder = await stat(replica.dataDir);
      t.is(folder.mode & 0o777, 0o700);
      const control = await stat(join(replica.dataDir, 'global', 'pg_control'));
      t.is(control.uid, primaryControl.uid, 'the copy belongs to the server user');
      if (process.getuid?.() === 0) {
        const user = execFileSync('ps', ['-o', 'user=', '-p', String(replica.pid)]).toString();
        t.not(user.trim(), 'root');
      }
    }
  },
);

test.serial(
  'a row committed on the primary becomes visible on every replica, which stay read-only',
  async (t) => {
    await query(cluster.primary, `INSERT INTO probe (note) VALUES ('everywhere')`);
    await cluster.waitForReplay();
    for (const replica of cluster.replicas) {
      t.is(await countNotes(replica, 'everywhere'), 1, cluster.nameOf(replica));
      const [recovery] = await query<{ standby: boolean }>(
        replica,
        'SELECT pg_is_in_recovery() AS standby',
      );
      t.true(recovery?.standby);
      await t.throwsAsync(query(replica, `INSERT INTO probe (note) VALUES ('refused')`), {
        code: '25006',
      });
    }
  },
);

test.serial(
  'an apply delay hides a fresh commit on the replica until it passes, and the WAL fence tells',
  async (t) => {
    const lagging = replicaAt(1); // asynchronous: the delay does not hold the primary's commits
    await cluster.setApplyDelay(lagging, 1500);
    try {
      await query(cluster.primary, `INSERT INTO probe (note) VALUES ('delayed')`);
      const committedAt = Date.now();
      const [fence] = await query<{ lsn: string }>(
        cluster.primary,
        'SELECT pg_current_wal_lsn() AS lsn',
      );
      const behindSql =
        'SELECT pg_wal_lsn_diff(pg_last_wal_replay_lsn(), $1::pg_lsn) < 0 AS behind';
      t.is(await countNotes(lagging, 'delayed'), 0, 'not visible right after the commit');
      const [before] = await query<{ behind: boolean }>(lagging, behindSql, [fence!.lsn]);
      t.true(before?.behind, 'the replica has not replayed up to the fence');

      await cluster.waitForReplay(lagging);
      const waited = Date.now() - committedAt;
      t.log(`replayed ${waited} ms after the commit with a 1500 ms apply delay`);
      t.true(waited >= 1200, `replayed after ${waited} ms`);
      t.is(await countNotes(lagging, 'delayed'), 1);
      const [after] = await query<{ behind: boolean }>(lagging, behindSql, [fence!.lsn]);
      t.false(after?.behind, 'the fence is reached');
    } finally {
      await cluster.setApplyDelay(lagging, 0);
    }
    const started = Date.now();
    await query(cluster.primary, `INSERT INTO probe (note) VALUES ('undelayed')`);
    await cluster.waitForReplay(lagging);
    t.true(Date.now() - started < 1000, 'a delay of 0 removes the lag');
    t.is(await countNotes(lagging, 'undelayed'), 1);
  },
);

test.serial(
  'with remote_apply a commit returns only once the synchronous replica shows it',
  async (t) => {
    const synchronous = replicaAt(0);
    const [setting] = await query<{ synchronous_commit: string }>(
      cluster.primary,
      'SHOW synchronous_commit',
    );
    t.is(setting?.synchronous_commit, 'remote_apply');
    const writer = new pg.Client(cluster.primary.url());
    const reader = new pg.Client(synchronous.url());
    await Promise.all([writer.connect(), reader.connect()]);
    try {
      for (let i = 0; i < 20; i++) {
        const inserted = await writer.query<{ id: number }>(
          `INSERT INTO probe (note) VALUES ('sync') RETURNING id`,
        );
        const seen = await reader.query('SELECT FROM probe WHERE id = $1', [inserted.rows[0]!.id]);
        t.is(seen.rowCount, 1, `commit #${i} visible on the synchronous replica at once`);
      }
      // Slowing the replica's apply slows the primary's commit: it really waits for it.
      await cluster.setApplyDelay(synchronous, 400);
      try {
        const started = Date.now();
        const inserted = await writer.query<{ id: number }>(
          `INSERT INTO probe (note) VALUES ('sync-delayed') RETURNING id`,
        );
        const took = Date.now() - started;
        t.log(`a commit took ${took} ms with a 400 ms apply delay on the synchronous replica`);
        t.true(took >= 300, `the commit took ${took} ms`);
        const seen = await reader.query('SELECT FROM probe WHERE id = $1', [inserted.rows[0]!.id]);
        t.is(seen.rowCount, 1);
      } finally {
        await cluster.setApplyDelay(synchronous, 0);
      }
    } finally {
      await Promise.all([writer.end(), reader.end()]);
    }
  },
);

test.serial(
  'a stopped replica keeps its slot and catches up after a restart on the same port',
  async (t) => {
    const replica = replicaAt(1);
    const port = replica.port;
    await cluster.stopReplica(replica);
    t.false(replica.running);
    // replica1 stays synchronous, so the primary keeps committing.
    await query(
      cluster.primary,
      `INSERT INTO probe (note) SELECT 'missed' FROM generate_series(1, 3)`,
    );
    const [slot] = await query<{ active: boolean; retained: boolean }>(
      cluster.primary,
      `SELECT active, restart_lsn IS NOT NULL AS retained FROM pg_replication_slots
      WHERE slot_name = $1`,
      [cluster.nameOf(replica)],
    );
    t.deepEqual(slot, { active: false, retained: true });

    await cluster.startReplica(replica);
    t.is(replica.port, port);
    await cluster.waitForReplay(replica);
    t.is(await countNotes(replica, 'missed'), 3);
  },
);

test.serial('addReplica copies the current data into one more streaming replica', async (t) => {
  await query(cluster.primary, `INSERT INTO probe (note) VALUES ('before-copy')`);
  const started = Date.now();
  const added = await cluster.addReplica();
  t.log(`replica created in ${Date.now() - started} ms`);
  t.is(cluster.nameOf(added), 'replica3');
  t.is(cluster.replicas.length, 3);
  t.true(cluster.hosts.includes(added.url()));
  await query(cluster.primary, `INSERT INTO probe (note) VALUES ('after-copy')`);
  await cluster.waitForReplay(added);
  t.is(await countNotes(added, 'before-copy'), 1);
  t.is(await countNotes(added, 'after-copy'), 1);
  // The copy must not inherit the primary's list: promoted, it would wait on itself.
  const [own] = await query<{ synchronous_standby_names: string }>(
    added,
    'SHOW synchronous_standby_names',
  );
  t.is(own?.synchronous_standby_names, '');
  const [primaryList] = await query<{ synchronous_standby_names: string }>(
    cluster.primary,
    'SHOW synchronous_standby_names',
  );
  t.is(primaryList?.synchronous_standby_names, 'FIRST 1 (replica1, replica2, replica3)');
});

test.serial(
  'after kill -9 of the primary, the promoted synchronous replica takes writes and lost no acknowledged commit',
  async (t) => {
    const failover = await startCluster({ replicas: 2, synchronous: 'on' });
    broken.push(failover);
    const oldPrimary = failover.primary;
    const [successor, follower] = failover.replicas as [PostgresServer, PostgresServer];
    await query(oldPrimary, 'CREATE TABLE ledger (id int PRIMARY KEY)');

    // Writers commit as fast as they can; the primary dies under them.
    const acknowledged: number[] = [];
    let next = 0;
    let dead = false;
    const writers = Array.from({ length: 4 }, async () => {
      const client = new pg.Client(oldPrimary.url());
      client.on('error', () => {});
      await client.connect();
      try {
        while (!dead) {
          const id = next++;
          await client.query('INSERT INTO ledger VALUES ($1)', [id]);
          acknowledged.push(id);
        }
      } catch {
        // The connection dies with the primary; the write in flight was not acknowledged.
      } finally {
        await client.end().catch(() => {});
      }
    });
    const deadline = Date.now() + 10_000;
    while (acknowledged.length < 200 && Date.now() < deadline) {
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
    t.true(acknowledged.length >= 200, 'the writers were committing when the primary died');
    await failover.killPrimary();
    dead = true;
    await Promise.all(writers);
    t.false(oldPrimary.running);

    const killedAt = Date.now();
    await failover.promote(successor);
    const promotedIn = Date.now() - killedAt;
    await query(successor, 'INSERT INTO ledger VALUES (-1)');
    t.log(
      `promote() took ${promotedIn} ms (followers re-pointed); first write ${Date.now() - killedAt} ms after the kill; ${acknowledged.length} commits acknowledged before it`,
    );

    t.is(failover.primary, successor);
    t.deepEqual(failover.replicas, [follower]);
    const [state] = await query<{ standby: boolean }>(
      successor,
      'SELECT pg_is_in_recovery() AS standby',
    );
    t.false(state?.standby);
    const present = new Set(
      (await query<{ id: number }>(successor, 'SELECT id FROM ledger')).map((row) => row.id),
    );
    const lost = acknowledged.filter((id) => !present.has(id));
    t.deepEqual(lost, [], 'every acknowledged commit survived the failover');

    // The other replica now streams from the promoted server, synchronously.
    await failover.waitForReplay(follower);
    const [onFollower] = await query<{ n: number }>(
      follower,
      'SELECT count(*)::int AS n FROM ledger WHERE id = -1',
    );
    t.is(onFollower?.n, 1);
    const [receiver] = await query<{ sender_port: number }>(
      follower,
      'SELECT sender_port FROM pg_stat_wal_receiver',
    );
    t.is(receiver?.sender_port, successor.port);
    const [list] = await query<{ synchronous_standby_names: string }>(
      successor,
      'SHOW synchronous_standby_names',
    );
    t.is(list?.synchronous_standby_names, 'FIRST 1 (replica2)');

    const pids = [successor.pid, follower.pid];
    const folders = [oldPrimary.dataDir, successor.dataDir, follower.dataDir];
    await failover.destroy();
    await failover.destroy();
    t.false(
      pids.some((pid) => pid !== undefined && isAlive(pid)),
      'no server process survives',
    );
    t.false(folders.some(existsSync), 'no data folder survives');
  },
);

test.serial(
  'a replica that got WAL the promoted one never saw is cloned anew from it',
  async (t) => {
    const forked = await startCluster({ replicas: 2 });
    broken.push(forked);
    const [successor, ahead] = forked.replicas as [PostgresServer, PostgresServer];
    await query(forked.primary, 'CREATE TABLE probe (note text)');
    await forked.waitForReplay();
    await forked.stopReplica(successor);
    await query(forked.primary, `INSERT INTO probe VALUES ('old timeline only')`);
    await forked.waitForReplay(ahead);
    await forked.killPrimary();
    await successor.launch(); // straight on the server: the cluster would wait for streaming

    const started = Date.now();
    await forked.promote(successor);
    t.log(`promote() with a re-clone took ${Date.now() - started} ms`);
    await query(successor, `INSERT INTO probe VALUES ('new timeline')`);
    await forked.waitForReplay(ahead);
    const notes = await query<{ note: string }>(ahead, 'SELECT note FROM probe ORDER BY note');
    t.deepEqual(
      notes.map((row) => row.note),
      ['new timeline'],
      "the replica now holds exactly the promoted server's history",
    );
    const [receiver] = await query<{ sender_port: number }>(
      ahead,
      'SELECT sender_port FROM pg_stat_wal_receiver',
    );
    t.is(receiver?.sender_port, successor.port);
    await forked.destroy();
  },
);

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}
