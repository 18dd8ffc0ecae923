import { readFileSync } from 'node:fs';

/**
 * The package's version, read from its package.json at run time: the same from the
 * sources (src/cli) and from the compiled code (dist/src/cli), which sit at different
 * depths below it.
 */
export function packageVersion(): string {
  for (const relative of ['../../package.json', '../../../package.json']) {
    try {
      const manifest = JSON.parse(readFileSync(new URL(relative, import.meta.url), 'utf8')) as {
        name?: string;
        version?: string;
      };
      if (manifest.name === 'pg-sessions' && manifest.version) return manifest.version;
    } catch {
      // Not this level: try the next one up.
    }
  }
  return 'unknown';
}
