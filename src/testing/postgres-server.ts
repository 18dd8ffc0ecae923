import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { access, chmod, chown, cp, mkdir, mkdtemp, readFile, rm, stat } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { promisify } from 'node:util';
import pg from 'pg';
import { resolveConnectionConfig } from '../db/connection-config.js';
import { type PostgresBinaries, resolveBinaries } from './binaries.js';
import { freePort } from './free-port.js';
import {
  blockedFolder,
  type RunAs,
  serverTmpdir,
  unprivilegedUser,
  unreachableMessage,
} from './os-user.js';
import { scratchFolder, trackDataDir, untrackDataDir } from './reaper.js';

const execFileAsync = promisify(execFile);

/** Settings that make a throwaway server fast; durability against a machine crash is not needed. */
const FAST_SETTINGS: Readonly<Record<string, string>> = {
  fsync: 'off',
  full_page_writes: 'off',
  max_connections: '200',
  shared_buffers: '64MB',
  wal_level: 'replica',
  max_wal_senders: '10',
  max_replication_slots: '10',
  wal_keep_size: '64MB',
  hot_standby: 'on',
  hot_standby_feedback: 'on',
};

export interface PostgresServerOptions {
  /** The binaries to run. @default resolveBinaries() — PG_BIN_DIR, else the embedded packages */
  readonly binaries?: PostgresBinaries;
  /**
   * The data folder; when this process is root, the server's user must be able to enter
   * every folder above it (else start() refuses in one line).
   * @default a fresh folder below the per-process scratch folder, removed by destroy(); that
   * is below TMPDIR, or below /tmp when the server's user cannot enter TMPDIR
   */
  readonly dataDir?: string;
  /** The TCP port on 127.0.0.1. @default a free port */
  readonly port?: number;
  /** Extra `-c name=value` settings, added to (and overriding) the fast defaults. */
  readonly settings?: Readonly<Record<string, string | number | boolean>>;
  /** Receives the server's log lines. @default they are kept and shown only when start fails */
  readonly onLog?: (line: string) => void;
}

/**
 * A real PostgreSQL server process on 127.0.0.1, with trust authentication for the
 * superuser `postgres`. Runs as an unprivileged user when this process is root.
 *
 * @example
 * const server = await PostgresServer.start();
 * const client = new pg.Client(server.url('postgres'));
 * // …
 * await server.destroy();
 */
export class PostgresServer {
  readonly host = '127.0.0.1';
  readonly user = 'postgres';
  #process: ChildProcess | undefined;
  #exited: Promise<void> = Promise.resolve();
  #logTail: string[] = [];

  private constructor(
    readonly binaries: PostgresBinaries,
    readonly dataDir: string,
    public port: number,
    readonly ownsDataDir: boolean,
    private readonly runAs: RunAs,
    private readonly settings: Readonly<Record<string, string>>,
    private readonly onLog: ((line: string) => void) | undefined,
  ) {}

  /** Initialises a data folder (unless it already holds a cluster) and starts the server. */
  static async start(options: PostgresServerOptions = {}): Promise<PostgresServer> {
    const server = await PostgresServer.prepare(options);
    if (!(await isInitialised(server.dataDir))) await server.initdb();
    await server.launch();
    return server;
  }

  /**
   * A server over an existing data folder (a copied base backup, say) that is not
   * started yet: call `launch()`.
   */
  static async fromDataDir(
    dataDir: string,
    options: Omit<PostgresServerOptions, 'dataDir'> = {},
  ): Promise<PostgresServer> {
    return PostgresServer.prepare({ ...options, dataDir });
  }

  private static async prepare(options: PostgresServerOptions): Promise<PostgresServer> {
    const runAs = await unprivilegedUser();
    const binaries = await runnableBinaries(options.binaries ?? (await resolveBinaries()), runAs);
    const ownsDataDir = options.dataDir === undefined;
    const dataDir =
      options.dataDir ?? (await mkdtemp(join(scratchFolder(await serverTmpdir(runAs)), 'data-')));
    await mkdir(dataDir, { recursive: true });
    // Refused before the folder is handed over: else initdb fails with "Permission denied".
    const blocked = await blockedFolder(dirname(dataDir), runAs);
    if (blocked) throw new Error(unreachableMessage(`data folder ${dataDir}`, blocked));
    await chmod(dataDir, 0o700);
    if (runAs.uid !== undefined) await chown(dataDir, runAs.uid, runAs.gid ?? runAs.uid);
    const settings: Record<string, string> = { ...FAST_SETTINGS };
    for (const [name, value] of Object.entries(options.settings ?? {})) {
      settings[name] = String(value);
    }
    return new PostgresServer(
      binaries,
      dataDir,
      options.port ?? 0,
      ownsDataDir,
      runAs,
      settings,
      options.onLog,
    );
  }

