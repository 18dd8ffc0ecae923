// The demo's state folder (.data, or DEMO_DATA_DIR): which process runs the demo, and
// which port its embedded PostgreSQL keeps across restarts.
import { readFileSync, unlinkSync } from 'node:fs';
import { mkdir, readFile, unlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';

/** What a running demo writes in `demo.pid`: its process and, once it listens, its URL. */
export interface InstanceRecord {
  readonly pid: number;
  /** A word of the process' command line, checked against /proc to catch a reused pid. */
  readonly script: string;
  readonly appUrl?: string;
}

/** This process' claim on the state folder; `release()` only removes a file that is still ours. */
export interface InstanceClaim {
  publish(appUrl: string): Promise<void>;
  release(): void;
}

/**
 * Claims the state folder for this process, or returns the demo that already runs there.
 * The pid file is created exclusively (`wx`), so two starts never both win an empty
 * folder; a file whose process is gone (killed with -9, a crash, a reboot that reused
 * the pid for another program) is stale and taken over.
 */
export async function claimInstance(
  stateDir: string,
  script: string,
): Promise<{ claim: InstanceClaim } | { running: InstanceRecord }> {
  await mkdir(stateDir, { recursive: true });
  const file = join(stateDir, 'demo.pid');
  const own: InstanceRecord = { pid: process.pid, script };
  for (let attempt = 0; attempt < 5; attempt++) {
    try {
      await writeFile(file, JSON.stringify(own), { flag: 'wx' });
      return { claim: ownClaim(file, own) };
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error;
    }
    const text = await readFile(file, 'utf8').catch(() => '');
    const record = parseRecord(text);
    // An empty file is one a starting demo has created but not written yet.
    if (!record && text === '' && attempt < 4) {
      await delay(100);
      continue;
    }
    if (record && isRunning(record)) return { running: record };
    // Remove only the stale file we judged, not one a racing start wrote meanwhile.
    if ((await readFile(file, 'utf8').catch(() => '')) === text) {
      await unlink(file).catch(() => {});
    }
  }
  throw new Error(`could not claim ${file}: another start keeps replacing it`);
}

function ownClaim(file: string, own: InstanceRecord): InstanceClaim {
  let current = JSON.stringify(own);
  const stillOurs = () => {
    try {
      return readFileSync(file, 'utf8') === current;
    } catch {
      return false;
    }
  };
  return {
    async publish(appUrl) {
      if (!stillOurs()) return;
      current = JSON.stringify({ ...own, appUrl });
      await writeFile(file, current);
    },
    release() {
      if (stillOurs()) unlinkSync(file);
    },
  };
}

function parseRecord(text: string): InstanceRecord | undefined {
  try {
    const record = JSON.parse(text) as Partial<InstanceRecord>;
    if (typeof record.pid !== 'number' || typeof record.script !== 'string') return undefined;
    return record as InstanceRecord;
  } catch {
    return undefined;
  }
}

function isRunning(record: InstanceRecord): boolean {
  if (!isAlive(record.pid)) return false;
  // Where /proc tells, the pid must still run the demo script, not a program that got
  // the same pid after the demo died.
  try {
    const commandLine = readFileSync(`/proc/${record.pid}/cmdline`, 'utf8');
    return commandLine.includes(record.script);
  } catch {
    return true;
  }
}

/** Whether a process runs (one of another user counts: EPERM; a zombie does not). */
export function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'EPERM') return false;
  }
  // An orphan that exited stays a zombie where nobody reaps (a container's pid 1, say).
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'Z';
  } catch {
    return true;
  }
}

/** The port the embedded PostgreSQL had last time, kept in `postgres.port` beside its data. */
export async function rememberedPort(stateDir: string): Promise<number | undefined> {
  const text = await readFile(join(stateDir, 'postgres.port'), 'utf8').catch(() => '');
  const port = Number(text.trim());
  return Number.isInteger(port) && port > 0 && port < 65536 ? port : undefined;
}

export async function rememberPort(stateDir: string, port: number): Promise<void> {
  await writeFile(join(stateDir, 'postgres.port'), `${port}\n`);
}

/**
 * A postmaster still running on the demo's data folder while no demo holds the folder
 * was left by a demo killed with -9 (the server outlives its parent). Stops it (fast
 * shutdown) so this start can run its own; returns its pid, if there was one.
 */
export async function stopOrphanedPostmaster(dataDir: string): Promise<number | undefined> {
  const text = await readFile(join(dataDir, 'postmaster.pid'), 'utf8').catch(() => '');
  const pid = Number(text.split('\n')[0]);
  if (!Number.isInteger(pid) || pid <= 0 || !isAlive(pid)) return undefined;
  process.kill(pid, 'SIGINT');
  for (let waited = 0; isAlive(pid); waited += 50) {
    if (waited === 15_000) process.kill(pid, 'SIGQUIT');
    if (waited > 20_000) throw new Error(`the PostgreSQL left running (pid ${pid}) does not stop`);
    await delay(50);
  }
  return pid;
}
