/**
 * pg-sessions: PostgreSQL-backed sessions for Koa. Everything exported here is the
 * documented API (README, "API"); the rest of `src/` is internal and may change.
 * @module
 */
export {
  LIFECYCLE_EVENTS,
  type SessionLifecycleEvent,
  type SessionLifecycleEventName,
} from './cache/lifecycle.js';
export {
  type MigrateAction,
  type MigrateOptions,
  type MigrateResult,
  MigrationError,
  migrate,
} from './db/migrator.js';
export {
  type HostConfig,
  type HostState,
  ReplicaRouter,
  type ReplicaRouterOptions,
} from './db/replica-router.js';
export type { SessionDatabase } from './db/router.js';
export type { RequestDatabase } from './db/schema.js';
export {
  SessionConflictError,
  SessionCsrfError,
  SessionDataError,
  SessionError,
  SessionLockTimeoutError,
  SessionOptionsError,
  SessionReauthenticationRequiredError,
  SessionSchemaError,
  SessionStateError,
  SessionStoreUnavailableError,
  SessionTooLargeError,
} from './errors.js';
export { collectGarbage, type GcRunResult } from './jobs/garbage-collector.js';
export type { Logger } from './logger.js';
export { type MetricsSnapshot, type SessionMetrics, TIMING_BUCKETS } from './metrics.js';
export { type SessionMiddleware, sessions } from './middleware.js';
export type {
  CacheOptions,
  ConcurrencyMode,
  CookieOptions,
  CsrfOptions,
  Durability,
  GcOptions,
  ResolvedOptions,
  SessionOptions,
  TransactionMode,
} from './options/types.js';
export { type PrometheusRegistry, registerPrometheusMetrics } from './prometheus.js';
export type { SessionControl } from './request/control.js';
export { requireFresh } from './request/require-fresh.js';
export type { Session } from './session.js';
export type { DeviceSession, SessionEnd } from './store/records.js';
