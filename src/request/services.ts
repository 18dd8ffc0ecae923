import type { SessionCache } from '../cache/session-cache.js';
import type { Topology } from '../citus/topology.js';
import type { SessionDatabase } from '../db/router.js';
import type { TouchBatcher } from '../jobs/touch-batcher.js';
import type { Logger } from '../logger.js';
import type { SessionMetrics } from '../metrics.js';
import type { ResolvedOptions } from '../options/types.js';
import type { ExpiryPolicy } from '../store/records.js';
import type { KeyTransport } from './transport.js';

/**
 * What the request path is given by the process it runs in, made once per middleware:
 * the parts a request reads and writes through, and nothing that starts or stops
 * (that is the engine's). Every member is a value the request uses as it is.
 */
export interface RequestServices {
  readonly options: ResolvedOptions;
  readonly transport: KeyTransport;
  readonly database: SessionDatabase;
  readonly policy: ExpiryPolicy;
  /** The node's cache; trusted only while {@link cacheTrust} says so. */
  readonly cache: SessionCache | undefined;
  /** The LISTEN connection's health: a cached row may be served or filled only while it holds. */
  readonly cacheTrust: { readonly healthy: boolean } | undefined;
  readonly touches: TouchBatcher;
  readonly metrics: SessionMetrics;
  readonly logger: Logger;
  /** Reads may go to replicas: writes record their commit LSN as the client's fence. */
  readonly replicas: boolean;
  /** The database can find a new primary: statements run through a FailoverRunner. */
  readonly failover: boolean;
  /** Whether the tables are distributed by Citus: known once the engine has started. */
  readonly topology: Readonly<Topology>;
}

/**
 * Emits an app event off the request path (as koa-session does): a listener that
 * throws is logged, and never turns the response into a 500.
 */
export function emitDeferred(
  app: { emit(event: string, payload: unknown): boolean },
  logger: Logger,
  event: string,
  payload: Record<string, unknown>,
): void {
  setImmediate(() => {
    try {
      app.emit(event, payload);
    } catch (error) {
      logger.error({ err: error, event }, 'a session event listener threw');
    }
  });
}
