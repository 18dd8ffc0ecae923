import { spawn } from 'node:child_process';
import { chmodSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/**
 * Every server this process starts lives below one scratch folder. A detached
 * watchdog process removes it, after stopping the servers in it, once this process
 * is gone — also when it was killed by a signal or a test timeout, where no exit
 * hook of ours runs.
 */
let scratchRoot: string | undefined;
const livePostmasters = new Set<string>();

// The watchdog is plain CommonJS given to `node -e`, so it runs the same from
// TypeScript sources (tsx) and from the compiled package.
const WATCHDOG = `
const fs = require('node:fs');
const path = require('node:path');
const [parentPid, root] = process.argv.slice(1);
function pidFiles() {
  try {
    return fs.readdirSync(root).map((d) => path.join(root, d, 'postmaster.pid')).filter((f) => fs.existsSync(f));
  } catch { return []; }
}
function signalAll(signal) {
  for (const file of pidFiles()) {
    try { process.kill(Number(fs.readFileSync(file, 'utf8').split('\\n')[0]), signal); } catch {}
  }
}
const timer = setInterval(() => {
  if (!fs.existsSync(root)) process.exit(0);
  try { process.kill(Number(parentPid), 0); return; } catch {}
  clearInterval(timer);
  signalAll('SIGQUIT');
  setTimeout(() => {
    signalAll('SIGKILL');
    fs.rmSync(root, { recursive: true, force: true });
    process.exit(0);
  }, 1500);
}, 500);
`;

/**
 * The per-process scratch folder, created (and watched) on first use below `parent`
 * (which later calls no longer change): PostgresServer passes a folder the server's
 * user can reach (serverTmpdir).
 */
export function scratchFolder(parent: string = tmpdir()): string {
  if (scratchRoot) return scratchRoot;
  scratchRoot = mkdtempSync(join(parent, `pg-sessions-${process.pid}-`));
  // The unprivileged server user must be able to reach its data folder below it.
  chmodSync(scratchRoot, 0o755);
  const watchdog = spawn(process.execPath, ['-e', WATCHDOG, String(process.pid), scratchRoot], {
    detached: true,
    stdio: 'ignore',
    env: {},
  });
  watchdog.unref();
  process.once('exit', reapNow);
  return scratchRoot;
}

/** Records a data folder whose postmaster must be stopped if this process exits early. */
export function trackDataDir(dataDir: string): void {
  livePostmasters.add(dataDir);
}

export function untrackDataDir(dataDir: string): void {
  livePostmasters.delete(dataDir);
}

/** Synchronous last resort at process exit: immediate shutdown, then remove the scratch folder. */
function reapNow(): void {
  for (const dataDir of livePostmasters) {
    try {
      const pid = Number(readFileSync(join(dataDir, 'postmaster.pid'), 'utf8').split('\n')[0]);
      process.kill(pid, 'SIGQUIT');
    } catch {
      // Already gone.
    }
  }
  if (scratchRoot) rmSync(scratchRoot, { recursive: true, force: true });
}