  /** A connection URL for `database` as the superuser. */
  url(database = 'postgres'): string {
    return `postgres://${this.user}@${this.host}:${this.port}/${encodeURIComponent(database)}`;
  }

  get running(): boolean {
    return this.#process !== undefined && this.#process.exitCode === null && !this.#process.killed;
  }

  /** The postmaster's process id while it runs. */
  get pid(): number | undefined {
    return this.running ? this.#process?.pid : undefined;
  }

  private async initdb(): Promise<void> {
    const args = [
      '--pgdata',
      this.dataDir,
      '--username',
      this.user,
      '--auth',
      'trust',
      '--encoding',
      'UTF8',
      '--locale',
      'C',
      '--no-sync',
      '--no-instructions',
    ];
    try {
      await execFileAsync(this.binaries.initdb, args, {
        ...this.runAs,
        env: { ...process.env, LC_ALL: 'C', LANG: 'C' },
      });
    } catch (error) {
      const stderr = (error as { stderr?: string }).stderr ?? '';
      throw new Error(`initdb failed in ${this.dataDir}: ${stderr.trim()}`, { cause: error });
    }
  }

  /** Starts the server on its data folder and waits until it accepts connections. */
  async launch(): Promise<void> {
    if (this.running) return;
    // A clash on a port taken between freePort() and bind() is retried on another one.
    for (let attempt = 0; ; attempt++) {
      const chosenPort = this.port === 0 || attempt > 0 ? await freePort() : this.port;
      try {
        await this.spawnAndWait(chosenPort);
        return;
      } catch (error) {
        const portClash = this.#logTail.some((line) => line.includes('could not bind'));
        if (!portClash || attempt >= 4) throw error;
      }
    }
  }

  private async spawnAndWait(port: number): Promise<void> {
    const args = ['-D', this.dataDir, '-p', String(port), '-c', 'listen_addresses=127.0.0.1'];
    args.push('-c', `unix_socket_directories=${this.dataDir}`);
    for (const [name, value] of Object.entries(this.settings)) args.push('-c', `${name}=${value}`);
    this.#logTail = [];
    const child = spawn(this.binaries.postgres, args, {
      ...this.runAs,
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, LC_ALL: 'C', LANG: 'C' },
    });
    const onData = (chunk: Buffer) => {
      for (const line of chunk.toString('utf8').split('\n')) {
        if (!line) continue;
        this.onLog?.(line);
        this.#logTail.push(line);
        if (this.#logTail.length > 50) this.#logTail.shift();
      }
    };
    child.stdout?.on('data', onData);
    child.stderr?.on('data', onData);
    // The server never keeps this process alive: at exit the reaper stops it.
    child.unref();
    (child.stdout as unknown as { unref?: () => void } | null)?.unref?.();
    (child.stderr as unknown as { unref?: () => void } | null)?.unref?.();
    this.#process = child;
    this.#exited = new Promise((resolve) => child.once('exit', () => resolve()));
    trackDataDir(this.dataDir);
    this.port = port;
    const deadline = Date.now() + 30_000;
    while (Date.now() < deadline) {
      if (child.exitCode !== null || child.signalCode !== null) {
        this.#process = undefined;
        untrackDataDir(this.dataDir);
        throw new Error(`postgres exited at start:\n${this.#logTail.join('\n')}`);
      }
      if (await this.acceptsConnections()) return;
      await delay(50);
    }
    throw new Error(
      `postgres did not accept connections within 30 s:\n${this.#logTail.join('\n')}`,
    );
  }

