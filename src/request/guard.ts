import { SessionStoreUnavailableError, toSessionError } from '../errors.js';
import type { SessionMetrics } from '../metrics.js';

/**
 * Awaits `work`, translating database errors into typed session errors (a database that
 * is down is SESSION_STORE_UNAVAILABLE, 503, and counted): the load and the commit, and
 * every operation of `ctx.sessions` that reaches the database.
 */
export async function guard<T>(metrics: SessionMetrics, work: Promise<T>): Promise<T> {
  try {
    return await work;
  } catch (error) {
    const translated = toSessionError(error);
    if (translated instanceof SessionStoreUnavailableError) metrics.increment('unavailable');
    throw translated;
  }
}
