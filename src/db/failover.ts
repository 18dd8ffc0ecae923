import type { Logger } from '../logger.js';
import type { SessionDatabase } from './router.js';
import type {
  ReadOptions,
  Statement,
  StatementResult,
  StatementRunner,
  WriteOptions,
} from './runner.js';

/** A database that can look for a new primary after a write failed on the old one. */
interface FailingOver {
  failover(error: unknown): Promise<boolean>;
}

function canFailOver(database: SessionDatabase): database is SessionDatabase & FailingOver {
  return typeof (database as Partial<FailingOver>).failover === 'function';
}

/**
 * A runner that follows a failover: when a statement fails because the primary is
 * gone or read-only and the router finds a new primary within its failover timeout,
 * the statement runs once more there. A write first runs its `appliedCheck` (built by
 * the store beside the write's own SQL): rows mean the first attempt had committed
 * before the primary went away, and are returned instead of writing twice. A single
 * pool (no router) has nowhere else to go: its error passes through.
 */
export class FailoverRunner implements StatementRunner {
  constructor(
    private readonly inner: StatementRunner,
    private readonly database: SessionDatabase,
    private readonly logger: Logger,
  ) {}

  /** Wraps `inner` only when the database can fail over. */
  static around(
    inner: StatementRunner,
    database: SessionDatabase,
    logger: Logger,
  ): StatementRunner {
    return canFailOver(database) ? new FailoverRunner(inner, database, logger) : inner;
  }

  get oneSessionPerWrite(): boolean {
    return this.inner.oneSessionPerWrite === true;
  }

  async read<Row>(query: Statement<Row>, options?: ReadOptions): Promise<StatementResult<Row>> {
    try {
      return await this.inner.read(query, options);
    } catch (error) {
      await this.#failOver(error);
      // Once more on the primary, never another replica pick: a replica that is shutting
      // down may still pass the health check that just ran, and answer nothing again.
      return this.inner.readPrimary(query, { scoped: options?.scoped });
    }
  }

  async readPrimary<Row>(
    query: Statement<Row>,
    options?: { staleReplica?: boolean; scoped?: boolean },
  ): Promise<StatementResult<Row>> {
    try {
      return await this.inner.readPrimary(query, options);
    } catch (error) {
      await this.#failOver(error);
      return this.inner.readPrimary(query, options);
    }
  }

  async write<Row>(query: Statement<Row>, options: WriteOptions): Promise<StatementResult<Row>> {
    try {
      return await this.inner.write(query, options);
    } catch (error) {
      await this.#failOver(error);
      if (options.appliedCheck) {
        const applied = await this.inner.readPrimary(options.appliedCheck);
        if (applied.rows.length > 0) return { rows: applied.rows as Row[] };
      }
      return this.inner.write(query, options);
    }
  }

  /** Rethrows `error` unless a new primary was found, which the retry then uses. */
  async #failOver(error: unknown): Promise<void> {
    const database = this.database as SessionDatabase & FailingOver;
    if (!(await database.failover(error))) throw error;
    this.logger.warn({ err: error }, 'pg-sessions retrying once on the new primary');
  }
}
