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
import type { Logger } from '../logger.js';
import type { SessionMetrics } from '../metrics.js';
import { checkout } from './checkout.js';
import type { SessionDatabase } from './router.js';
import type { SessionsDatabase } from './schema.js';
import { endsConnection } from './sqlstate.js';
import { type BatchTicket, batcherFor, WriteBatcher, type WriteReply } from './write-batch.js';

/**
 * Builds queries without executing them. Statements are compiled with Kysely and
 * sent by a {@link StatementRunner}, which folds the tenant and actor settings and,
 * for writes, the commit and the notification into the same round trip.
 */
export const queryBuilder = new Kysely<SessionsDatabase>({
  dialect: {
    createAdapter: () => new PostgresAdapter(),
    createDriver: () => new DummyDriver(),
    createIntrospector: (db) => new PostgresIntrospector(db),
    createQueryCompiler: () => new PostgresQueryCompiler(),
  },
});

/** A statement: a Kysely query, or fixed text with `$n` placeholders and their values. */
export type Statement<Row> = Compilable<Row> | CompiledQuery<Row>;

export interface StatementResult<Row> {
  readonly rows: Row[];
  /** The read was served by a replica (it may lag: the caller can verify and re-read). */
  readonly fromReplica?: boolean;
  /** For writes on a pool with replicas: the primary's WAL position after the commit. */
  readonly fence?: string;
}

export interface ReadOptions {
  /** The WAL position the client has seen: a replica must have replayed it (read-your-writes). */
  readonly fence?: string;
}

export interface WriteOptions {
  /** Who the event log names for this write. */
  readonly actor: string;
  /**
   * The statement deferred its notifications (`sessions.defer_notify`): a pool write
   * sends them right after its COMMIT, in the same message; in a request transaction
   * the commit does (see {@link RequestTransactionDriver}).
   */
  readonly notifyAfterCommit?: boolean;
  /** The statement sets the tenant and actor itself (the session functions of migration 6). */
  readonly scoped?: boolean;
  /**
   * After a failover, run before the write is sent again: rows mean the first attempt
   * had committed, and they are the answer (see {@link FailoverRunner}).
   */
  readonly appliedCheck?: Statement<unknown>;
  /**
   * The write may share a transaction with other writes of the same key that are
   * waiting (see {@link WriteBatcher}); only for a `scoped` write returning its own rows.
   */
  readonly batch?: BatchTicket;
}

/** Runs statements for one tenant: on a pool (one round trip each) or in a transaction. */
export interface StatementRunner {
  read<Row>(query: Statement<Row>, options?: ReadOptions): Promise<StatementResult<Row>>;
  /**
   * A read that must see the newest data: always on the primary. `staleReplica`: it
   * replaces a replica's answer that was older than the client's fence (for the counters).
   */
  readPrimary<Row>(
    query: Statement<Row>,
    options?: { staleReplica?: boolean },
  ): Promise<StatementResult<Row>>;
  /** A write in its own transaction (or the request's). */
  write<Row>(query: Statement<Row>, options: WriteOptions): Promise<StatementResult<Row>>;
}

/**
 * The statement that sends a transaction's deferred notifications. It follows the
 * COMMIT in the same simple-protocol message, so the server has it even if the client
 * dies right after sending, and PgBouncer (transaction pooling) keeps both on one
 * server connection: ReadyForQuery comes once, at the end of the message.
 */
export const NOTIFY_DEFERRED = 'sessions.notify_deferred()';

/**
 * Marks a statement sent in a request transaction whose notifications wait for the
 * commit (`notifyAfterCommit`): only then does the commit run `notify_deferred()`.
 */
export const DEFERS_NOTIFICATIONS = Symbol('pg-sessions: defers its notifications');

/** What notify_deferred() said when it caught an error itself (it warned the server log too). */
export const NOTIFY_FAILED_IN_SQL =
  'sessions.notify_deferred() could not send the deferred notifications (see the server log)';

/**
 * A write committed but its deferred notification failed: the write stands (it is
 * acknowledged); other nodes may serve their cached copy until it is evicted otherwise.
 */
export function reportNotifyFailure(metrics: SessionMetrics, logger: Logger, error: unknown): void {
  metrics.increment('notifyFailures');
  logger.warn({ err: error }, 'pg-sessions: session write committed, change notification failed');
}

