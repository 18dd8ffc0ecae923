import {
  copyFile,
  lchown,
  mkdir,
  mkdtemp,
  readdir,
  readFile,
  readlink,
  rm,
  symlink,
  writeFile,
} from 'node:fs/promises';
import { join } from 'node:path';
import { debuglog } from 'node:util';
import pg from 'pg';
import { resolveConnectionConfig } from '../db/connection-config.js';
import { type PostgresBinaries, resolveBinaries } from './binaries.js';
import { type RunAs, unprivilegedUser } from './os-user.js';
import { delay, PostgresServer } from './postgres-server.js';
import { scratchFolder } from './reaper.js';

/** How the primary waits for its replicas on commit. */
export type SynchronousMode = false | 'on' | 'remote_apply';

export interface ClusterOptions {
  /** Streaming replicas started with the primary. @default 1 */
  readonly replicas?: number;
  /**
   * `'on'`: a commit returns once the first running replica has flushed it; `'remote_apply'`:
   * once it has applied it (then visible there). The replicas are listed in creation order
   * (`FIRST 1 (replica1, replica2, …)`), so a stopped one hands the role to the next; with
   * none running, commits wait. @default false (asynchronous)
   */
  readonly synchronous?: SynchronousMode;
  /** @default resolveBinaries() — PG_BIN_DIR, else the embedded packages */
  readonly binaries?: PostgresBinaries;
  /** Extra `-c` settings for every server (a replica needs the primary's connection limits). */
  readonly settings?: Readonly<Record<string, string | number | boolean>>;
}

const STREAMING_TIMEOUT_MS = 30_000;

/**
 * A standby whose upstream is gone retries every `wal_retrieve_retry_interval` (5 s by
 * default), and PostgreSQL 15 may notice a promotion request only then: keep it short.
 */
const CLUSTER_SETTINGS: Readonly<Record<string, string>> = {
  wal_retrieve_retry_interval: '100ms',
};

const trace = debuglog('pg-sessions:cluster');

/**
 * A real primary with streaming replicas on 127.0.0.1, for failover and read-your-writes
 * tests. Replicas are made with the low-level backup API and a physical replication slot
 * each, so nothing beyond `initdb`, `pg_ctl` and `postgres` is needed.
 *
 * @example
 * const cluster = await startCluster({ replicas: 2, synchronous: 'remote_apply' });
 * // cluster.primary.url('postgres'), cluster.hosts, …
 * await cluster.killPrimary();
 * await cluster.promote(cluster.replicas[0]!);
 * await cluster.destroy();
 */
export async function startCluster(options: ClusterOptions = {}): Promise<Cluster> {
  const replicas = options.replicas ?? 1;
  if (!Number.isInteger(replicas) || replicas < 0) {
    throw new Error(`startCluster: replicas must be a whole number ≥ 0, got ${replicas}`);
  }
  const binaries = options.binaries ?? (await resolveBinaries());
  const settings = { ...CLUSTER_SETTINGS, ...options.settings };
  const primary = await PostgresServer.start({ binaries, settings });
  const cluster = new Cluster(primary, options.synchronous ?? false, settings);
  try {
    await allowReplicationConnections(primary);
    // One at a time: the copies are quick, and the names follow the synchronous priority.
    for (let i = 0; i < replicas; i++) await cluster.addReplica();
    return cluster;
  } catch (error) {
    await cluster.destroy();
    throw error;
  }
}

/** A primary and its replicas; see `startCluster`. */
export class Cluster {
  #primary: PostgresServer;
  #replicas: PostgresServer[] = [];
  /** Every server ever started here (former primaries too), with its replication name. */
  readonly #names = new Map<PostgresServer, string>();
  /** Replica data folders: made here, so removed here (the primary's belongs to its server). */
  readonly #replicaDirs: string[] = [];
  #created = 0;
  #destroyed: Promise<void> | undefined;

  /** @internal use startCluster() */
  constructor(
    primary: PostgresServer,
    private readonly synchronous: SynchronousMode,
    private readonly settings: Readonly<Record<string, string | number | boolean>>,
  ) {
    this.#primary = primary;
    this.#names.set(primary, 'primary');
  }

