import { execFile } from 'node:child_process';
import { promisify } from 'node:util';

const execFileAsync = promisify(execFile);

/** The uid/gid a server process runs as; empty when the current user can run it. */
export interface RunAs {
  readonly uid?: number;
  readonly gid?: number;
}

const SERVICE_USER = 'postgres';

let cached: Promise<RunAs> | undefined;

/**
 * PostgreSQL refuses to run as root. When this process is root, servers run as the
 * `postgres` system user, created (without a home or login shell) if it is missing.
 */
export function unprivilegedUser(): Promise<RunAs> {
  cached ??= resolveRunAs();
  return cached;
}

async function resolveRunAs(): Promise<RunAs> {
  if (typeof process.getuid !== 'function' || process.getuid() !== 0) return {};
  let ids = await lookup(SERVICE_USER);
  if (!ids) {
    await execFileAsync('useradd', [
      '--system',
      '--no-create-home',
      '--shell',
      '/usr/sbin/nologin',
      '--user-group',
      SERVICE_USER,
    ]).catch((error: unknown) => {
      throw new Error(`running as root and could not create the '${SERVICE_USER}' user`, {
        cause: error,
      });
    });
    ids = await lookup(SERVICE_USER);
  }
  if (!ids) throw new Error(`user '${SERVICE_USER}' does not exist after useradd`);
  return ids;
}

async function lookup(name: string): Promise<RunAs | undefined> {
  try {
    const [uid, gid] = await Promise.all([
      execFileAsync('id', ['-u', name]),
      execFileAsync('id', ['-g', name]),
    ]);
    return { uid: Number(uid.stdout.trim()), gid: Number(gid.stdout.trim()) };
  } catch {
    return undefined;
  }
}