  private async acceptsConnections(): Promise<boolean> {
    let client: pg.Client | undefined;
    try {
      // Through the sslmode rules, so that a server with `ssl = on` and hostssl-only rules starts too.
      client = new pg.Client(
        await resolveConnectionConfig({
          connectionString: this.url(),
          connectionTimeoutMillis: 1000,
        }),
      );
      client.on('error', () => {});
      await client.connect();
      await client.query('SELECT 1');
      return true;
    } catch {
      return false;
    } finally {
      await client?.end().catch(() => {});
    }
  }

  /** Fast shutdown (SIGINT: open transactions are rolled back), waiting for the exit. */
  async stop(): Promise<void> {
    await this.signal('SIGINT');
  }

  /** Kills the postmaster at once (SIGKILL), as a crashed machine would: nothing is flushed. */
  async kill(): Promise<void> {
    await this.signal('SIGKILL');
  }

  private async signal(signal: NodeJS.Signals): Promise<void> {
    const child = this.#process;
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    child.kill(signal);
    // Hold the event loop while waiting: the child itself is unref'd.
    let timer: NodeJS.Timeout | undefined;
    const exited = await Promise.race([
      this.#exited.then(() => true),
      new Promise<boolean>((resolve) => {
        timer = setTimeout(() => resolve(false), 15_000);
      }),
    ]);
    clearTimeout(timer);
    if (!exited) {
      child.kill('SIGKILL');
      await this.#exited;
    }
    this.#process = undefined;
    untrackDataDir(this.dataDir);
    if (signal === 'SIGKILL') await killOrphanedBackends(this.dataDir);
  }

  /** `pg_ctl promote`: ends recovery on a standby and waits until it accepts writes. */
  async promote(): Promise<void> {
    await execFileAsync(this.binaries.pgCtl, ['promote', '-w', '-D', this.dataDir], {
      ...this.runAs,
    });
  }

  /** Stops the server and removes its data folder if this object created it. */
  async destroy(): Promise<void> {
    await this.stop();
    if (this.ownsDataDir) await rm(this.dataDir, { recursive: true, force: true });
  }

  /** The last lines the server logged, for error messages. */
  get logTail(): readonly string[] {
    return this.#logTail;
  }
}

async function isInitialised(dataDir: string): Promise<boolean> {
  return access(join(dataDir, 'PG_VERSION')).then(
    () => true,
    () => false,
  );
}

/**
 * After SIGKILL of the postmaster its backends exit on their own once they notice;
 * wait for postmaster.pid's shared memory users to go so the folder can be reused.
 */
async function killOrphanedBackends(dataDir: string): Promise<void> {
  const pidFile = join(dataDir, 'postmaster.pid');
  const deadline = Date.now() + 5_000;
  while (Date.now() < deadline) {
    const exists = await stat(pidFile).then(
      () => true,
      () => false,
    );
    if (!exists) return;
    const pid = Number((await readFile(pidFile, 'utf8').catch(() => '')).split('\n')[0]);
    if (!pid || !isAlive(pid)) return;
    await delay(20);
  }
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/**
 * The unprivileged user may be unable to reach binaries inside a private folder
 * (a home directory with mode 0700, say): then run a copy from the temp folder.
 */
async function runnableBinaries(bins: PostgresBinaries, runAs: RunAs): Promise<PostgresBinaries> {
  if (runAs.uid === undefined) return bins;
  const canRun = await execFileAsync(bins.postgres, ['--version'], { ...runAs }).then(
    () => true,
    () => false,
  );
  if (canRun) return bins;
  const installRoot = join(bins.binDir, '..');
  const copyRoot = join(
    await serverTmpdir(runAs),
    `pg-sessions-bin-${createHash('sha256').update(installRoot).digest('hex').slice(0, 12)}`,
  );
  const copied = await access(join(copyRoot, 'bin', 'postgres')).then(
    () => true,
    () => false,
  );
  if (!copied) {
    await cp(installRoot, copyRoot, { recursive: true, verbatimSymlinks: true });
    await chmod(copyRoot, 0o755);
  }
  const binDir = join(copyRoot, 'bin');
  return {
    ...bins,
    binDir,
    initdb: join(binDir, 'initdb'),
    postgres: join(binDir, 'postgres'),
    pgCtl: join(binDir, 'pg_ctl'),
  };
}

export function delay(ms: number, options: { unref?: boolean } = {}): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    if (options.unref) timer.unref();
  });
}