  /** The server that takes writes: the first one, or the last replica promoted. */
  get primary(): PostgresServer {
    return this.#primary;
  }

  /** The standbys following the primary, in creation order (stopped ones included). */
  get replicas(): readonly PostgresServer[] {
    return [...this.#replicas];
  }

  /** Connection URLs (database `postgres`) of the primary, then the replicas. */
  get hosts(): readonly string[] {
    return this.urls();
  }

  /** Connection URLs for `database` on the primary, then the replicas. */
  urls(database = 'postgres'): string[] {
    return [this.#primary, ...this.#replicas].map((server) => server.url(database));
  }

  /** The replica's `application_name` and slot name (`replica1`, …), or `primary` for the first server. */
  nameOf(server: PostgresServer): string {
    const name = this.#names.get(server);
    if (name === undefined) throw new Error('this server is not part of the cluster');
    return name;
  }

  /**
   * Makes one more replica of the current primary and waits until it streams. The copy
   * is taken between `pg_backup_start` and `pg_backup_stop`, behind a slot created first,
   * so the WAL it needs is kept even while the primary takes writes.
   */
  async addReplica(): Promise<PostgresServer> {
    const name = `replica${++this.#created}`;
    const dataDir = await mkdtemp(join(scratchFolder(), `${name}-`));
    this.#replicaDirs.push(dataDir);
    await this.#cloneInto(dataDir, name);
    const replica = await PostgresServer.fromDataDir(dataDir, {
      binaries: this.#primary.binaries,
      settings: this.settings,
    });
    this.#names.set(replica, name);
    await replica.launch();
    this.#replicas.push(replica);
    await this.#waitForStreaming(replica);
    await this.#configureSynchronous();
    return replica;
  }

  /** A standby's data folder: a base backup of the primary, streaming through slot `name`. */
  async #cloneInto(dataDir: string, name: string): Promise<void> {
    const source = this.#primary;
    await takeBaseBackup(source, name, dataDir);
    await editAutoConf(dataDir, {
      primary_conninfo: conninfo(source, name),
      primary_slot_name: name,
      // Promoted later, this copy must not wait for standbys it does not have.
      synchronous_standby_names: '',
      recovery_min_apply_delay: null,
    });
    await writeFile(join(dataDir, 'standby.signal'), '', { mode: 0o600 });
    await chownTree(dataDir, await unprivilegedUser());
  }

  /**
   * Delays the replica's replay of each commit by `ms` (`recovery_min_apply_delay`), for
   * deterministic lag; 0 removes the delay. A synchronous `remote_apply` replica delays
   * the primary's commits as much.
   */
  async setApplyDelay(replica: PostgresServer, ms: number): Promise<void> {
    this.#requireReplica(replica);
    if (!Number.isInteger(ms) || ms < 0) {
      throw new Error(`setApplyDelay: ms must be a whole number ≥ 0, got ${ms}`);
    }
    await withClient(replica, async (client) => {
      await client.query(
        ms === 0
          ? 'ALTER SYSTEM RESET recovery_min_apply_delay'
          : `ALTER SYSTEM SET recovery_min_apply_delay = ${ms}`,
      );
      await client.query('SELECT pg_reload_conf()');
    });
    // A session started after the postmaster re-read the file sees the new value; the
    // startup process was signalled in the same pass and only needs a moment more.
    await poll(`recovery_min_apply_delay=${ms} on ${this.nameOf(replica)}`, 10_000, () =>
      withClient(replica, async (client) => {
        const { rows } = await client.query<{ setting: string }>(
          `SELECT setting FROM pg_settings WHERE name = 'recovery_min_apply_delay'`,
        );
        return rows[0]?.setting === String(ms);
      }),
    );
    await delay(50);
  }

  /**
   * Waits until `replica` (default: every running replica) has replayed the primary's
   * WAL up to its `pg_current_wal_lsn()` of now, so every commit acknowledged so far is
   * visible there.
   */
  async waitForReplay(replica?: PostgresServer, timeoutMs = 30_000): Promise<void> {
    if (replica) this.#requireReplica(replica);
    const targets = replica ? [replica] : this.#replicas.filter((r) => r.running);
    const fence = await withClient(this.#primary, async (client) => {
      const { rows } = await client.query<{ lsn: string }>('SELECT pg_current_wal_lsn() AS lsn');
      return rows[0]!.lsn;
    });
    await Promise.all(
      targets.map((target) =>
        withClient(target, (client) =>
          poll(`${this.nameOf(target)} to replay ${fence}`, timeoutMs, async () => {
            const { rows } = await client.query<{ caught_up: boolean | null }>(
              'SELECT pg_wal_lsn_diff(pg_last_wal_replay_lsn(), $1::pg_lsn) >= 0 AS caught_up',
              [fence],
            );
            return rows[0]?.caught_up === true;
          }),
        ),
      ),
    );
  }