/** `SELECT set_config(...)` for the tenant and the actor, transaction-local: built here only. */
export function settingsStatement(tenant: string, actor: string): string {
  return `SELECT set_config('sessions.tenant', ${pg.escapeLiteral(tenant)}, true), set_config('sessions.actor', ${pg.escapeLiteral(actor)}, true)`;
}

/** The actor of reads: reads write no event, but the setting keeps one shape for both. */
const READER = 'pg-sessions';

function compile<Row>(query: Statement<Row>): CompiledQuery<Row> {
  return 'compile' in query ? query.compile() : query;
}

/**
 * One round trip per statement on a pool, for one tenant. The statement travels as a
 * simple-protocol query with its parameters inlined as literals:
 *
 *   read:  SELECT set_config(tenant), set_config(actor); <statement>
 *   write: BEGIN; [settings;] <statement>; COMMIT; SELECT true[, lsn][; SELECT notify_deferred()]
 *
 * A simple query runs its statements in one transaction, so row-level security sees
 * the tenant, and nothing leaks to the next user of the pooled connection.
 */
export class PoolRunner implements StatementRunner {
  constructor(
    private readonly database: SessionDatabase,
    private readonly tenant: string,
    private readonly metrics: SessionMetrics,
    private readonly logger: Logger,
    /** Reads may go to replicas: writes then return the commit's LSN as the client's fence. */
    private readonly replicas: boolean,
  ) {}

  read<Row>(query: Statement<Row>, options: ReadOptions = {}): Promise<StatementResult<Row>> {
    return this.#readOn(this.database.reader(options.fence), query);
  }

  readPrimary<Row>(
    query: Statement<Row>,
    options: { staleReplica?: boolean } = {},
  ): Promise<StatementResult<Row>> {
    const { database } = this;
    const pool = options.staleReplica
      ? (database.staleReader?.() ?? database.writer())
      : database.writer();
    return this.#readOn(pool, query);
  }

