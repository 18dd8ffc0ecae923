import { execFile } from 'node:child_process';
import { rmSync } from 'node:fs';
import { mkdir, mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

const execFileAsync = promisify(execFile);
const PROJECT = fileURLToPath(new URL('../..', import.meta.url));
// `npm pack` runs `prepare` (the build into dist/): two test files packing at once would
// write the same files together, so packs are serialised across processes by this lock.
const PACK_LOCK = join(tmpdir(), 'pg-sessions-pack.lock');

/** The version of a package in our lock file (what the suite itself runs with). */
export async function lockedVersion(name: string): Promise<string> {
  const lock = JSON.parse(await readFile(join(PROJECT, 'package-lock.json'), 'utf8')) as {
    packages: Record<string, { version?: string }>;
  };
  const version = lock.packages[`node_modules/${name}`]?.version;
  if (!version) throw new Error(`${name} is not in package-lock.json`);
  return version;
}

let packed: Promise<string> | undefined;

/** `npm pack` of the project (once per process), as a published tarball's path. */
export function packProject(): Promise<string> {
  packed ??= withLock(async () => {
    const destination = await mkdtemp(join(tmpdir(), 'pg-sessions-pack-'));
    process.once('exit', () => rmSync(destination, { recursive: true, force: true }));
    await npm(['pack', '--pack-destination', destination], PROJECT);
    const tarball = (await readdir(destination)).find((file) => file.endsWith('.tgz'));
    if (!tarball) throw new Error(`npm pack left no tarball in ${destination}`);
    return join(destination, tarball);
  });
  return packed;
}

/**
 * Installs the packed project into a fresh folder, as a user's `npm install pg-sessions`
 * would, with `extraDeps` beside it: names (at the version of our lock file) or
 * `name@version`. Returns the folder (an ESM package, `"type": "module"`); the caller
 * removes it. npm prefers its cache, so this needs no network when the cache is warm.
 */
export async function packAndInstall(extraDeps: readonly string[] = []): Promise<string> {
  const tarball = await packProject();
  const dir = await mkdtemp(join(tmpdir(), 'pg-sessions-consumer-'));
  await writeFile(
    join(dir, 'package.json'),
    `${JSON.stringify({ name: 'consumer', private: true, type: 'module' }, null, 2)}\n`,
  );
  const specs = await Promise.all(
    extraDeps.map(async (dep) =>
      dep.lastIndexOf('@') > 0 ? dep : `${dep}@${await lockedVersion(dep)}`,
    ),
  );
  await npm(['install', '--prefer-offline', '--no-audit', '--no-fund', tarball, ...specs], dir);
  return dir;
}

async function npm(args: readonly string[], cwd: string): Promise<string> {
  try {
    const { stdout } = await execFileAsync('npm', args, {
      cwd,
      maxBuffer: 16 * 1024 * 1024,
      // A parent `npm test` passes its configuration down; the user's npm would not have it.
      env: Object.fromEntries(
        Object.entries(process.env).filter(([key]) => !/^npm_/i.test(key)),
      ) as NodeJS.ProcessEnv,
    });
    return stdout;
  } catch (error) {
    const failure = error as { stderr?: string; message: string };
    throw new Error(`npm ${args.join(' ')} failed in ${cwd}: ${failure.stderr || failure.message}`);
  }
}

async function withLock<T>(work: () => Promise<T>): Promise<T> {
  const deadline = Date.now() + 120_000;
  for (;;) {
    try {
      await mkdir(PACK_LOCK);
      break;
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error;
      // A lock left by a process that died mid-pack is stale after two minutes.
      const since = await stat(PACK_LOCK).then(
        (info) => Date.now() - info.mtimeMs,
        () => 0,
      );
      if (since > 120_000) await rm(PACK_LOCK, { recursive: true, force: true });
      if (Date.now() > deadline) throw new Error(`${PACK_LOCK} is held for too long`);
      await new Promise((resolve) => setTimeout(resolve, 200));
    }
  }
  try {
    return await work();
  } finally {
    await rm(PACK_LOCK, { recursive: true, force: true });
  }
}
