// Notification-to-eviction latency between two processes. Process A (this one, the
// runner) changes sessions as the application role: with plain SQL it updates one,
// revokes the next, deletes the third, each in its own transaction (notifying inside
// the commit); the fourth it changes through the middleware's own store, whose data
// write notifies from the statement after its COMMIT, in the same message (deferred). Process B
// (bench/eviction-probe.ts) caches those sessions and reports when its listener
// applied the notification. The latency runs from the moment A sends COMMIT to the
// moment B's cache has evicted the entry, both read from `performance.timeOrigin +
// performance.now()` (one machine, one clock). Then B's next request must see the
// change: the new value, or no session at all.
import pg from 'pg';
import { SessionEngine } from '../src/engine.js';
import { resolveOptions } from '../src/options/resolve.js';
import type { SessionRecord } from '../src/store/records.js';
import type { TestDatabase } from '../src/testing/index.js';
import { Child, type Message } from './child.js';
import type { Applied } from './eviction-probe.js';

export interface NotifySettings {
  readonly samples: number;
}

const OPERATIONS = ['update', 'revoke', 'delete', 'deferred'] as const;
type Operation = (typeof OPERATIONS)[number];

export interface Distribution {
  readonly median: number;
  readonly p90: number;
  readonly p99: number;
  readonly max: number;
}

export interface NotifyResult {
  readonly samples: number;
  /** From A sending COMMIT to B's cache having evicted the entry, in ms. */
  readonly latencyMs: Distribution;
  /** Per operation, the same latency. */
  readonly byOperation: Readonly<Record<Operation, Distribution>>;
  /** A's COMMIT round trip, for scale: the commit itself is part of the latency. */
  readonly commitRoundTripMs: Distribution;
  /** Samples whose notification did not evict a cached entry in B (should be 0). */
  readonly notEvicted: number;
  /** Samples where B's next request still saw the old session (must be 0). */
  readonly staleReads: number;
}

interface Sample {
  readonly operation: Operation;
  readonly latencyMs: number;
  readonly commitMs: number;
}

const clock = () => performance.timeOrigin + performance.now();

export async function runNotifyLatency(
  settings: NotifySettings,
  database: TestDatabase,
): Promise<NotifyResult> {
  const probe = Child.start('./eviction-probe.ts', { env: { DATABASE_URL: database.appUrl } });
  const a = new pg.Client({ connectionString: database.appUrl, application_name: 'bench:A' });
  await a.connect();
  const engine = new SessionEngine(
    resolveOptions({ database: database.appUrl, cache: false, gc: false }),
  );
  await engine.start();
  const store = engine.store('default');
  try {
    const { port } = await probe.next<Message & { port: number }>('ready');
    const url = `http://127.0.0.1:${port}`;
    const sessions = await createSessions(url, settings.samples);
    const samples: Sample[] = [];
    let notEvicted = 0;
    let staleReads = 0;
    for (const [index, session] of sessions.entries()) {
      const operation = OPERATIONS[index % OPERATIONS.length] ?? 'update';
      const applied = waitForChange(probe, session.id, operation);
      applied.catch(() => {}); // awaited below; a failure before that must not go unhandled
      if (operation === 'deferred') {
        const committing = clock();
        const { saved } = await store.save({
          loaded: { id: session.id, version: 0 } as SessionRecord,
          patch: { bumped: index },
          removed: [],
          actor: 'bench:A',
        });
        if (!saved) throw new Error(`the deferred write of ${session.id} matched no row`);
        const committed = clock();
        const evicted = await applied;
        samples.push({
          operation,
          latencyMs: evicted.at - committing,
          commitMs: committed - committing,
        });
        if (!evicted.evicted) notEvicted++;
        const next = await fetch(`${url}/read`, { headers: { cookie: session.cookie } });
        const body = (await next.json().catch(() => undefined)) as { bumped?: unknown } | undefined;
        if (body?.bumped !== index) staleReads++;
        continue;
      }
      await a.query('BEGIN');
      await a.query(
        `SELECT set_config('sessions.tenant', 'default', true), set_config('sessions.actor', 'bench:A', true)`,
      );
      const changed = await a.query(statement(operation, session.id, index));
      if (changed.rowCount !== 1) throw new Error(`${operation} of ${session.id} matched no row`);
      const committing = clock();
      await a.query('COMMIT');
      const committed = clock();
      const evicted = await applied;
      samples.push({
        operation,
        latencyMs: evicted.at - committing,
        commitMs: committed - committing,
      });
      if (!evicted.evicted) notEvicted++;
      const next = await fetch(`${url}/read`, { headers: { cookie: session.cookie } });
      const body = (await next.json().catch(() => undefined)) as { bumped?: unknown } | undefined;
      const seesChange = operation === 'update' ? body?.bumped === index : next.status === 401;
      if (!seesChange) staleReads++;
    }
    const distribution = (values: number[]) => summarize(values);
    return {
      samples: samples.length,
      latencyMs: distribution(samples.map((sample) => sample.latencyMs)),
      byOperation: Object.fromEntries(
        OPERATIONS.map((operation) => [
          operation,
          distribution(
            samples
              .filter((sample) => sample.operation === operation)
              .map((sample) => sample.latencyMs),
          ),
        ]),
      ) as Record<Operation, Distribution>,
      commitRoundTripMs: distribution(samples.map((sample) => sample.commitMs)),
      notEvicted,
      staleReads,
    };
  } finally {
    await a.end();
    await engine.close();
    await probe.stop();
  }
}

