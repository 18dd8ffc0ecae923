import { execFile } from 'node:child_process';
import { stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, resolve } from 'node:path';
import { promisify } from 'node:util';

const execFileAsync = promisify(execFile);

/** The uid/gid a server process runs as; empty when the current user can run it. */
export interface RunAs {
  readonly uid?: number;
  readonly gid?: number;
}

/** The OS user servers run as when this process is root. */
export const SERVICE_USER = 'postgres';

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

/**
 * The first folder on the way to `path` (the root, each parent, then `path` itself) that
 * the server's user cannot enter, asked of the user itself (`test -x` run as it, so
 * ownership, groups and ACLs all count); `undefined` when it reaches `path`, or when the
 * server runs as this process' own user. `path` should exist.
 */
export async function blockedFolder(path: string, runAs: RunAs): Promise<string | undefined> {
  if (runAs.uid === undefined) return undefined;
  const chain: string[] = [];
  for (let folder = resolve(path); ; folder = dirname(folder)) {
    chain.unshift(folder);
    if (dirname(folder) === folder) break;
  }
  const script = 'for d do test -x "$d" || { printf %s "$d"; exit 3; }; done';
  try {
    await execFileAsync('/bin/sh', ['-c', script, 'sh', ...chain], { ...runAs, env: {} });
    return undefined;
  } catch (error) {
    const { code, stdout } = error as { code?: unknown; stdout?: string };
    if (code === 3 && stdout) return stdout;
    throw new Error(`could not check whether user '${SERVICE_USER}' can enter ${path}`, {
      cause: error,
    });
  }
}

/** One line for a folder the server's user cannot reach, saying what to do. */
export function unreachableMessage(what: string, blocked: string, remedy?: string): string {
  return (
    `${what} is not reachable by the PostgreSQL user '${SERVICE_USER}' (PostgreSQL refuses ` +
    `to run as root): it cannot enter ${blocked}; ${remedy ?? `run chmod o+x ${blocked} or choose another folder`}`
  );
}

let cachedTmp: Promise<string> | undefined;

/**
 * Where servers' scratch folders go: the temp folder (TMPDIR), unless the server's user
 * cannot reach it (root's private TMPDIR made by mktemp -d, say). Then, rather than
 * widening the permissions of a folder other programs use too, the system temp folder
 * (/tmp, else /var/tmp) that the user does reach; failing that, one line saying what to do.
 */
export function serverTmpdir(runAs: RunAs): Promise<string> {
  cachedTmp ??= chooseTmpdir(runAs).catch((error: unknown) => {
    cachedTmp = undefined;
    throw error;
  });
  return cachedTmp;
}

async function chooseTmpdir(runAs: RunAs): Promise<string> {
  const preferred = tmpdir();
  const blocked = await blockedFolder(preferred, runAs);
  if (!blocked) return preferred;
  for (const fallback of ['/tmp', '/var/tmp']) {
    const isFolder = await stat(fallback).then(
      (info) => info.isDirectory(),
      () => false,
    );
    if (isFolder && !(await blockedFolder(fallback, runAs))) return fallback;
  }
  throw new Error(
    unreachableMessage(
      `TMPDIR ${preferred}`,
      blocked,
      `run chmod o+x ${blocked} or set TMPDIR to a folder it can enter`,
    ),
  );
}
