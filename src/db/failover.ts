import type { Logger } from '../logger.js';
import type { SessionDatabase } from './router.js';

/** A database that can look for a new primary after a write failed on the old one. */
interface FailingOver {
  failover(error: unknown): Promise<boolean>;
}

function canFailOver(database: SessionDatabase): database is SessionDatabase & FailingOver {
  return typeof (database as Partial<FailingOver>).failover === 'function';
}

/**
 * Runs `work`; when it fails because the primary is gone or read-only and the router
 * finds a new primary within its failover timeout, runs it once more with `retry` true.
 * A single pool (no router) has nowhere else to go: its error passes through.
 */
export async function withFailover<T>(
  database: SessionDatabase,
  logger: Logger,
  work: (retry: boolean) => Promise<T>,
): Promise<T> {
  try {
    return await work(false);
  } catch (error) {
    if (!canFailOver(database) || !(await database.failover(error))) throw error;
    logger.warn({ err: error }, 'pg-sessions retrying once on the new primary');
    return work(true);
  }
}
