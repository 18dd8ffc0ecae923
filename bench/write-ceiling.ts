// The database's own ceiling for session writes, measured beside the HTTP cells.
// `connections` concurrent writers in this process change one key of one of
// `sessions` live sessions at a time, through the store and the pool runner the
// middleware uses (so the very statement: tenant and actor settings, the UPDATE with
// its version, event and NOTIFY triggers, COMMIT, the commit LSN), on the engine the
// middleware builds from its default options, with no HTTP, Koa or cache in between. A session layer
// that commits every change durably cannot write faster than this on the same
// machine: with a share w of requests writing, it cannot serve more than ceiling / w
// requests per second, however cheap its reads.
import { randomBytes } from 'node:crypto';
import { SessionEngine } from '../src/engine.js';
import { resolveOptions } from '../src/options.js';
import type { SessionRecord } from '../src/store.js';
import type { TestDatabase } from '../src/testing/index.js';
import { hashToken } from '../src/token.js';

export interface WriteCeilingSettings {
  readonly sessions: number;
  readonly connections: number;
  /** Measured seconds, after `warmupSeconds`; or a fixed number of writes (smoke). */
  readonly durationSeconds: number;
  readonly warmupSeconds: number;
  readonly amount?: number;
}

export interface WriteCeiling {
  readonly writesPerSecond: number;
  readonly writes: number;
  readonly latencyMs: { readonly p50: number; readonly p99: number };
  /** Writes that matched no row: must be 0, or the number means nothing. */
  readonly lost: number;
}

const TENANT = 'bench';

export async function runWriteCeiling(
  settings: WriteCeilingSettings,
  database: TestDatabase,
): Promise<WriteCeiling> {
  // The middleware's defaults (pool size, timeouts, expiry), without the cache and GC.
  const engine = new SessionEngine(
    resolveOptions({ database: database.appUrl, cache: false, gc: false }),
  );
  await engine.start();
  try {
    const { store } = engine;
    const runner = engine.runner({ tenant: TENANT, actor: 'bench:ceiling' });
    const sessions: SessionRecord[] = [];
    for (let index = 0; index < settings.sessions; index++) {
      const tokenHash = hashToken(randomBytes(32).toString('base64url'));
      const { record } = await store.create(runner, {
        tenantId: TENANT,
        tokenHash,
        data: { user: `user-${index}`, visits: 0 },
        userId: null,
        ip: null,
        userAgent: null,
      });
      sessions.push(record);
    }

    let sequence = 0;
    let lost = 0;
    const writeOne = async (): Promise<number> => {
      const session = sessions[Math.floor(Math.random() * sessions.length)]!;
      const value = ++sequence;
      const started = performance.now();
      const { record } = await store.saveDelta(runner, {
        tenantId: TENANT,
        id: session.id,
        patch: { [`k${value % 4}`]: value },
        removed: [],
      });
      if (!record) lost++;
      return performance.now() - started;
    };
    const run = async (until: number, budget: number) => {
      const latencies: number[] = [];
      let started = 0;
      const worker = async () => {
        while (performance.now() < until && started < budget) {
          started++;
          latencies.push(await writeOne());
        }
      };
      const began = performance.now();
      await Promise.all(Array.from({ length: settings.connections }, worker));
      return { latencies, seconds: (performance.now() - began) / 1000 };
    };

    if (settings.amount === undefined && settings.warmupSeconds > 0) {
      await run(performance.now() + settings.warmupSeconds * 1000, Number.POSITIVE_INFINITY);
    }
    lost = 0;
    const { latencies, seconds } =
      settings.amount === undefined
        ? await run(performance.now() + settings.durationSeconds * 1000, Number.POSITIVE_INFINITY)
        : await run(Number.POSITIVE_INFINITY, settings.amount);
    latencies.sort((x, y) => x - y);
    const at = (share: number) =>
      latencies[Math.min(latencies.length - 1, Math.floor(latencies.length * share))] ?? Number.NaN;
    return {
      writesPerSecond: latencies.length / seconds,
      writes: latencies.length,
      latencyMs: { p50: at(0.5), p99: at(0.99) },
      lost,
    };
  } finally {
    await engine.close();
  }
}
