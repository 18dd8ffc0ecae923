/**
 * The reports `pg-sessions report` can print: the reporting views of schema
 * `sessions` (migration 20260101000004_audit_and_reporting), each with the column a
 * `--since` filters on and the order that reads best. Only these names ever reach
 * the SQL text.
 */
export interface Report {
  /** The view's name in schema `sessions`. */
  readonly name: string;
  readonly description: string;
  /**
   * What `--since` filters on, or none for reports of the present moment: a
   * timestamp column, or a UTC `day` (date) or `hour` column, whose bucket holding
   * the start counts.
   */
  readonly since?: { readonly column: string; readonly kind: 'timestamp' | 'day' | 'hour' };
  /** ORDER BY: time series newest first, so `--limit` keeps the latest. */
  readonly orderBy: string;
}

export const REPORTS: readonly Report[] = [
  {
    name: 'active_sessions_per_tenant',
    description: 'live sessions, users and anonymous sessions of each tenant, now',
    orderBy: 'active_sessions DESC, tenant_id',
  },
  {
    name: 'sessions_per_user',
    description: 'live sessions and distinct IPs of each user (--since: last seen)',
    since: { column: 'last_seen_at', kind: 'timestamp' },
    orderBy: 'active_sessions DESC, tenant_id, user_id',
  },
  {
    name: 'user_devices',
    description: "each user's live sessions: IP, network, user agent (--since: last seen)",
    since: { column: 'last_seen_at', kind: 'timestamp' },
    orderBy: 'tenant_id, user_id, last_seen_at DESC, session_id',
  },
  {
    name: 'daily_session_counts',
    description: 'sessions created and ended (revoked, expired, destroyed) per UTC day',
    since: { column: 'day', kind: 'day' },
    orderBy: 'day DESC, tenant_id',
  },
  {
    name: 'peak_sessions_per_hour',
    description: 'concurrent sessions at the start and at the peak of each UTC hour',
    since: { column: 'hour', kind: 'hour' },
    orderBy: 'hour DESC, tenant_id',
  },
  {
    name: 'users_with_many_sessions',
    description: 'users with more than 5 live sessions (--since: last seen)',
    since: { column: 'last_seen_at', kind: 'timestamp' },
    orderBy: 'live_sessions DESC, tenant_id, user_id',
  },
  {
    name: 'users_with_many_revocations',
    description: 'users with 3 or more sessions revoked on one UTC day',
    since: { column: 'day', kind: 'day' },
    orderBy: 'day DESC, revocations DESC, tenant_id, user_id',
  },
  {
    name: 'users_with_many_networks',
    description: 'users who logged in from 4 or more networks on one UTC day',
    since: { column: 'day', kind: 'day' },
    orderBy: 'day DESC, networks DESC, tenant_id, user_id',
  },
];

/** The report called `name`, with or without the `sessions.` prefix; undefined if none. */
export function findReport(name: string): Report | undefined {
  const bare = name
    .trim()
    .toLowerCase()
    .replace(/^sessions\./, '');
  return REPORTS.find((report) => report.name === bare);
}
