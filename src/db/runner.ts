import { setTimeout as delay } from 'node:timers/promises';
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
import { isShardInMotion } from '../citus/topology.js';
import type { Logger } from '../logger.js';
import type { SessionMetrics } from '../metrics.js';
import { checkout } from './checkout.js';
import { CommitSender } from './commit-message.js';
import type { SessionDatabase } from './router.js';
import type { SessionsDatabase } from './schema.js';
import { endsConnection } from './sqlstate.js';
import { type BatchTicket, batcherFor, WriteBatcher } from './write-batch.js';

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
  /**
   * The statement is a lookup function that takes the tenant itself where the call set
   * none (migration 12): on Citus it goes alone, and runs whole on its session's worker.
   */
  readonly scoped?: boolean;
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
  /**
   * Each write may change one session only (Citus: a transaction that writes on two
   * workers commits in two phases, which PostgreSQL refuses after the triggers' NOTIFY).
   */
  readonly oneSessionPerWrite?: boolean;
  read<Row>(query: Statement<Row>, options?: ReadOptions): Promise<StatementResult<Row>>;
  /**
   * A read that must see the newest data: always on the primary. `staleReplica`: it
   * replaces a replica's answer that was older than the client's fence (for the counters).
   */
  readPrimary<Row>(
    query: Statement<Row>,
    options?: { staleReplica?: boolean; scoped?: boolean },
  ): Promise<StatementResult<Row>>;
  /** A write in its own transaction (or the request's). */
  write<Row>(query: Statement<Row>, options: WriteOptions): Promise<StatementResult<Row>>;
}

/**
 * Marks a statement sent in a request transaction whose notifications wait for the
 * commit (`notifyAfterCommit`): only then does the commit run `notify_deferred()`.
 */
export const DEFERS_NOTIFICATIONS = Symbol('pg-sessions: defers its notifications');

/** `SELECT set_config(...)` for the tenant and the actor, transaction-local: built here only. */
export function settingsStatement(tenant: string, actor: string): string {
  return `SELECT set_config('sessions.tenant', ${pg.escapeLiteral(tenant)}, true), set_config('sessions.actor', ${pg.escapeLiteral(actor)}, true)`;
}

/**
 * The settings as SET LOCAL commands, for Citus: `set_config()` stays on the
 * coordinator, while a SET LOCAL sent in a message of its own (after BEGIN, before the
 * statement) is propagated to every worker the transaction reaches
 * (tests/citus/platform.test.ts). `more`: further settings (a request transaction's).
 */
export function propagatedSettings(
  tenant: string,
  actor: string,
  more: Readonly<Record<string, string>> = {},
): string {
  const settings = { 'sessions.tenant': tenant, 'sessions.actor': actor, ...more };
  return [
    "SET LOCAL citus.propagate_set_commands = 'local'",
    ...Object.entries(settings).map(
      ([name, value]) => `SET LOCAL ${name} = ${pg.escapeLiteral(value)}`,
    ),
  ].join('; ');
}

/** A statement caught by a shard move is sent again up to this many times, 50 ms, 100 ms, … apart. */
const SHARD_MOVE_RETRIES = 5;
const SHARD_MOVE_BACKOFF_MS = 50;

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
 * A write's message is sent by commit-message.ts; a batched one (`batch`) first waits in
 * write-batch.ts for the writes it goes with.
 *
 * A simple query runs its statements in one transaction, so row-level security sees
 * the tenant, and nothing leaks to the next user of the pooled connection.
 */
export class PoolRunner implements StatementRunner {
  constructor(
    private readonly database: SessionDatabase,
    private readonly tenant: string,
    private readonly metrics: SessionMetrics,
    logger: Logger,
    /** Reads may go to replicas: writes then return the commit's LSN as the client's fence. */
    replicas: boolean,
    /**
     * The tables are distributed by Citus: the session functions go alone (each runs on
     * its session's worker), any other statement after its settings as propagated SET
     * LOCALs (two more round trips), and writes never share a batch (one batch would
     * span workers).
     */
    private readonly citus = false,
  ) {
    this.#sender = new CommitSender(database, metrics, logger, replicas);
  }

  readonly #sender: CommitSender;

  get oneSessionPerWrite(): boolean {
    return this.citus;
  }

  read<Row>(query: Statement<Row>, options: ReadOptions = {}): Promise<StatementResult<Row>> {
    return this.#readOn(this.database.reader(options.fence), query, options.scoped);
  }

  readPrimary<Row>(
    query: Statement<Row>,
    options: { staleReplica?: boolean; scoped?: boolean } = {},
  ): Promise<StatementResult<Row>> {
    const { database } = this;
    const pool = options.staleReplica
      ? (database.staleReader?.() ?? database.writer())
      : database.writer();
    return this.#readOn(pool, query, options.scoped);
  }

