import { access, readdir } from 'node:fs/promises';
import { join } from 'node:path';

/** Debian's PostgreSQL binaries for Patroni and PgBouncer: PG_BIN_DIR, else the newest installed. */
export async function debianPostgresBin(): Promise<string> {
  if (process.env.PG_BIN_DIR) return process.env.PG_BIN_DIR;
  const root = '/usr/lib/postgresql';
  const versions = (await readdir(root).catch(() => []))
    .filter((name) => /^\d+$/.test(name))
    .sort((a, b) => Number(b) - Number(a));
  for (const version of versions) {
    const bin = join(root, version, 'bin');
    const ok = await Promise.all(
      ['postgres', 'initdb', 'pg_rewind'].map((tool) =>
        access(join(bin, tool)).then(
          () => true,
          () => false,
        ),
      ),
    );
    if (ok.every(Boolean)) return bin;
  }
  throw new Error(`no PostgreSQL binaries under ${root}: apt-get install postgresql`);
}
