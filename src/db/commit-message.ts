import pg from 'pg';
import type { Logger } from '../logger.js';
import type { SessionMetrics } from '../metrics.js';
import { checkout } from './checkout.js';
import type { SessionDatabase } from './router.js';
import { endsConnection } from './sqlstate.js';
import type { BatchTransport, WriteReply } from './write-batch.js';

/**
 * The statement that sends a transaction's deferred notifications. It follows the
 * COMMIT in the same simple-protocol message, so the server has it even if the client
 * dies right after sending, and PgBouncer (transaction pooling) keeps both on one
 * server connection: ReadyForQuery comes once, at the end of the message.
 */
export const NOTIFY_DEFERRED = 'sessions.notify_deferred()';

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
 * Sends a write's message on the primary's pool and reads its reply:
 *
 *   BEGIN; [settings;] <statement>; COMMIT; SELECT true AS committed[, lsn][; SELECT notify_deferred()]
 *
 * The row after the COMMIT proves the commit, so an error that follows it (the deferred
 * notification's own commit failing) leaves the write acknowledged. A batch of writes
 * (write-batch.ts) goes through here like a single one.
 */
export class CommitSender implements BatchTransport {
  constructor(
    private readonly database: SessionDatabase,
    private readonly metrics: SessionMetrics,
    private readonly logger: Logger,
    /** Reads may go to replicas: the reply carries the commit's LSN as the client's fence. */
    private readonly replicas: boolean,
  ) {}

  endsConnection(error: unknown): boolean {
    return endsConnection(error);
  }

  /**
   * `settings`: the tenant and actor statement, unless the statement sets them itself;
   * `notify`: the statement deferred notifications, sent right after the commit.
   */
  async send(
    statement: string,
    notify: boolean,
    settings?: string,
    citus?: { readonly propagated: string },
  ): Promise<WriteReply> {
    const lsn = this.replicas ? ', pg_current_wal_lsn()::text AS lsn' : '';
    // The marker row proves the commit; the flush comes after it, so that its failure
    // cannot make a committed write look failed.
    const flush = notify ? `; SELECT ${NOTIFY_DEFERRED} AS notified` : '';
    const prefix = settings === undefined ? '' : `${settings}; `;
    // On Citus the settings are SET LOCALs in a message of their own after BEGIN, which
    // Citus then sends to each worker the statement reaches (runner.ts, propagatedSettings).
    const text = citus
      ? `${statement}; COMMIT; SELECT true AS committed${lsn}${flush}`
      : `BEGIN; ${prefix}${statement}; COMMIT; SELECT true AS committed${lsn}${flush}`;
    const client = await checkout(this.database.writer());
    let reply: CommitReply;
    try {
      if (citus) {
        this.metrics.roundTrip(2);
        await client.query('BEGIN');
        await client.query(citus.propagated);
      }
      this.metrics.roundTrip();
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
    // Row sets: the settings' (if sent), the statement's rows when it returned any, the marker's.
    const statementRows = rowSets.indexOf(committed.rows) - 1;
    const rows = statementRows >= (settings === undefined ? 0 : 1) ? rowSets[statementRows]! : [];
    return { rows, fence: committed.row.lsn as string | undefined };
  }
}