  /**
   * On Citus, a statement that reached a worker while its session's shard was being
   * moved away fails before it changed anything (the transaction is rolled back): it
   * is sent again, a few times, as the move finishes within a second.
   */
  async #whileShardsMove<T>(attempt: () => Promise<T>): Promise<T> {
    for (let retries = 0; ; retries++) {
      try {
        return await attempt();
      } catch (error) {
        if (retries >= SHARD_MOVE_RETRIES || !isShardInMotion(error)) throw error;
        this.metrics.increment('shardMoveRetries');
        await delay(SHARD_MOVE_BACKOFF_MS * 2 ** retries);
      }
    }
  }

  #readOn<Row>(pool: pg.Pool, query: Statement<Row>, scoped = false) {
    // One server: straight through, no retry closure on every read.
    if (!this.citus) return this.#readOnce(pool, query, scoped);
    return this.#whileShardsMove(() => this.#readOnce(pool, query, scoped));
  }

  async #readOnce<Row>(
    pool: pg.Pool,
    query: Statement<Row>,
    scoped: boolean,
  ): Promise<StatementResult<Row>> {
    const statement = inlineParameters(compile(query));
    const client = await checkout(pool);
    let rows: Row[];
    try {
      rows = this.citus
        ? await this.#readOnCitus<Row>(client, statement, scoped)
        : await this.#readHere<Row>(client, statement);
    } catch (error) {
      // On Citus the read ran in an explicit transaction, which a failure leaves open.
      const broken = endsConnection(error)
        ? (error as Error)
        : !this.citus
          ? undefined
          : await client.query('ROLLBACK').then(
              () => undefined,
              (rollbackError: Error) => rollbackError,
            );
      client.release(broken);
      throw error;
    }
    client.release();
    return { rows, fromReplica: pool !== this.database.writer() };
  }

  /** One message: the settings, then the statement, in the message's implicit transaction. */
  async #readHere<Row>(client: pg.PoolClient, statement: string): Promise<Row[]> {
    this.metrics.roundTrip();
    const text = `${settingsStatement(this.tenant, READER)}; ${statement}`;
    const results = (await client.query(text)) as unknown as pg.QueryResult[];
    return (results[1]?.rows ?? []) as Row[];
  }

  /** On Citus: a lookup function alone; anything else after its propagated settings. */
  async #readOnCitus<Row>(client: pg.PoolClient, statement: string, scoped: boolean) {
    if (scoped) {
      this.metrics.roundTrip();
      return (await client.query(statement)).rows as Row[];
    }
    this.metrics.roundTrip(3);
    await client.query('BEGIN');
    await client.query(propagatedSettings(this.tenant, READER));
    const results = (await client.query(`${statement}; COMMIT`)) as unknown as pg.QueryResult[];
    return (results[0]?.rows ?? []) as Row[];
  }

  write<Row>(query: Statement<Row>, options: WriteOptions): Promise<StatementResult<Row>> {
    const statement = inlineParameters(compile(query));
    // On Citus a worker's trigger notifies in its own commit: nothing waits for the coordinator.
    const notify = options.notifyAfterCommit === true && !this.citus;
    if (options.batch && options.scoped && !this.citus) {
      const pool = this.database.writer();
      // Half the pool's connections at most carry batches: the rest serve loads and other writes.
      const limit = Math.max(1, Math.floor((pool.options.max ?? 10) / 2));
      const batcher = batcherFor(pool, () => new WriteBatcher(this.#sender, limit));
      return batcher.write(statement, options.batch, notify) as Promise<StatementResult<Row>>;
    }
    if (options.scoped && !this.citus) {
      return this.#sender.send(statement, notify) as Promise<StatementResult<Row>>;
    }
    if (options.scoped) {
      return this.#whileShardsMove(() => this.#sender.send(statement, notify)) as Promise<
        StatementResult<Row>
      >;
    }
    if (this.citus) {
      const propagated = propagatedSettings(this.tenant, options.actor);
      return this.#whileShardsMove(() =>
        this.#sender.send(statement, notify, undefined, { propagated }),
      ) as Promise<StatementResult<Row>>;
    }
    const settings = settingsStatement(this.tenant, options.actor);
    return this.#sender.send(statement, notify, settings) as Promise<StatementResult<Row>>;
  }
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
    /** On Citus the prelude is SET LOCALs, which propagate only in a message of their own. */
    private readonly preludeAlone = false,
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

  /** `SET LOCAL name = value` in a message of its own (on Citus, propagated with the rest). */
  async setLocal(name: string, value: string): Promise<void> {
    await this.settle();
    this.metrics.roundTrip();
    await this.transaction.executeQuery(
      CompiledQuery.raw(`SET LOCAL ${name} = ${pg.escapeLiteral(value)}`),
    );
  }

  read<Row>(query: Statement<Row>): Promise<StatementResult<Row>> {
    return this.#run(compile(query), undefined);
  }

  write<Row>(query: Statement<Row>, options: WriteOptions): Promise<StatementResult<Row>> {
    const actor = options.scoped
      ? undefined
      : this.preludeAlone
        ? `SET LOCAL sessions.actor = ${pg.escapeLiteral(options.actor)}`
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
    if (this.preludeAlone) {
      await this.settle();
      if (before !== undefined) {
        this.metrics.roundTrip();
        await this.transaction.executeQuery(CompiledQuery.raw(before));
        before = undefined;
      }
    }
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