/** A's change: the statement the application, the CLI or an operator would run. */
function statement(
  operation: Exclude<Operation, 'deferred'>,
  id: string,
  index: number,
): pg.QueryConfig {
  switch (operation) {
    case 'update':
      return {
        text: `UPDATE sessions.session SET data = data || jsonb_build_object('bumped', $2::int) WHERE id = $1`,
        values: [id, index],
      };
    case 'revoke':
      return {
        text: `UPDATE sessions.session SET revoked_at = now(), revoked_reason = 'benchmark' WHERE id = $1`,
        values: [id],
      };
    case 'delete':
      return { text: 'DELETE FROM sessions.session WHERE id = $1', values: [id] };
  }
}

/** The notification B applied for this session's change (not an earlier one about it). */
async function waitForChange(probe: Child, id: string, operation: Operation): Promise<Applied> {
  for (;;) {
    const applied = await probe.next<Applied>(`applied:${id}`, 10_000);
    if (operation === 'delete' ? applied.op === 'delete' : applied.version > 1) return applied;
  }
}

/** Sessions created in B (which caches them as it writes them), with their public ids. */
async function createSessions(url: string, count: number) {
  const sessions: { cookie: string; id: string }[] = [];
  const parallel = 16;
  for (let start = 0; start < count; start += parallel) {
    const batch = await Promise.all(
      Array.from({ length: Math.min(parallel, count - start) }, async () => {
        const login = await fetch(`${url}/login`, { method: 'POST' });
        await login.text();
        const cookie = login.headers
          .getSetCookie()
          .map((line) => line.split(';')[0])
          .join('; ');
        const read = await fetch(`${url}/read`, { headers: { cookie } });
        const { id } = (await read.json()) as { id: string };
        if (!read.ok || typeof id !== 'string') throw new Error('the probe lost a new session');
        return { cookie, id };
      }),
    );
    sessions.push(...batch);
  }
  return sessions;
}

export function summarize(values: readonly number[]): Distribution {
  const sorted = [...values].sort((x, y) => x - y);
  const at = (share: number) =>
    sorted[Math.min(sorted.length - 1, Math.ceil(share * sorted.length) - 1)] ?? Number.NaN;
  return { median: at(0.5), p90: at(0.9), p99: at(0.99), max: sorted.at(-1) ?? Number.NaN };
}
