// CPU time of a server's whole process tree (PostgreSQL: the postmaster and every
// backend), read from /proc: what the database spent while a benchmark cell ran. On
// these machines the server shares the cores with the app, so its CPU per request is
// part of what bounds the app's throughput. Linux only; elsewhere `undefined`.
import { readdirSync, readFileSync } from 'node:fs';

/** Microseconds per clock tick of /proc's utime and stime (USER_HZ is 100 on Linux). */
const MICROS_PER_TICK = 10_000;

interface ProcessTimes {
  readonly parent: number;
  readonly ticks: number;
}

function readTimes(pid: number): ProcessTimes | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // The command name (field 2) may hold spaces and parentheses: count from its end.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return { parent: Number(fields[1]), ticks: Number(fields[11]) + Number(fields[12]) };
  } catch {
    return undefined; // the process ended between the listing and the read
  }
}

/** User + system CPU of `root` and its descendants, µs; undefined without /proc. */
export function processTreeCpuMicros(root: number | undefined): number | undefined {
  if (root === undefined || process.platform !== 'linux') return undefined;
  const times = new Map<number, ProcessTimes>();
  for (const entry of readdirSync('/proc')) {
    const pid = Number(entry);
    if (!Number.isInteger(pid)) continue;
    const read = readTimes(pid);
    if (read) times.set(pid, read);
  }
  const inTree = (pid: number): boolean => {
    for (let at: number | undefined = pid; at !== undefined && at > 1; at = times.get(at)?.parent)
      if (at === root) return true;
    return false;
  };
  let ticks = 0;
  for (const [pid, read] of times) if (inTree(pid)) ticks += read.ticks;
  return ticks * MICROS_PER_TICK;
}
