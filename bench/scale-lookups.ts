// Session lookups without HTTP, as the middleware sends them (one simple-protocol
// message: the tenant's settings and the SELECT with its values inlined), from a few
// concurrent connections. Measures the statement the store builds today (a call of
// sessions.lookup_session, whose statements PL/pgSQL plans once per connection) and,
// for comparison, a lookup spelled as before issue 18, its liveness condition
// `expires_at > now()`, planned afresh each time: the one whose planning read the
// expiry index's end.
import { type Compilable, type CompiledQuery, sql } from 'kysely';
import pg from 'pg';
import {
  inlineParameters,
  queryBuilder,
  type StatementResult,
  type StatementRunner,
  settingsStatement,
} from '../src/db/runner.js';
import { SessionStore } from '../src/store/session-store.js';

export const LOOKUP_STATEMENTS = ['store', 'expires_at > now()'] as const;
export type LookupStatement = (typeof LOOKUP_STATEMENTS)[number];

/** A live session to look up: its tenant and token hash. */
export interface PresentedToken {
  readonly tenant: string;
  readonly tokenHash: Buffer;
}

export interface LookupRate {
  readonly statement: LookupStatement;
  readonly lookups: number;
  readonly perSecond: number;
  readonly p99Ms: number;
  /**
   * Shared buffers read to plan and run one lookup (EXPLAIN ANALYZE, BUFFERS; the smallest
   * of three): a function plans its statements while it runs, so both are counted.
   */
  readonly planningBuffers: number;
  /** Planning and execution time of that lookup, ms. */
  readonly planningMs: number;
  /** Lookups that found no live row (should be 0). */
  readonly misses: number;
}

const POLICY = {
  idleTimeoutMs: 86_400_000,
  absoluteTimeoutMs: 7 * 86_400_000,
  touchIntervalMs: 60_000,
  rotationGraceMs: 60_000,
};

/** Captures the statement the store would send, without sending it. */
class CapturingRunner implements StatementRunner {
  text = '';
  async read<Row>(query: Compilable<Row> | CompiledQuery<Row>): Promise<StatementResult<Row>> {
    this.text = inlineParameters('compile' in query ? query.compile() : query);
    return { rows: [] };
  }
  readPrimary<Row>(query: Compilable<Row> | CompiledQuery<Row>) {
    return this.read(query);
  }
  write<Row>(query: Compilable<Row> | CompiledQuery<Row>) {
    return this.read(query);
  }
}

/** The lookup's SQL for a token, as the store builds it or in its old spelling. */
export async function lookupSql(token: PresentedToken, statement: LookupStatement) {
  const runner = new CapturingRunner();
  await new SessionStore(runner, token.tenant, POLICY).load(token.tokenHash);
  if (statement === 'store') return runner.text;
  // The lookup as the store wrote it before issue 18, planned with every request.
  return inlineParameters(
    queryBuilder
      .selectFrom('sessions.session')
      .selectAll()
      .where('tenant_id', '=', token.tenant)
      .where('token_hash', '=', token.tokenHash)
      .where(sql<boolean>`revoked_at IS NULL AND expires_at > now()`)
      .compile(),
  );
}

/**
 * `connections` clients look up random tokens for `seconds` (or `amount` lookups in
 * all), on the app's role (row-level security applies, as for the middleware).
 */
export async function measureLookups(
  appUrl: string,
  adminUrl: string,
  tokens: readonly PresentedToken[],
  statement: LookupStatement,
  options: { connections: number; seconds: number; amount?: number },
): Promise<LookupRate> {
  const texts = await Promise.all(
    tokens.map(async (token) => ({
      settings: settingsStatement(token.tenant, 'bench'),
      select: await lookupSql(token, statement),
    })),
  );
  const planning = await planningCost(adminUrl, texts[0]?.select ?? '');
  const pool = new pg.Pool({ connectionString: appUrl, max: options.connections });
  pool.on('error', () => {});
  const latencies: number[] = [];
  let misses = 0;
  const deadline = performance.now() + options.seconds * 1000;
  let remaining = options.amount ?? Number.POSITIVE_INFINITY;
  const began = performance.now();
  try {
    await Promise.all(
      Array.from({ length: options.connections }, async () => {
        const client = await pool.connect();
        try {
          while (performance.now() < deadline && remaining-- > 0) {
            const text = texts[Math.floor(Math.random() * texts.length)];
            if (!text) break;
            const started = performance.now();
            const results = (await client.query(
              `${text.settings}; ${text.select}`,
            )) as unknown as pg.QueryResult[];
            latencies.push(performance.now() - started);
            if ((results[1]?.rows.length ?? 0) === 0) misses++;
          }
        } finally {
          client.release();
        }
      }),
    );
  } finally {
    await pool.end();
  }
  const elapsed = (performance.now() - began) / 1000;
  latencies.sort((a, b) => a - b);
  return {
    statement,
    lookups: latencies.length,
    perSecond: latencies.length / elapsed,
    p99Ms: latencies[Math.min(latencies.length - 1, Math.floor(latencies.length * 0.99))] ?? 0,
    planningBuffers: planning.buffers,
    planningMs: planning.ms,
    misses,
  };
}

/** Planning and running one lookup: the cheapest of three EXPLAINs (the first loads caches). */
async function planningCost(adminUrl: string, select: string) {
  const client = new pg.Client(adminUrl);
  await client.connect();
  try {
    let best = { buffers: Number.POSITIVE_INFINITY, ms: Number.POSITIVE_INFINITY };
    for (let run = 0; run < 3; run++) {
      const { rows } = await client.query(`EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) ${select}`);
      const [root] = rows[0]['QUERY PLAN'] as [
        {
          Plan: Record<string, number>;
          Planning?: Record<string, number>;
          'Planning Time': number;
          'Execution Time': number;
        },
      ];
      const blocks = (counts: Record<string, number> | undefined) =>
        (counts?.['Shared Hit Blocks'] ?? 0) + (counts?.['Shared Read Blocks'] ?? 0);
      const buffers = blocks(root.Planning) + blocks(root.Plan);
      const ms = root['Planning Time'] + root['Execution Time'];
      if (buffers < best.buffers || (buffers === best.buffers && ms < best.ms)) {
        best = { buffers, ms };
      }
    }
    return best;
  } finally {
    await client.end();
  }
}
