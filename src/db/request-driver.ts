import {
  AbortedTransactionError,
  type CompiledQuery,
  type DatabaseConnection,
  type Driver,
  type QueryResult,
  type TransactionSettings,
} from 'kysely';
import type pg from 'pg';
import type { Logger } from '../logger.js';
import type { SessionMetrics } from '../metrics.js';
import { checkout } from './checkout.js';
import {
  NOTIFY_DEFERRED,
  NOTIFY_FAILED_IN_SQL,
  reportNotifyFailure,
  sendThroughCommit,
} from './commit-message.js';
import type { SessionDatabase } from './router.js';
import { DEFERS_NOTIFICATIONS } from './runner.js';
import { endsConnection } from './sqlstate.js';

/**
 * Kysely's driver for the middleware's request transactions (`transaction: 'request'`
 * and lock mode), on the primary's pool. It differs from Kysely's PostgresDriver in
 * what it sends, not in what it does:
 *
 * - `BEGIN` travels with the transaction's first statement when that one has no bind
 *   parameters (the middleware's settings and load, inlined): one round trip less.
 * - A statement made of several (`SELECT …; SELECT …`, simple protocol) answers with
 *   the rows of its last one.
 * - `COMMIT; SELECT sessions.notify_deferred()` is one message: the deferred
 *   notifications of the transaction's data writes go out right after its commit,
 *   without a round trip of their own, and even if this process dies after sending it.
 *   A failure after the commit is counted and logged (notifyFailures), never a failed commit.
 */
export class RequestTransactionDriver implements Driver {
  constructor(
    /** The router: each transaction goes to the primary of the moment (also after a failover). */
    private readonly database: SessionDatabase,
    private readonly metrics: SessionMetrics,
    private readonly logger: Logger,
  ) {}

  async init(): Promise<void> {}

  async acquireConnection(): Promise<RequestConnection> {
    return new RequestConnection(await checkout(this.database.writer()));
  }

  async beginTransaction(connection: DatabaseConnection, settings: TransactionSettings) {
    let begin = 'BEGIN';
    if (settings.isolationLevel) begin += ` ISOLATION LEVEL ${settings.isolationLevel}`;
    if (settings.accessMode) begin += ` ${settings.accessMode}`;
    (connection as RequestConnection).begin(begin);
  }

  async commitTransaction(connection: DatabaseConnection): Promise<void> {
    const failure = await (connection as RequestConnection).commit();
    if (failure !== undefined) reportNotifyFailure(this.metrics, this.logger, failure);
  }

  async rollbackTransaction(connection: DatabaseConnection): Promise<void> {
    await (connection as RequestConnection).rollback();
  }

  async releaseConnection(connection: DatabaseConnection): Promise<void> {
    (connection as RequestConnection).release();
  }

  async destroy(): Promise<void> {}
}

/** One checked-out client, for the length of one request transaction. */
class RequestConnection implements DatabaseConnection {
  /** BEGIN not sent yet: it goes with the first statement. */
  #pendingBegin: string | undefined;
  /** Why the client must not go back to the pool (it broke mid-transaction). */
  #broken: Error | undefined;
  /** A statement deferred notifications to the commit (the middleware's session writes). */
  #defers = false;

  constructor(private readonly client: pg.PoolClient) {}

  begin(statement: string): void {
    this.#pendingBegin = statement;
  }

  async executeQuery<R>(compiledQuery: CompiledQuery): Promise<QueryResult<R>> {
    if ((compiledQuery as { [DEFERS_NOTIFICATIONS]?: boolean })[DEFERS_NOTIFICATIONS]) {
      this.#defers = true;
    }
    let text = compiledQuery.sql;
    const values = [...compiledQuery.parameters];
    const begin = this.#pendingBegin;
    this.#pendingBegin = undefined;
    if (begin !== undefined) {
      // Several statements in one message need the simple protocol: no bind parameters.
      if (values.length === 0) text = `${begin}; ${text}`;
      else await this.#query(begin, []);
    }
    const reply = await this.#query(text, values);
    const result = Array.isArray(reply) ? (reply.at(-1) as pg.QueryResult) : reply;
    const { command, rowCount } = result;
    const affected =
      command === 'INSERT' || command === 'UPDATE' || command === 'DELETE' || command === 'MERGE';
    return {
      ...(affected ? { numAffectedRows: BigInt(rowCount ?? 0) } : {}),
      rows: (result.rows ?? []) as R[],
    };
  }

  // biome-ignore lint/correctness/useYield: streaming is not offered, as with Kysely's driver without `cursor`
  async *streamQuery<R>(): AsyncIterableIterator<QueryResult<R>> {
    throw new Error('pg-sessions request transactions do not stream query results');
  }

  /** Commits; resolves with the deferred notification's failure, if the commit stood and it failed. */
  async commit(): Promise<unknown> {
    // Nothing was sent: no transaction was ever begun on the server.
    if (this.#pendingBegin !== undefined) {
      this.#pendingBegin = undefined;
      return undefined;
    }
    let reply: Awaited<ReturnType<typeof sendThroughCommit>>;
    try {
      // A transaction whose session writes deferred nothing (a read in lock mode, the
      // application's own writes) has no notification to send: no statement for it.
      const notify = this.#defers ? `; SELECT ${NOTIFY_DEFERRED} AS notified` : '';
      reply = await sendThroughCommit(
        this.client,
        `COMMIT; SELECT true AS committed${notify}`,
        'committed',
      );
    } catch (error) {
      if (endsConnection(error)) this.#broken = error as Error;
      throw error;
    }
    // COMMIT of a transaction an earlier error aborted completes as ROLLBACK.
    if (reply.commands[0] === 'ROLLBACK') throw new AbortedTransactionError();
    if (reply.afterCommitError !== undefined) {
      if (endsConnection(reply.afterCommitError)) this.#broken = reply.afterCommitError as Error;
      return reply.afterCommitError;
    }
    const notified = reply.rowSets.find((rows) => rows[0] && 'notified' in rows[0])?.[0];
    return notified?.notified === false ? new Error(NOTIFY_FAILED_IN_SQL) : undefined;
  }

  async rollback(): Promise<void> {
    if (this.#pendingBegin !== undefined) {
      this.#pendingBegin = undefined;
      return;
    }
    try {
      await this.#query('ROLLBACK', []);
    } catch (error) {
      this.#broken = error as Error;
      throw error;
    }
  }

  release(): void {
    this.client.release(this.#broken);
  }

  async #query(text: string, values: unknown[]) {
    try {
      return (await this.client.query(text, values)) as pg.QueryResult | pg.QueryResult[];
    } catch (error) {
      if (endsConnection(error)) this.#broken = error as Error;
      throw error;
    }
  }
}
