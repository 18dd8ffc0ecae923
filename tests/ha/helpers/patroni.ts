import { execFile } from 'node:child_process';
import { chown, readFile, rm, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { promisify } from 'node:util';
import { freePort } from '../../../src/testing/free-port.js';
import { unprivilegedUser } from '../../../src/testing/os-user.js';
import { killTree, ownedFolder, postmasterPid, ServerProcess } from './processes.js';
import { debianPostgresBin } from './requirements.js';

const execFileAsync = promisify(execFile);

/** Patroni's timings, short for tests: the leader key expires `ttl` s after its holder died. */
export const PATRONI_TTL_S = 20;
const LOOP_WAIT_S = 1;
const RETRY_TIMEOUT_S = 5;
export const SUPERUSER_PASSWORD = 'patroni-super';

export interface PatroniMember {
  readonly name: string;
  readonly role: string;
  readonly state: string;
  readonly host: string;
  readonly port: number;
  readonly timeline?: number;
  readonly lag?: number | string;
}

/** One Patroni node: its PostgreSQL port, REST port, data and configuration folders. */
export class PatroniNode {
  process: ServerProcess | undefined;

  constructor(
    readonly name: string,
    readonly pgPort: number,
    readonly restPort: number,
    readonly dataDir: string,
    readonly configFile: string,
  ) {}

  /** A URL to this node's PostgreSQL as `user` (the superuser by default). */
  url(database = 'postgres', user = 'postgres', password = SUPERUSER_PASSWORD): string {
    return `postgres://${user}:${encodeURIComponent(password)}@127.0.0.1:${this.pgPort}/${database}`;
  }

  async start(): Promise<void> {
    if (this.process?.running) return;
    this.process = await ServerProcess.start(`patroni ${this.name}`, 'patroni', [this.configFile]);
  }

  /** Patroni's own log (its decisions: promotion, pg_rewind, following). */
  async log(): Promise<string> {
    return readFile(join(dirname(this.configFile), 'patroni.log'), 'utf8').catch(() => '');
  }

  /** The machine dies: Patroni and PostgreSQL (every backend) at once, by SIGKILL. */
  async kill(): Promise<void> {
    const postmaster = postmasterPid(this.dataDir);
    const patroni = this.process;
    if (patroni?.pid) killTree(patroni.pid);
    if (postmaster) killTree(postmaster);
    await patroni?.exited;
    // The backends are gone once the postmaster's pid no longer answers.
    const deadline = Date.now() + 10_000;
    while (postmasterPid(this.dataDir) !== undefined && Date.now() < deadline) {
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
  }

  /** Patroni stops PostgreSQL (fast shutdown) before it exits. */
  async stop(): Promise<void> {
    await this.process?.stop(30_000);
    const postmaster = postmasterPid(this.dataDir);
    if (postmaster) killTree(postmaster);
  }
}

/** etcd and three Patroni nodes in synchronous mode on loopback ports. */
export class PatroniCluster {
  private constructor(
    readonly scope: string,
    readonly etcd: ServerProcess,
    readonly nodes: readonly PatroniNode[],
    private readonly folders: readonly string[],
  ) {}

  static async start(size = 3): Promise<PatroniCluster> {
    const bin = await debianPostgresBin();
    const scope = `pgs-${process.pid}`;
    const etcdDir = await ownedFolder('etcd-');
    const [clientPort, peerPort] = [await freePort(), await freePort()];
    const etcd = await ServerProcess.start('etcd', 'etcd', [
      '--name',
      'etcd0',
      '--data-dir',
      join(etcdDir, 'data'),
      '--listen-client-urls',
      `http://127.0.0.1:${clientPort}`,
      '--advertise-client-urls',
      `http://127.0.0.1:${clientPort}`,
      '--listen-peer-urls',
      `http://127.0.0.1:${peerPort}`,
      '--initial-advertise-peer-urls',
      `http://127.0.0.1:${peerPort}`,
      '--initial-cluster',
      `etcd0=http://127.0.0.1:${peerPort}`,
      '--log-level',
      'warn',
    ]);
    const folders = [etcdDir];
    const nodes: PatroniNode[] = [];
    const cluster = new PatroniCluster(scope, etcd, nodes, folders);
    try {
      await waitFor('etcd to answer', 20_000, async () => {
        const response = await fetch(`http://127.0.0.1:${clientPort}/health`);
        return response.ok;
      });
      for (let i = 1; i <= size; i++) {
        const dataDir = await ownedFolder(`patroni-node${i}-`);
        const etcDir = await ownedFolder(`patroni-etc${i}-`);
        folders.push(dataDir, etcDir);
        const node = new PatroniNode(
          `node${i}`,
          await freePort(),
          await freePort(),
          dataDir,
          join(etcDir, 'patroni.yml'),
        );
        await writeConfig(node, scope, clientPort, bin, etcDir);
        nodes.push(node);
      }
      // The first node bootstraps; the others clone it once it leads.
      await nodes[0]!.start();
      await cluster.waitForLeader(60_000);
      await Promise.all(nodes.slice(1).map((node) => node.start()));
      await cluster.waitForMembers(size, 90_000);
      return cluster;
    } catch (error) {
      const tails = [etcd, ...nodes.map((n) => n.process)]
        .filter((p) => p !== undefined)
        .map((p) => `--- ${p!.name}\n${p!.logTail}`)
        .join('\n');
      await cluster.destroy();
      throw new Error(`the Patroni cluster did not start:\n${tails}`, { cause: error });
    }
  }

  /** Members as Patroni's REST API (any node that answers) reports them. */
  async members(): Promise<PatroniMember[]> {
    for (const node of this.nodes) {
      if (!node.process?.running) continue;
      try {
        const response = await fetch(`http://127.0.0.1:${node.restPort}/cluster`, {
          signal: AbortSignal.timeout(2_000),
        });
        if (!response.ok) continue;
        const body = (await response.json()) as { members?: PatroniMember[] };
        return body.members ?? [];
      } catch {}
    }
    return [];
  }

  async leader(): Promise<PatroniNode | undefined> {
    const members = await this.members();
    const leader = members.find((m) => m.role === 'leader' && m.state === 'running');
    return this.nodes.find((node) => node.name === leader?.name);
  }

  async waitForLeader(timeoutMs: number, other?: PatroniNode): Promise<PatroniNode> {
    let found: PatroniNode | undefined;
    await waitFor('a Patroni leader', timeoutMs, async () => {
      found = await this.leader();
      return found !== undefined && found !== other;
    });
    return found!;
  }

  /** Until `count` members run, the replicas streaming (Patroni 3.0 says 'running'). */
  async waitForMembers(count: number, timeoutMs: number): Promise<void> {
    await waitFor(`${count} running Patroni members`, timeoutMs, async () => {
      const members = await this.members();
      const running = members.filter((m) => m.state === 'running' || m.state === 'streaming');
      const sync = members.some((m) => m.role === 'sync_standby');
      return running.length >= count && (count < 2 || sync);
    });
  }

  /** `patronictl switchover` to `candidate` (now), as an operator runs it. */
  async switchover(from: PatroniNode, candidate: PatroniNode): Promise<void> {
    const runAs = await unprivilegedUser();
    await execFileAsync(
      'patronictl',
      [
        '-c',
        from.configFile,
        'switchover',
        this.scope,
        '--leader',
        from.name,
        '--candidate',
        candidate.name,
        '--force',
      ],
      { ...runAs, timeout: 60_000 },
    );
  }

  /** `patronictl restart` of one member (PostgreSQL restarts; Patroni keeps running). */
  async restart(node: PatroniNode): Promise<void> {
    const runAs = await unprivilegedUser();
    await execFileAsync(
      'patronictl',
      ['-c', node.configFile, 'restart', this.scope, node.name, '--force'],
      { ...runAs, timeout: 60_000 },
    );
  }

  async destroy(): Promise<void> {
    // Replicas first, then whoever leads, then etcd: a leader alone shuts down quickly.
    const leader = await this.leader().catch(() => undefined);
    await Promise.allSettled(this.nodes.filter((n) => n !== leader).map((n) => n.stop()));
    await leader?.stop();
    await this.etcd.stop();
    await Promise.all(this.folders.map((dir) => rm(dir, { recursive: true, force: true })));
  }
}

async function writeConfig(
  node: PatroniNode,
  scope: string,
  etcdPort: number,
  bin: string,
  etcDir: string,
): Promise<void> {
  // JSON is YAML: no YAML writer needed.
  const config = {
    scope,
    name: node.name,
    log: { level: 'INFO', dir: etcDir, file_num: 2 },
    restapi: {
      listen: `127.0.0.1:${node.restPort}`,
      connect_address: `127.0.0.1:${node.restPort}`,
    },
    etcd3: { hosts: [`127.0.0.1:${etcdPort}`] },
    bootstrap: {
      dcs: {
        ttl: PATRONI_TTL_S,
        loop_wait: LOOP_WAIT_S,
        retry_timeout: RETRY_TIMEOUT_S,
        maximum_lag_on_failover: 16 * 1024 * 1024,
        synchronous_mode: true,
        postgresql: {
          use_pg_rewind: true,
          use_slots: true,
          parameters: {
            wal_log_hints: 'on',
            max_connections: 100,
            max_wal_senders: 10,
            max_replication_slots: 10,
            wal_keep_size: '128MB',
            // A standby whose upstream went away retries every 5 s by default.
            wal_retrieve_retry_interval: '200ms',
          },
        },
      },
      initdb: [{ encoding: 'UTF8' }, { locale: 'C' }, 'data-checksums'],
    },
    postgresql: {
      listen: `127.0.0.1:${node.pgPort}`,
      connect_address: `127.0.0.1:${node.pgPort}`,
      data_dir: node.dataDir,
      bin_dir: bin,
      pgpass: join(etcDir, 'pgpass'),
      authentication: {
        superuser: { username: 'postgres', password: SUPERUSER_PASSWORD },
        replication: { username: 'replicator', password: 'patroni-replication' },
      },
      pg_hba: [
        'local all all trust',
        'host replication replicator 127.0.0.1/32 scram-sha-256',
        'host all all 127.0.0.1/32 scram-sha-256',
      ],
      parameters: { unix_socket_directories: etcDir },
    },
  };
  await writeFile(node.configFile, JSON.stringify(config, null, 2), { mode: 0o600 });
  const { uid, gid } = await unprivilegedUser();
  if (uid !== undefined) await chown(node.configFile, uid, gid ?? uid);
}

export async function waitFor(
  what: string,
  timeoutMs: number,
  check: () => Promise<boolean>,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let lastError: unknown;
  while (Date.now() < deadline) {
    try {
      if (await check()) return;
    } catch (error) {
      lastError = error;
    }
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`, { cause: lastError });
}