  async #readOn<Row>(pool: pg.Pool, query: Statement<Row>): Promise<StatementResult<Row>> {
    const text = `${settingsStatement(this.tenant, READER)}; ${inlineParameters(compile(query))}`;
    const client = await checkout(pool);
    this.metrics.roundTrip();
    let results: pg.QueryResult[];
    try {
      results = (await client.query(text)) as unknown as pg.QueryResult[];
    } catch (error) {
      client.release(endsConnection(error) ? (error as Error) : undefined);
      throw error;
    }
    client.release();
    return {
      rows: (results[1]?.rows ?? []) as Row[],
      fromReplica: pool !== this.database.writer(),
    };
  }

  /**
   * The row after the COMMIT proves the commit, so an error that follows it (the
   * deferred notification's own commit failing) leaves the write acknowledged.
   */
  write<Row>(query: Statement<Row>, options: WriteOptions): Promise<StatementResult<Row>> {
    const statement = inlineParameters(compile(query));
    const { batch } = options;
    if (batch && options.scoped) {
      const pool = this.database.writer();
      const batcher = batcherFor(pool, () => this.#batcher(pool.options.max ?? 10));
      const notify = options.notifyAfterCommit === true;
      return batcher.write(statement, batch, notify) as Promise<StatementResult<Row>>;
    }
    return this.#commit(statement, options) as Promise<StatementResult<Row>>;
  }

  /** Batches on this pool: half its connections at most, the rest for reads and other writes. */
  #batcher(poolSize: number): WriteBatcher {
    const limit = Math.max(1, Math.floor(poolSize / 2));
    return new WriteBatcher(
      {
        send: (statement, notify) =>
          this.#commit(statement, { actor: READER, scoped: true, notifyAfterCommit: notify }),
        endsConnection: (error) => endsConnection(error),
      },
      limit,
    );
  }

  /**
   * The row after the COMMIT proves the commit, so an error that follows it (the
   * deferred notification's own commit failing) leaves the write acknowledged.
   */
  async #commit(
    statement: string,
    options: Pick<WriteOptions, 'actor' | 'scoped' | 'notifyAfterCommit'>,
  ): Promise<WriteReply> {
    const settings = options.scoped ? '' : `${settingsStatement(this.tenant, options.actor)}; `;
    const lsn = this.replicas ? ', pg_current_wal_lsn()::text AS lsn' : '';
    // The marker row proves the commit; the flush comes after it, so that its failure
    // cannot make a committed write look failed.
    const flush = options.notifyAfterCommit ? `; SELECT ${NOTIFY_DEFERRED} AS notified` : '';
    const text = `BEGIN; ${settings}${statement}; COMMIT; SELECT true AS committed${lsn}${flush}`;
    const client = await checkout(this.database.writer());
    this.metrics.roundTrip();
    let reply: CommitReply;
    try {
      reply = await sendThroughCommit(client, text, 'committed');
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
    if (afterCommitError !== undefined) {
      reportNotifyFailure(this.metrics, this.logger, afterCommitError);
    } else if (rowSets.at(-1)?.[0]?.notified === false) {
      reportNotifyFailure(this.metrics, this.logger, new Error(NOTIFY_FAILED_IN_SQL));
    }
    // Row sets: the settings' (unless scoped), the statement's rows when it returned any, the marker's.
    const statementRows = rowSets.indexOf(committed.rows) - 1;
    const rows = statementRows >= (options.scoped ? 0 : 1) ? rowSets[statementRows]! : [];
    return { rows, fence: committed.row.lsn as string | undefined };
  }
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
 * it the driver's BEGIN), or alone by {@link settle}. Every write first sets
 * `sessions.actor` to its actor, in the same message, for the event log.
 */
export class TransactionRunner implements StatementRunner {
  #prelude: string | undefined;

  constructor(
    readonly transaction: Transaction<SessionsDatabase>,
    private readonly metrics: SessionMetrics,
    prelude: string | undefined,
  ) {
    this.#prelude = prelude;
  }

  /** Sends the prelude now if no statement took it along (before the handler's own SQL). */
  async settle(): Promise<void> {
    const prelude = this.#prelude;
    if (prelude === undefined) return;
    this.#prelude = undefined;
    this.metrics.roundTrip();
    await this.transaction.executeQuery(CompiledQuery.raw(prelude));
  }

  read<Row>(query: Statement<Row>): Promise<StatementResult<Row>> {
    return this.#run(compile(query), undefined);
  }

  write<Row>(query: Statement<Row>, options: WriteOptions): Promise<StatementResult<Row>> {
    const actor = options.scoped
      ? undefined
      : `SELECT set_config('sessions.actor', ${pg.escapeLiteral(options.actor)}, true)`;
    return this.#run(compile(query), actor, options.notifyAfterCommit === true);
  }

  readPrimary<Row>(query: Statement<Row>): Promise<StatementResult<Row>> {
    return this.read(query);
  }

  /** One message: the prelude (once), `before`, the statement; the statement's rows. */
  async #run<Row>(
    compiled: CompiledQuery<Row>,
    before: string | undefined,
    defers = false,
  ): Promise<StatementResult<Row>> {
    this.metrics.roundTrip();
    const leading = [this.#prelude, before].filter((text) => text !== undefined);
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
    // The driver's commit then sends the deferred notifications (none to send otherwise).
    const result = await this.transaction.executeQuery(
      defers ? ({ ...statement, [DEFERS_NOTIFICATIONS]: true } as CompiledQuery<Row>) : statement,
    );
    return { rows: result.rows as Row[] };
  }
}

/**
 * Replaces `$n` placeholders by SQL literals. Values are quoted with node-postgres'
 * `escapeLiteral` and left untyped, exactly as an untyped bind parameter would be,
 * so the server infers the same types. Kysely never puts `$n` inside literals of
 * our statements, which are all built by the store.
 */
export function inlineParameters(query: CompiledQuery<unknown>): string {
  const { parameters } = query;
  if (parameters.length === 0) return query.sql;
  const parts = templateOf(query.sql);
  let text = '';
  for (const part of parts) {
    if (typeof part === 'string') {
      text += part;
      continue;
    }
    if (part < 0 || part >= parameters.length) {
      throw new Error(`statement refers to parameter $${part + 1}, which was not given`);
    }
    text += literal(parameters[part]);
  }
  return text;
}

/**
 * A statement's text split at its `$n` placeholders (text, then a parameter's index):
 * the store's statements are few and fixed, so each is split once, not per request.
 */
const templates = new Map<string, readonly (string | number)[]>();

function templateOf(sql: string): readonly (string | number)[] {
  let parts = templates.get(sql);
  if (parts) return parts;
  const split: (string | number)[] = [];
  let last = 0;
  for (const match of sql.matchAll(/\$(\d+)/g)) {
    split.push(sql.slice(last, match.index), Number(match[1]) - 1);
    last = match.index + match[0].length;
  }
  split.push(sql.slice(last));
  parts = split;
  // Kysely's statements repeat their text for the same shape; a bound keeps an odd
  // caller from growing this without end.
  if (templates.size < 512) templates.set(sql, parts);
  return parts;
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
