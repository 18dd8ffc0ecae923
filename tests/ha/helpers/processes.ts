import { type ChildProcess, spawn } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { chown, mkdtemp } from 'node:fs/promises';
import { join } from 'node:path';
import { unprivilegedUser } from '../../../src/testing/os-user.js';
import { scratchFolder } from '../../../src/testing/reaper.js';

/**
 * A server process of the HA suites (etcd, Patroni, PgBouncer), run as the unprivileged
 * user when this process is root, with the last lines of its output kept for errors.
 * Every one still running is killed when this process exits, however the test ended.
 */
export class ServerProcess {
  readonly #tail: string[] = [];
  #child: ChildProcess | undefined;
  readonly exited: Promise<void>;

  private constructor(
    readonly name: string,
    child: ChildProcess,
  ) {
    this.#child = child;
    live.add(this);
    const keep = (chunk: Buffer) => {
      for (const line of chunk.toString().split('\n')) {
        if (line.trim() === '') continue;
        this.#tail.push(line);
        if (this.#tail.length > 60) this.#tail.shift();
      }
    };
    child.stdout?.on('data', keep);
    child.stderr?.on('data', keep);
    this.exited = new Promise((resolve) => {
      child.once('exit', () => {
        live.delete(this);
        this.#child = undefined;
        resolve();
      });
    });
  }

  static async start(
    name: string,
    command: string,
    args: readonly string[],
    env: NodeJS.ProcessEnv = {},
  ): Promise<ServerProcess> {
    const runAs = await unprivilegedUser();
    const child = spawn(command, args, {
      ...runAs,
      env: { ...process.env, ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    return new ServerProcess(name, child);
  }

  get pid(): number | undefined {
    return this.#child?.pid;
  }

  get running(): boolean {
    return this.#child !== undefined;
  }

  get logTail(): string {
    return this.#tail.join('\n');
  }

  /** SIGKILL, as a machine that died. */
  async kill(): Promise<void> {
    this.#child?.kill('SIGKILL');
    await this.exited;
  }

  /** SIGTERM, then SIGKILL after `graceMs`. */
  async stop(graceMs = 15_000): Promise<void> {
    const child = this.#child;
    if (!child) return;
    child.kill('SIGTERM');
    const timer = setTimeout(() => child.kill('SIGKILL'), graceMs);
    await this.exited;
    clearTimeout(timer);
  }
}

const live = new Set<ServerProcess>();
process.once('exit', () => {
  for (const server of live) {
    try {
      if (server.pid) process.kill(server.pid, 'SIGKILL');
    } catch {}
  }
});

/** A folder below the harness's scratch root, owned by the unprivileged user. */
export async function ownedFolder(prefix: string): Promise<string> {
  const dir = await mkdtemp(join(scratchFolder(), prefix));
  const { uid, gid } = await unprivilegedUser();
  if (uid !== undefined) await chown(dir, uid, gid ?? uid);
  return dir;
}

/** SIGKILL of a process and every descendant (a postmaster and its backends). */
export function killTree(pid: number): void {
  const children = new Map<number, number[]>();
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, 'utf8');
      // The fields after the command name, which may itself hold spaces and parentheses.
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      const list = children.get(ppid) ?? [];
      list.push(Number(entry));
      children.set(ppid, list);
    } catch {}
  }
  const doomed: number[] = [];
  const visit = (p: number) => {
    doomed.push(p);
    for (const child of children.get(p) ?? []) visit(child);
  };
  visit(pid);
  for (const p of doomed) {
    try {
      process.kill(p, 'SIGKILL');
    } catch {}
  }
}

/** The postmaster's pid from its data folder, if one runs. */
export function postmasterPid(dataDir: string): number | undefined {
  try {
    const pid = Number(readFileSync(join(dataDir, 'postmaster.pid'), 'utf8').split('\n')[0]);
    process.kill(pid, 0);
    return pid;
  } catch {
    return undefined;
  }
}
