// The database's own ceiling for session writes, measured beside the HTTP cells.
// `connections` concurrent writers in this process (one pool connection each) change
// one key of one of `sessions` live sessions at a time, through the store and the pool
// runner the middleware uses, with no HTTP, Koa or cache in between. Three kinds of the
// same one-row UPDATE, interleaved round after round on the same server:
//   deferred   the middleware's own statement: tenant and actor settings, the UPDATE
//              with its version and event triggers, COMMIT, the commit LSN, then
//              `sessions.notify_deferred()` in the same message;
//   in-commit  the same UPDATE notifying inside its commit, as hand-written SQL, the CLI
//              and every security-relevant change do (it asks for no deferral);
//   no-notify  the same message on a database whose notify_changes() sends nothing: what
//              the UPDATE costs without any notification at all.
// With PostgreSQL's statistics for each cell: WAL fsyncs per write and the share of the
// writers' sampled time spent waiting on Lock:object (the NOTIFY commit lock).
import { randomBytes } from 'node:crypto';
import pg from 'pg';
import { SessionEngine } from '../src/engine.js';
import { resolveOptions } from '../src/options/resolve.js';
import type { SessionRecord } from '../src/store/records.js';
import type { TestDatabase } from '../src/testing/index.js';
import { hashToken } from '../src/token.js';
import { DbProbe } from './db-probe.js';

export interface WriteCeilingSettings {
  readonly sessions: number;
  readonly connections: number;
  /** Measured seconds, after `warmupSeconds`; or a fixed number of writes (smoke). */
  readonly durationSeconds: number;
  readonly warmupSeconds: number;
  readonly amount?: number;
  /** Rounds of the three cells, interleaved. */
  readonly rounds: number;
}

export const CEILING_KINDS = ['deferred', 'in-commit', 'no-notify'] as const;
export type CeilingKind = (typeof CEILING_KINDS)[number];

export interface CeilingCell {
  readonly kind: CeilingKind;
  readonly round: number;
  readonly writesPerSecond: number;
  readonly writes: number;
  readonly latencyMs: { readonly p50: number; readonly p99: number };
  /** Writes that matched no row: must be 0, or the number means nothing. */
  readonly lost: number;
  readonly fsyncsPerWrite: number;
  /** Share of the writers' sampled active time spent waiting on Lock:object. */
  readonly lockObjectShare: number;
}

export interface WriteCeiling {
  readonly cells: readonly CeilingCell[];
}

const TENANT = 'bench';

/** A fresh database of the same schema whose triggers notify nobody. */
async function silence(database: TestDatabase): Promise<void> {
  const client = new pg.Client(database.url);
  await client.connect();
  try {
    await client.query(
      'CREATE OR REPLACE FUNCTION sessions.notify_changes(op text, entries jsonb) RETURNS void LANGUAGE sql AS $$ SELECT $$',
    );
  } finally {
    await client.end();
  }
}

interface Writer {
  readonly engine: SessionEngine;
  readonly sessions: SessionRecord[];
  readonly probe: DbProbe;
}

async function writer(
  settings: WriteCeilingSettings,
  database: TestDatabase,
  smoke: boolean,
): Promise<Writer> {
  // The middleware's defaults (timeouts, expiry), without the cache and GC, with one
  // connection per writer.
  const engine = new SessionEngine(
    resolveOptions({
      database: database.appUrl,
      cache: false,
      gc: false,
      poolSize: settings.connections,
    }),
  );
  await engine.start();
  const store = engine.store(TENANT);
  const sessions: SessionRecord[] = [];
  for (let index = 0; index < settings.sessions; index++) {
    const tokenHash = hashToken(randomBytes(32).toString('base64url'));
    const { record } = await store.create({
      tokenHash,
      data: { user: `user-${index}`, visits: 0 },
      userId: null,
      origin: { ip: null, userAgent: null },
      actor: 'bench:ceiling',
    });
    sessions.push(record);
  }
  return { engine, sessions, probe: await DbProbe.open(database.url, !smoke) };
}

export async function runWriteCeiling(
  settings: WriteCeilingSettings,
  databases: { create(): Promise<TestDatabase> },
  smoke: boolean,
): Promise<WriteCeiling> {
  const normal = await databases.create();
  const silent = await databases.create();
  const writers: Writer[] = [];
  try {
    await silence(silent);
    const onNormal = await writer(settings, normal, smoke);
    writers.push(onNormal);
    const onSilent = await writer(settings, silent, smoke);
    writers.push(onSilent);
    const cells: CeilingCell[] = [];
    for (let round = 1; round <= settings.rounds; round++) {
      for (const kind of CEILING_KINDS) {
        const target = kind === 'no-notify' ? onSilent : onNormal;
        cells.push(await measureCell(settings, target, kind, round));
      }
    }
    return { cells };
  } finally {
    for (const { engine, probe } of writers) {
      await probe.close();
      await engine.close();
    }
    await normal.drop();
    await silent.drop();
  }
}

async function measureCell(
  settings: WriteCeilingSettings,
  { engine, sessions, probe }: Writer,
  kind: CeilingKind,
  round: number,
): Promise<CeilingCell> {
  const store = engine.store(TENANT);
  let sequence = 0;
  let lost = 0;
  const writeOne = async (): Promise<number> => {
    const session = sessions[Math.floor(Math.random() * sessions.length)]!;
    const value = ++sequence;
    const started = performance.now();
    const { saved } = await store.save({
      loaded: session,
      patch: { [`k${value % 4}`]: value },
      removed: [],
      actor: 'bench:ceiling',
      // A revocation-free write that notifies inside its commit: the user binding of a
      // sign-in did before migration 6; now only what must be refused at once does.
      ...(kind === 'in-commit' ? { userId: `user-${value}` } : {}),
    });
    if (!saved) lost++;
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
  await probe.begin();
  const { latencies, seconds } =
    settings.amount === undefined
      ? await run(performance.now() + settings.durationSeconds * 1000, Number.POSITIVE_INFINITY)
      : await run(Number.POSITIVE_INFINITY, settings.amount);
  const activity = await probe.end();
  latencies.sort((x, y) => x - y);
  const at = (share: number) =>
    latencies[Math.min(latencies.length - 1, Math.floor(latencies.length * share))] ?? Number.NaN;
  return {
    kind,
    round,
    writesPerSecond: latencies.length / seconds,
    writes: latencies.length,
    latencyMs: { p50: at(0.5), p99: at(0.99) },
    lost,
    fsyncsPerWrite: latencies.length > 0 ? activity.walFsyncs / latencies.length : Number.NaN,
    lockObjectShare: activity.lockObjectShare,
  };
}
