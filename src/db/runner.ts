import {
  type Compilable,
  CompiledQuery,
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
  /**
   * A write in its own transaction (or the request's). `notifyAfterCommit`: the statement
   * deferred its notifications (`sessions.defer_notify`), so a pool write sends them
   * right after its COMMIT, in the same message; in a request transaction the commit
   * does (see {@link RequestTransactionDriver}).
   */
  write<Row>(
    query: Compilable<Row> | CompiledQuery<Row>,
    options?: WriteOptions,
  ): Promise<StatementResult<Row>>;
}

export interface WriteOptions {
  readonly notifyAfterCommit?: boolean;
}

/**
 * Told when a write committed but its deferred notifications could not be sent: the
 * write stands (it is acknowledged), other nodes may keep a stale copy a little longer.
 */
export type NotifyFailureHandler = (error: unknown) => void;

/**
 * The statement that sends a transaction's deferred notifications. It follows the
 * COMMIT in the same simple-protocol message, so the server has it even if the client
 * dies right after sending, and PgBouncer (transaction pooling) keeps both on one
 * server connection: ReadyForQuery comes once, at the end of the message.
 */
export const NOTIFY_DEFERRED = 'sessions.notify_deferred()';

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
    private readonly notifyFailed: NotifyFailureHandler = () => {},
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

  /**
   * `BEGIN; settings; <statement>; COMMIT; SELECT lsn[, notify_deferred()]`: the row
   * after the COMMIT proves the commit, so an error that follows it (the deferred
   * notification's own commit failing) leaves the write acknowledged.
   */
  async write<Row>(
    query: Compilable<Row> | CompiledQuery<Row>,
    options: WriteOptions = {},
  ): Promise<StatementResult<Row>> {
    const flush = options.notifyAfterCommit ? `; SELECT ${NOTIFY_DEFERRED} AS notified` : '';
    const text = `BEGIN; ${settingsStatement(this.currentScope())}; ${inlineParameters(compile(query))}; COMMIT; SELECT pg_current_wal_lsn()::text AS lsn${flush}`;
    const client = await checkout(this.writePool());
    this.counter?.roundTrip();
    let reply: CommitReply;
    try {
      reply = await sendThroughCommit(client, text, 'lsn');
    } catch (error) {
      // A failed statement leaves an explicit transaction open and aborted: end it
      // before the connection goes back to the pool, or drop the connection.
      let broken = endsConnection(error) ? (error as Error) : undefined;
      if (!broken) {
        broken = await client.query('ROLLBACK').then(
          () => undefined,
          (rollbackError: Error) => rollbackError,
        );
      }
      client.release(broken);
      throw error;
    }
    const { rowSets, committed, afterCommitError } = reply;
    client.release(
      afterCommitError !== undefined && endsConnection(afterCommitError)
        ? (afterCommitError as Error)
        : undefined,
    );
    if (afterCommitError !== undefined) this.notifyFailed(afterCommitError);
    else if (notifiedOf(rowSets) === false) this.notifyFailed(new Error(NOTIFY_FAILED_IN_SQL));
    // Row sets: the settings, the statement's rows (when it returned any), the lsn, the flush.
    const rows = (rowSets.indexOf(committed.rows) === 2 ? rowSets[1] : []) as Row[];
    return { rows, fence: committed.row.lsn as string | undefined };
  }

  private async send(pool: pg.Pool, text: string, explicitTransaction: boolean) {
    const client = await checkout(pool);
    this.counter?.roundTrip();
    try {
      const results = (await client.query(text)) as unknown as pg.QueryResult[];
      client.release();
      return results;
    } catch (error) {
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

/** What notify_deferred() said when it caught an error itself (it warned the server log too). */
export const NOTIFY_FAILED_IN_SQL =
  'sessions.notify_deferred() could not send the deferred notifications (see the server log)';

/** What `notify_deferred()` answered in a message's rows (undefined when it did not run). */
export function notifiedOf(rowSets: readonly Record<string, unknown>[][]): boolean | undefined {
  for (const rows of rowSets) {
    const row = rows[0];
    if (row && 'notified' in row) return row.notified as boolean;
  }
  return undefined;
}

/** The rows of a message that runs through a COMMIT, collected as they arrive. */
export interface CommitReply {
  /** Rows of each statement that returned any, in order. */
  readonly rowSets: readonly Record<string, unknown>[][];
  /**
   * The first row that has the marker column, and its statement's rows: it comes from a
   * statement after the COMMIT (give it a statement of its own, before anything that can
   * fail: an error is raised before the failing statement's first row).
   */
  readonly committed: {
    readonly row: Record<string, unknown>;
    readonly rows: Record<string, unknown>[];
  };
  /** An error after that row: the transaction committed, what followed did not. */
  readonly afterCommitError?: unknown;
  /** The command tags of the statements (known only when no error came). */
  readonly commands: readonly string[];
}

/**
 * Sends a simple-protocol message that commits and then runs a statement returning a
 * row with column `marker`. That row is sent only once the COMMIT succeeded, so: an
 * error before it rejects (nothing committed); an error after it resolves with
 * `afterCommitError` (committed, the rest failed). node-postgres hands a failed
 * message's earlier results to nobody, so the rows are read off its 'row' events.
 */
export function sendThroughCommit(
  client: pg.ClientBase,
  text: string,
  marker: string,
): Promise<CommitReply> {
  return new Promise((resolve, reject) => {
    const rowSets: Record<string, unknown>[][] = [];
    let current: unknown;
    let committed: CommitReply['committed'] | undefined;
    // node-postgres calls back with `null` for no error.
    const query = new pg.Query(text, (error: Error | null | undefined, results: unknown) => {
      if (!error) {
        const list = (Array.isArray(results) ? results : [results]) as pg.QueryResult[];
        const commands = list.map((result) => result.command);
        if (committed) resolve({ rowSets, committed, commands });
        else reject(new Error(`the message returned no "${marker}" row: ${commands.join(', ')}`));
      } else if (committed) {
        resolve({ rowSets, committed, afterCommitError: error, commands: [] });
      } else {
        reject(error);
      }
    });
    query.on('row', (row: Record<string, unknown>, result?: unknown) => {
      if (result !== current || rowSets.length === 0) {
        current = result;
        rowSets.push([]);
      }
      const rows = rowSets.at(-1)!;
      rows.push(row);
      if (committed === undefined && marker in row) committed = { row, rows };
    });
    client.query(query);
  });
}

/**
 * Runs statements inside an open Kysely transaction. `prelude`: the transaction's
 * settings, not sent yet; they travel with its first statement (one message, and with
 * it the driver's BEGIN), or alone by {@link settle}. `actor`: every write first sets
 * `sessions.actor` to it, in the same message, for the event log.
 */
export class TransactionRunner implements StatementRunner {
  #prelude: string | undefined;

  constructor(
    readonly transaction: Transaction<SessionsDatabase>,
    private readonly counter?: RoundTripCounter,
    private readonly options: { readonly prelude?: string; readonly actor?: () => string } = {},
  ) {
    this.#prelude = options.prelude;
  }

  /** Sends the prelude now if no statement took it along (before the handler's own SQL). */
  async settle(): Promise<void> {
    const prelude = this.#prelude;
    if (prelude === undefined) return;
    this.#prelude = undefined;
    this.counter?.roundTrip();
    await this.transaction.executeQuery(CompiledQuery.raw(prelude));
  }

  async read<Row>(query: Compilable<Row> | CompiledQuery<Row>): Promise<StatementResult<Row>> {
    return this.run(compile(query), []);
  }

  write<Row>(query: Compilable<Row> | CompiledQuery<Row>): Promise<StatementResult<Row>> {
    const actor = this.options.actor?.();
    return this.run(
      compile(query),
      actor === undefined
        ? []
        : [`SELECT set_config('sessions.actor', ${pg.escapeLiteral(actor)}, true)`],
    );
  }

  readPrimary<Row>(query: Compilable<Row> | CompiledQuery<Row>): Promise<StatementResult<Row>> {
    return this.read(query);
  }

  /** One message: the prelude (once), `before`, the statement; the statement's rows. */
  private async run<Row>(
    compiled: CompiledQuery<Row>,
    before: readonly string[],
  ): Promise<StatementResult<Row>> {
    this.counter?.roundTrip();
    const leading = this.#prelude === undefined ? before : [this.#prelude, ...before];
    this.#prelude = undefined;
    const statement =
      leading.length === 0
        ? compiled
        : CompiledQuery.raw(
            [
              ...leading,
              compiled.parameters.length > 0 ? inlineParameters(compiled) : compiled.sql,
            ].join('; '),
          );
    const result = await this.transaction.executeQuery(statement);
    return { rows: result.rows as Row[] };
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
