import {
  type Compilable,
  type CompiledQuery,
  DummyDriver,
  Kysely,
  PostgresAdapter,
  PostgresIntrospector,
  PostgresQueryCompiler,
  type Transaction,
} from 'kysely';
import pg from 'pg';
import { checkout } from './checkout.js';
import type { SessionsDatabase } from './schema.js';
import { endsConnection } from './sqlstate.js';

/**
 * Builds queries without executing them. Statements are compiled with Kysely and
 * sent by a {@link StatementRunner}, which folds the tenant and actor settings and,
 * for writes, the commit and the commit LSN into the same round trip.
 */
export const queryBuilder = new Kysely<SessionsDatabase>({
  dialect: {
    createAdapter: () => new PostgresAdapter(),
    createDriver: () => new DummyDriver(),
    createIntrospector: (db) => new PostgresIntrospector(db),
    createQueryCompiler: () => new PostgresQueryCompiler(),
  },
});

/** Who runs a statement: the tenant row-level security sees, the actor the event log records. */
export interface Scope {
  readonly tenant: string;
  readonly actor: string;
}

export interface StatementResult<Row> {
  readonly rows: Row[];
  /** The read was served by a replica (it may lag: the caller can verify and re-read). */
  readonly fromReplica?: boolean;
  /** For writes on a pool: the primary's WAL position after the commit (`pg_current_wal_lsn()`). */
  readonly fence?: string;
}

/** Counts database round trips, for metrics and for tests that prove a cache hit costs none. */
export interface RoundTripCounter {
  roundTrip(): void;
}

/** Runs compiled statements for one scope: on a pool (one round trip each) or in a transaction. */
export interface StatementRunner {
  read<Row>(query: Compilable<Row> | CompiledQuery<Row>): Promise<StatementResult<Row>>;
  /**
   * A read that must see the newest data: always on the primary. `staleReplica`: it
   * replaces a replica's answer that was older than the client's fence (for the counters).
   */
  readPrimary<Row>(
    query: Compilable<Row> | CompiledQuery<Row>,
    options?: { staleReplica?: boolean },
  ): Promise<StatementResult<Row>>;
  write<Row>(query: Compilable<Row> | CompiledQuery<Row>): Promise<StatementResult<Row>>;
}

function compile<Row>(query: Compilable<Row> | CompiledQuery<Row>): CompiledQuery<Row> {
  return 'compile' in query ? query.compile() : query;
}

/**
 * One round trip per statement on a pool. The statement travels as a simple-protocol
 * query with its parameters inlined as literals, after the transaction-local settings:
 *
 *   read:  SELECT set_config(tenant), set_config(actor); <statement>
 *   write: BEGIN; SELECT set_config(…); <statement>; COMMIT; SELECT pg_current_wal_lsn()
 *
 * A simple query runs its statements in one transaction, so row-level security sees
 * the tenant, and nothing leaks to the next user of the pooled connection.
 */
export class PoolRunner implements StatementRunner {
  constructor(
    private readonly readPool: () => pg.Pool,
    private readonly writePool: () => pg.Pool,
    private readonly scope: Scope | (() => Scope),
    private readonly counter?: RoundTripCounter,
    /** The primary's pool for a read that replaces a stale replica answer (the router counts it). */
    private readonly stalePool: () => pg.Pool = writePool,
  ) {}

  private currentScope(): Scope {
    return typeof this.scope === 'function' ? this.scope() : this.scope;
  }

  async read<Row>(query: Compilable<Row> | CompiledQuery<Row>): Promise<StatementResult<Row>> {
    return this.readOn(this.readPool(), query);
  }

  async readPrimary<Row>(
    query: Compilable<Row> | CompiledQuery<Row>,
    options: { staleReplica?: boolean } = {},
  ): Promise<StatementResult<Row>> {
    return this.readOn(options.staleReplica ? this.stalePool() : this.writePool(), query);
  }

  private async readOn<Row>(
    pool: pg.Pool,
    query: Compilable<Row> | CompiledQuery<Row>,
  ): Promise<StatementResult<Row>> {
    const text = `${settingsStatement(this.currentScope())}; ${inlineParameters(compile(query))}`;
    const results = await this.send(pool, text, false);
    return { rows: (results[1]?.rows ?? []) as Row[], fromReplica: pool !== this.writePool() };
  }