  /** SIGKILL of the primary's postmaster, as a crashed machine: nothing more is flushed. */
  async killPrimary(): Promise<void> {
    await this.#primary.kill();
  }

  /**
   * `pg_ctl promote -w` on `replica`, which then is the primary; the synchronous setting
   * moves over. The other replicas follow it: each gets a slot on it and its
   * `primary_conninfo` pointed at it (reloaded, or read at its next start if stopped). A
   * running replica that had received WAL past the promoted one's (its twin in a
   * synchronous pair often has) would have forked from it: it is cloned anew from the new
   * primary, on the same port (a stopped one is only re-pointed, unchecked). The former
   * primary is not stopped: kill it first, as an orchestrator fences it, or it keeps taking
   * writes like a split brain, and its replicas may fork unnoticed.
   */
  async promote(replica: PostgresServer): Promise<void> {
    this.#requireReplica(replica);
    const followers = this.#replicas.filter((r) => r !== replica);
    const running = followers.filter((r) => r.running);
    // A WAL receiver flushes what it got before it gives up on a dead primary: let it.
    if (!this.#primary.running) await Promise.all(running.map(stoppedReceiving));
    await replica.promote();
    this.#primary = replica;
    this.#replicas = followers;
    const fork = await forkPoint(replica);
    const forked = new Set<PostgresServer>();
    for (const follower of running) {
      if (await hasWalPast(follower, fork)) forked.add(follower);
    }
    await withClient(replica, async (client) => {
      for (const follower of followers.filter((r) => !forked.has(r))) {
        // No reservation yet: the slot starts where the follower asks to resume.
        await client.query(
          `SELECT pg_create_physical_replication_slot($1, false)
            WHERE NOT EXISTS (SELECT FROM pg_replication_slots WHERE slot_name = $1)`,
          [this.nameOf(follower)],
        );
      }
    });
    for (const follower of followers) {
      const name = this.nameOf(follower);
      if (forked.has(follower)) {
        trace('%s has WAL past the fork at %s: cloning it anew', name, fork);
        await follower.stop();
        await rm(follower.dataDir, { recursive: true, force: true });
        await mkdir(follower.dataDir, { mode: 0o700 });
        await this.#cloneInto(follower.dataDir, name);
        await follower.launch();
        continue;
      }
      // primary_conninfo is reloadable (PostgreSQL 13+), and recovery_target_timeline
      // defaults to 'latest', so a running follower switches without a restart.
      await editAutoConf(follower.dataDir, { primary_conninfo: conninfo(replica, name) });
      if (follower.running) {
        await withClient(follower, (client) => client.query('SELECT pg_reload_conf()'));
      }
    }
    await Promise.all(followers.filter((r) => r.running).map((r) => this.#waitForStreaming(r)));
    await this.#configureSynchronous();
  }

  /** Fast shutdown of a replica; it stays in `replicas` and keeps its slot (WAL is retained). */
  async stopReplica(replica: PostgresServer): Promise<void> {
    this.#requireReplica(replica);
    await replica.stop();
    if (!this.#primary.running) return;
    // The primary's WAL sender notices a moment later; until then the slot still looks in use.
    const slot = this.nameOf(replica);
    await poll(`the primary to release slot ${slot}`, 10_000, () =>
      withClient(this.#primary, async (client) => {
        const { rows } = await client.query(
          'SELECT FROM pg_replication_slots WHERE slot_name = $1 AND active',
          [slot],
        );
        return rows.length === 0;
      }),
    );
  }

  /** Starts a stopped replica again on the same port and waits until it streams. */
  async startReplica(replica: PostgresServer): Promise<void> {
    this.#requireReplica(replica);
    await replica.launch();
    await this.#waitForStreaming(replica);
  }

  /** Stops every server started here and removes their data folders; safe to call twice. */
  destroy(): Promise<void> {
    this.#destroyed ??= this.#teardown();
    return this.#destroyed;
  }

  async #teardown(): Promise<void> {
    const servers = [...this.#names.keys()];
    // Standbys first: a primary's fast shutdown waits for its WAL senders to finish.
    await Promise.allSettled(servers.filter((s) => s !== this.#primary).map((s) => s.stop()));
    await Promise.allSettled(servers.map((s) => s.destroy()));
    await Promise.all(this.#replicaDirs.map((dir) => rm(dir, { recursive: true, force: true })));
  }

  #requireReplica(server: PostgresServer): void {
    if (!this.#replicas.includes(server)) {
      throw new Error(
        `${this.#names.get(server) ?? 'this server'} is not a replica of the cluster`,
      );
    }
  }

  /** Until the primary's WAL sender and the replica's WAL receiver both say streaming. */
  async #waitForStreaming(replica: PostgresServer): Promise<void> {
    const name = this.nameOf(replica);
    const primary = this.#primary;
    await poll(`${name} to stream from port ${primary.port}`, STREAMING_TIMEOUT_MS, async () => {
      if (!replica.running) throw new GaveUp(`${name} exited:\n${replica.logTail.join('\n')}`);
      const sending = await withClient(primary, async (client) => {
        const { rows } = await client.query(
          `SELECT FROM pg_stat_replication WHERE application_name = $1 AND state = 'streaming'`,
          [name],
        );
        return rows.length > 0;
      });
      if (!sending) return false;
      return withClient(replica, async (client) => {
        const { rows } = await client.query(
          `SELECT FROM pg_stat_wal_receiver WHERE status = 'streaming' AND sender_port = $1`,
          [primary.port],
        );
        return rows.length > 0;
      });
    });
  }

  /** Points the primary's synchronous standby list at the current replicas. */
  async #configureSynchronous(): Promise<void> {
    if (!this.synchronous) return;
    const names = this.#replicas.map((r) => this.nameOf(r));
    const standbys = names.length > 0 ? `FIRST 1 (${names.join(', ')})` : '';
    await withClient(this.#primary, async (client) => {
      await client.query(`ALTER SYSTEM SET synchronous_standby_names = '${standbys}'`);
      await client.query(`ALTER SYSTEM SET synchronous_commit = '${this.synchronous}'`);
      await client.query('SELECT pg_reload_conf()');
    });
    // New sessions must commit synchronously as soon as this returns.
    const first = names[0];
    await poll('synchronous replication to take effect', 10_000, () =>
      withClient(this.#primary, async (client) => {
        const { rows } = await client.query<{ commit: string; standbys: string }>(
          `SELECT current_setting('synchronous_commit') AS commit,
                  current_setting('synchronous_standby_names') AS standbys`,
        );
        if (rows[0]?.commit !== this.synchronous || rows[0]?.standbys !== standbys) return false;
        if (first === undefined) return true;
        const sync = await client.query(
          `SELECT FROM pg_stat_replication WHERE sync_state = 'sync' AND application_name = $1`,
          [first],
        );
        return sync.rows.length > 0 || !this.#replicas[0]?.running;
      }),
    );
  }
}

/**
 * A base backup of `source` into `dataDir` by the low-level API: slot, `pg_backup_start`,
 * a file copy, `pg_backup_stop` on the same connection, its label written into the copy.
 */
async function takeBaseBackup(source: PostgresServer, slot: string, dataDir: string) {
  await withClient(source, async (client) => {
    // Reserved now, so the WAL from before the backup's checkpoint stays until the replica streams.
    await client.query('SELECT pg_create_physical_replication_slot($1, true)', [slot]);
    try {
      await client.query('SELECT pg_backup_start($1, true)', [`pg-sessions ${slot}`]);
      let stopped = false;
      try {
        await copyDataDir(source.dataDir, dataDir, '', false);
        // No WAL archive to wait for: the replica streams what it needs through its slot.
        const { rows } = await client.query<{ labelfile: string; spcmapfile: string | null }>(
          'SELECT labelfile, spcmapfile FROM pg_backup_stop(false)',
        );
        stopped = true;
        const stop = rows[0]!;
        await writeFile(join(dataDir, 'backup_label'), stop.labelfile, { mode: 0o600 });
        if (stop.spcmapfile) {
          await writeFile(join(dataDir, 'tablespace_map'), stop.spcmapfile, { mode: 0o600 });
        }
      } finally {
        if (!stopped) await client.query('SELECT pg_backup_stop(false)').catch(() => {});
      }
    } catch (error) {
      await client.query('SELECT pg_drop_replication_slot($1)', [slot]).catch(() => {});
      throw error;
    }
  });
}

/** Folders whose contents the server rebuilds or must not inherit (the primary's slots). */
const EMPTIED_FOLDERS = new Set([
  'pg_replslot',
  'pg_dynshmem',
  'pg_notify',
  'pg_serial',
  'pg_snapshots',
  'pg_stat_tmp',
  'pg_subtrans',
  'log',
  'pg_log',
]);

/** Files of the running server or of another backup; the unix socket (ours lives in the data folder). */
function skipped(name: string): boolean {
  return (
    name === 'postmaster.pid' ||
    name === 'postmaster.opts' ||
    name === 'backup_label' ||
    name === 'tablespace_map' ||
    name === 'standby.signal' ||
    name === 'postgresql.auto.conf.tmp' ||
    name === 'current_logfiles' ||
    name === 'pg_internal.init' ||
    name.startsWith('pgsql_tmp') ||
    name.startsWith('.s.PGSQL.')
  );
}

async function copyDataDir(from: string, to: string, relative: string, foldersOnly: boolean) {
  // Files come and go while the server runs: a vanished one is replayed from WAL anyway.
  const entries = await readdir(join(from, relative), { withFileTypes: true }).catch(ignoreMissing);
  if (!entries) return;
  await Promise.all(
    entries.map(async (entry) => {
      if (skipped(entry.name)) return;
      const path = join(relative, entry.name);
      if (entry.isDirectory()) {
        await mkdir(join(to, path), { mode: 0o700 });
        if (relative === '' && EMPTIED_FOLDERS.has(entry.name)) return;
        // pg_wal keeps archive_status/ (and summaries/ from 17 on), without a segment.
        await copyDataDir(
          from,
          to,
          path,
          foldersOnly || (relative === '' && entry.name === 'pg_wal'),
        );
      } else if (foldersOnly) {
        return;
      } else if (entry.isFile()) {
        await copyFile(join(from, path), join(to, path)).catch(ignoreMissing);
      } else if (entry.isSymbolicLink()) {
        // A tablespace link: it keeps pointing at the primary's folder (tablespace_map says so).
        await symlink(await readlink(join(from, path)), join(to, path));
      }
    }),
  );
}

function ignoreMissing(error: unknown): undefined {
  if ((error as { code?: string }).code === 'ENOENT') return undefined;
  throw error;
}

/** The copy is made by this process; the server runs as the unprivileged user (root case). */
async function chownTree(path: string, runAs: RunAs): Promise<void> {
  if (runAs.uid === undefined) return;
  const uid = runAs.uid;
  const gid = runAs.gid ?? uid;
  await lchown(path, uid, gid);
  const entries = await readdir(path, { withFileTypes: true });
  await Promise.all(
    entries.map((entry) =>
      entry.isDirectory()
        ? chownTree(join(path, entry.name), runAs)
        : lchown(join(path, entry.name), uid, gid),
    ),
  );
}

/**
 * Sets (or with `null`, removes) settings in `postgresql.auto.conf`, replacing earlier lines
 * for the same names: a promoted server's file still names its former upstream.
 */
async function editAutoConf(
  dataDir: string,
  values: Readonly<Record<string, string | null>>,
): Promise<void> {
  const file = join(dataDir, 'postgresql.auto.conf');
  const current = await readFile(file, 'utf8').catch(ignoreMissing);
  const kept = (current ?? '').split('\n').filter((line) => {
    const name = /^\s*([A-Za-z_.]+)\s*=/.exec(line)?.[1]?.toLowerCase();
    return line.trim() !== '' && !(name !== undefined && name in values);
  });
  for (const [name, value] of Object.entries(values)) {
    if (value !== null) kept.push(`${name} = '${value.replaceAll("'", "''")}'`);
  }
  // An existing file keeps its owner; a new one is chowned with the rest of the copy.
  await writeFile(file, `${kept.join('\n')}\n`, { mode: 0o600 });
}

async function stoppedReceiving(replica: PostgresServer): Promise<void> {
  await withClient(replica, (client) =>
    poll('the WAL receiver to stop after the primary died', 10_000, async () => {
      const { rows } = await client.query(
        `SELECT FROM pg_stat_wal_receiver WHERE status = 'streaming'`,
      );
      return rows.length === 0;
    }),
  );
}

/** Where the promoted server's timeline left its parent's, from its timeline history file. */
async function forkPoint(promoted: PostgresServer): Promise<string> {
  const history = await withClient(promoted, async (client) => {
    const { rows } = await client.query<{ history: string }>(
      `SELECT pg_read_file('pg_wal/' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)
                          || '.history') AS history`,
    );
    return rows[0]?.history ?? '';
  });
  // Lines read "<parent timeline>\t<switch LSN>\t<reason>"; the last one is this promotion.
  const lines = history.split('\n').filter((line) => /^\d+\t/.test(line));
  const lsn = lines.at(-1)?.split('\t')[1];
  if (!lsn) throw new Error(`no switch point in the timeline history of the promoted server`);
  return lsn;
}

/** Whether the standby received or replayed WAL beyond `lsn`: then it cannot switch there. */
async function hasWalPast(standby: PostgresServer, lsn: string): Promise<boolean> {
  return withClient(standby, async (client) => {
    const { rows } = await client.query<{ past: boolean | null }>(
      `SELECT pg_wal_lsn_diff(greatest(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn()),
                              $1::pg_lsn) > 0 AS past`,
      [lsn],
    );
    return rows[0]?.past === true;
  });
}

function conninfo(upstream: PostgresServer, applicationName: string): string {
  return `host=${upstream.host} port=${upstream.port} user=${upstream.user} application_name=${applicationName}`;
}

/**
 * `initdb --auth trust` writes `host replication all 127.0.0.1/32 trust` (PostgreSQL 10+);
 * other binaries or a custom pg_hba.conf may not.
 */
async function allowReplicationConnections(server: PostgresServer): Promise<void> {
  const hba = join(server.dataDir, 'pg_hba.conf');
  const text = await readFile(hba, 'utf8');
  if (/^\s*host\s+replication\s+all\s+127\.0\.0\.1\/32\s+trust\b/m.test(text)) return;
  await writeFile(hba, `${text}\nhost replication all 127.0.0.1/32 trust\n`);
  await withClient(server, (client) => client.query('SELECT pg_reload_conf()'));
}

async function withClient<T>(
  server: PostgresServer,
  use: (client: pg.Client) => Promise<T>,
): Promise<T> {
  const client = new pg.Client(
    await resolveConnectionConfig({
      connectionString: server.url(),
      connectionTimeoutMillis: 5_000,
    }),
  );
  client.on('error', () => {});
  await client.connect();
  try {
    return await use(client);
  } finally {
    await client.end().catch(() => {});
  }
}

/** Thrown by a poll check when waiting longer cannot help. */
class GaveUp extends Error {}

async function poll(what: string, timeoutMs: number, check: () => Promise<boolean>) {
  const deadline = Date.now() + timeoutMs;
  let lastError: unknown;
  while (Date.now() < deadline) {
    try {
      if (await check()) return;
      lastError = undefined;
    } catch (error) {
      if (error instanceof GaveUp) throw error;
      // A server that is starting or switching upstream refuses for a moment.
      lastError = error;
    }
    await delay(25);
  }
  throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`, { cause: lastError });
}
