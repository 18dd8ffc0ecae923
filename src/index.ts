/**
 * pg-sessions: PostgreSQL-backed sessions for Koa.
 * @module
 */
export { SessionControl } from './control.js';
export {
  describeUrl,
  expectedMigrationVersions,
  MIGRATION_LOCK,
  MIGRATIONS_DIR,
  MIGRATIONS_TABLE,
  type MigrateAction,
  type MigrateOptions,
  type MigrateResult,
  MigrationError,
  migrate,
} from './db/migrator.js';
export {
  formatLsn,
  type HostConfig,
  type HostState,
  parseLsn,
  ReplicaRouter,
  type ReplicaRouterOptions,
  type RouterCounters,
} from './db/replica-router.js';
export { isSessionDatabase, type SessionDatabase, SinglePoolDatabase } from './db/router.js';
export type {
  EventTable,
  PreviousTokenTable,
  RequestDatabase,
  SessionsDatabase,
  SessionTable,
} from './db/schema.js';
export { SqlState } from './db/sqlstate.js';
export {
  SessionConflictError,
  SessionDataError,
  SessionError,
  SessionLockTimeoutError,
  SessionOptionsError,
  SessionSchemaError,
  SessionStateError,
  SessionStoreUnavailableError,
  SessionTooLargeError,
} from './errors.js';
export type { GcRunResult } from './jobs/garbage-collector.js';
export { collectGarbage, GC_LOCK } from './jobs/garbage-collector.js';
export type { Logger } from './logger.js';
export type {
  CounterName,
  MetricsSnapshot,
  SessionMetrics,
  TimingName,
  TimingSnapshot,
} from './metrics.js';
export { TIMING_BUCKETS } from './metrics.js';
export { type SessionMiddleware, sessions } from './middleware.js';
export type {
  CacheOptions,
  ConcurrencyMode,
  CookieOptions,
  GcOptions,
  ResolvedOptions,
  SessionOptions,
  TransactionMode,
} from './options.js';
export { type PrometheusRegistry, registerPrometheusMetrics } from './prometheus.js';
export type { Session } from './session.js';
export type { DeviceSession, SessionEnd, SessionRecord } from './store.js';