  async write<Row>(query: Compilable<Row> | CompiledQuery<Row>): Promise<StatementResult<Row>> {
    const text = `BEGIN; ${settingsStatement(this.currentScope())}; ${inlineParameters(compile(query))}; COMMIT; SELECT pg_current_wal_lsn()::text AS lsn`;
    const results = await this.send(this.writePool(), text, true);
    const fence = results[4]?.rows[0]?.lsn as string | undefined;
    return { rows: (results[2]?.rows ?? []) as Row[], fence };
  }

  private async send(pool: pg.Pool, text: string, explicitTransaction: boolean) {
    const client = await checkout(pool);
    this.counter?.roundTrip();
    try {
      const results = (await client.query(text)) as unknown as pg.QueryResult[];
      client.release();
      return results;
    } catch (error) {
      // A failed statement leaves an explicit transaction open and aborted: end it
      // before the connection goes back to the pool, or drop the connection.
      let broken = endsConnection(error) ? (error as Error) : undefined;
      if (explicitTransaction && !broken) {
        broken = await client.query('ROLLBACK').then(
          () => undefined,
          (rollbackError: Error) => rollbackError,
        );
      }
      client.release(broken);
      throw error;
    }
  }
}

/** Runs statements inside an open Kysely transaction whose settings were applied at its start. */
export class TransactionRunner implements StatementRunner {
  constructor(
    readonly transaction: Transaction<SessionsDatabase>,
    private readonly counter?: RoundTripCounter,
  ) {}

  async read<Row>(query: Compilable<Row> | CompiledQuery<Row>): Promise<StatementResult<Row>> {
    this.counter?.roundTrip();
    const result = await this.transaction.executeQuery(compile(query));
    return { rows: result.rows as Row[] };
  }

  write<Row>(query: Compilable<Row> | CompiledQuery<Row>): Promise<StatementResult<Row>> {
    return this.read(query);
  }

  readPrimary<Row>(query: Compilable<Row> | CompiledQuery<Row>): Promise<StatementResult<Row>> {
    return this.read(query);
  }
}

/** `SELECT set_config(...)` for the tenant and the actor, transaction-local. */
export function settingsStatement(scope: Scope): string {
  return `SELECT set_config('sessions.tenant', ${pg.escapeLiteral(scope.tenant)}, true), set_config('sessions.actor', ${pg.escapeLiteral(scope.actor)}, true)`;
}

/**
 * Replaces `$n` placeholders by SQL literals. Values are quoted with node-postgres'
 * `escapeLiteral` and left untyped, exactly as an untyped bind parameter would be,
 * so the server infers the same types. Kysely never puts `$n` inside literals of
 * our statements, which are all built by the store.
 */
export function inlineParameters(query: CompiledQuery<unknown>): string {
  return query.sql.replace(/\$(\d+)/g, (_, position: string) => {
    const index = Number(position) - 1;
    if (index < 0 || index >= query.parameters.length) {
      throw new Error(`statement refers to parameter $${position}, which was not given`);
    }
    return literal(query.parameters[index]);
  });
}

function literal(value: unknown): string {
  if (value === null || value === undefined) return 'NULL';
  if (typeof value === 'number') {
    if (!Number.isFinite(value)) throw new Error(`cannot send the number ${value}`);
    return `'${value}'`;
  }
  if (typeof value === 'bigint' || typeof value === 'boolean') return `'${value}'`;
  if (typeof value === 'string') return pg.escapeLiteral(value);
  // E'' keeps the backslash meaning the same whatever standard_conforming_strings says.
  if (Buffer.isBuffer(value)) return `E'\\\\x${value.toString('hex')}'`;
  if (value instanceof Date) return pg.escapeLiteral(value.toISOString());
  if (Array.isArray(value)) {
    return pg.escapeLiteral(`{${value.map((item) => arrayElement(item)).join(',')}}`);
  }
  return pg.escapeLiteral(JSON.stringify(value));
}

function arrayElement(value: unknown): string {
  if (value === null || value === undefined) return 'NULL';
  return `"${String(value).replaceAll('\\', '\\\\').replaceAll('"', '\\"')}"`;
}
