import { Command, Option } from 'commander';
import type pg from 'pg';
import { LISTENER_APPLICATION_NAME } from '../cache/listener.js';
import {
  describeUrl,
  expectedMigrationVersions,
  MIGRATIONS_TABLE,
  messageOf,
} from '../db/migrator.js';
import { formatLsn, parseLsn } from '../db/replica-router.js';
import { CliError, ExitCode } from './cli-error.js';
import { connect, databaseFailure } from './connection.js';
import { databaseUrl } from './database-url.js';
import { toTable } from './output-format.js';

export interface HostStatus {
  /** host:port/database, without credentials. */
  readonly host: string;
  readonly role: 'primary' | 'replica' | 'down';
  /** Primary: pg_current_wal_lsn(). Replica: the WAL received so far. */
  readonly currentLsn: string | null;
  /** Replica: the WAL replayed so far (what its readers see). */
  readonly replayLsn: string | null;
  /** Replica: WAL bytes not yet replayed, against the primary when it is among the hosts. */
  readonly lagBytes: number | null;
  /**
   * Replica: 0 when caught up, else the age of the last transaction it replayed; null
   * while it has replayed none since it started.
   */
  readonly lagMs: number | null;
  readonly error?: string;
}

export interface StatusReport {
  readonly schema: {
    /** The latest applied migration, or null when none is. */
    readonly version: string | null;
    readonly applied: number;
    readonly pending: readonly string[];
    /** Applied migrations this pg-sessions does not know (the database is ahead of the code). */
    readonly unknown: readonly string[];
  };
  /** Not expired, not revoked; null when this role cannot see every tenant. */
  readonly liveSessions: number | null;
  /** App processes with their LISTEN connection up, on the primary; null without a primary. */
  readonly listeners: number | null;
  readonly hosts: readonly HostStatus[];
}

interface StatusOptions {
  readonly url?: string;
  readonly hosts?: readonly string[];
  readonly format: 'table' | 'json';
}

export function statusCommand(): Command {
  return new Command('status')
    .description(
      "schema version, live sessions, listeners, and each host's role, WAL position and replication lag",
    )
    .option('--url <url>', 'database URL (default: $DATABASE_URL)')
    .option(
      '--hosts <urls>',
      'comma-separated URLs of the primary and replicas (instead of --url)',
      hostList,
    )
    .addOption(
      new Option('--format <format>', 'output format').choices(['table', 'json']).default('table'),
    )
    .addHelpText(
      'after',
      `
Exits 0 when all is well; 1 when migrations are pending (or unknown to this
version), a host is down, or two hosts claim to be the primary; 2 when no host
can be reached.`,
    )
    .action(async (options: StatusOptions) => {
      const urls = options.hosts ?? [databaseUrl(options.url)];
      const report = await collectStatus(urls);
      process.stdout.write(
        options.format === 'json' ? `${JSON.stringify(report, null, 2)}\n` : renderStatus(report),
      );
      const healthy =
        report.schema.pending.length === 0 &&
        report.schema.unknown.length === 0 &&
        report.hosts.every((host) => host.role !== 'down') &&
        // Two primaries: an old one that was not fenced off after a failover.
        report.hosts.filter((host) => host.role === 'primary').length <= 1;
      if (!healthy) process.exitCode = ExitCode.failed;
    });
}

function hostList(value: string): string[] {
  const urls = value
    .split(',')
    .map((url) => url.trim())
    .filter((url) => url !== '');
  if (urls.length === 0) throw new CliError('--hosts needs at least one URL');
  return urls.map((url) => databaseUrl(url));
}

interface Probe {
  readonly url: string;
  readonly client: pg.Client | undefined;
  readonly standby: boolean;
  readonly currentLsn: bigint | undefined;
  readonly replayLsn: bigint | undefined;
  readonly replayAgeMs: number | null;
  readonly error?: string;
}

export async function collectStatus(urls: readonly string[]): Promise<StatusReport> {
  const probes = await Promise.all(urls.map(probe));
  try {
    const reachable = probes.filter((host) => host.client);
    if (reachable.length === 0) {
      const first = probes[0];
      throw new CliError(
        `cannot connect to ${first ? `${describeUrl(first.url)}: ${first.error}` : 'any host'}`,
      );
    }
    // Two primaries (an old one not yet fenced off): the newest WAL wins, as in the router.
    const primary = reachable
      .filter((host) => !host.standby)
      .sort((a, b) => Number((b.currentLsn ?? 0n) - (a.currentLsn ?? 0n)))[0];
    const target = (primary ?? reachable[0]) as Probe;
    const client = target.client as pg.Client;
    let database: Awaited<ReturnType<typeof databaseFacts>>;
    try {
      database = await databaseFacts(client, primary !== undefined);
    } catch (error) {
      throw databaseFailure(error, target.url);
    }
    return { ...database, hosts: probes.map((host) => hostStatus(host, primary)) };
  } finally {
    await Promise.all(probes.map((host) => host.client?.end().catch(() => {})));
  }
}

async function probe(url: string): Promise<Probe> {
  let client: pg.Client | undefined;
  try {
    client = await connect(url);
    const { rows } = await client.query<{
      standby: boolean;
      current_lsn: string | null;
      replay_lsn: string | null;
      replay_age_ms: number | null;
    }>(
      `SELECT pg_is_in_recovery() AS standby,
              CASE WHEN pg_is_in_recovery() THEN pg_last_wal_receive_lsn()
                   ELSE pg_current_wal_lsn() END::text AS current_lsn,
              CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() END::text AS replay_lsn,
              CASE WHEN pg_is_in_recovery()
                   THEN (extract(epoch FROM clock_timestamp() - pg_last_xact_replay_timestamp()) * 1000)::float8
              END AS replay_age_ms`,
    );
    const row = rows[0];
    return {
      url,
      client,
      standby: row?.standby === true,
      currentLsn: row?.current_lsn ? parseLsn(row.current_lsn) : undefined,
      replayLsn: row?.replay_lsn ? parseLsn(row.replay_lsn) : undefined,
      replayAgeMs: row?.replay_age_ms ?? null,
    };
  } catch (error) {
    await client?.end().catch(() => {});
    // The reason alone: the host is its own field.
    const prefix = `cannot connect to ${describeUrl(url)}: `;
    const message = messageOf(error);
    const reason = message.startsWith(prefix) ? message.slice(prefix.length) : message;
    return {
      url,
      client: undefined,
      standby: false,
      currentLsn: undefined,
      replayLsn: undefined,
      replayAgeMs: null,
      error: reason,
    };
  }
}

function hostStatus(host: Probe, primary: Probe | undefined): HostStatus {
  const base = { host: describeUrl(host.url) };
  if (!host.client) {
    return {
      ...base,
      role: 'down',
      currentLsn: null,
      replayLsn: null,
      lagBytes: null,
      lagMs: null,
      error: host.error,
    };
  }
  const lsn = (value: bigint | undefined) => (value === undefined ? null : formatLsn(value));
  if (!host.standby) {
    return {
      ...base,
      role: 'primary',
      currentLsn: lsn(host.currentLsn),
      replayLsn: null,
      lagBytes: null,
      lagMs: null,
    };
  }
  // Behind the primary when it is among the hosts; else behind what this replica received.
  const reference = primary?.currentLsn ?? host.currentLsn;
  const lagBytes =
    reference !== undefined && host.replayLsn !== undefined
      ? Number(reference > host.replayLsn ? reference - host.replayLsn : 0n)
      : null;
  // An idle primary sends no transactions: a replica that replayed everything has no lag,
  // however old its last replayed transaction is.
  const lagMs =
    lagBytes === 0
      ? 0
      : host.replayAgeMs === null
        ? null
        : Math.max(0, Math.round(host.replayAgeMs));
  return {
    ...base,
    role: 'replica',
    currentLsn: lsn(host.currentLsn),
    replayLsn: lsn(host.replayLsn),
    lagBytes,
    lagMs,
  };
}

async function databaseFacts(
  client: pg.Client,
  onPrimary: boolean,
): Promise<Omit<StatusReport, 'hosts'>> {
  const expected = await expectedMigrationVersions();
  const facts = await client.query<{ installed: boolean; migrations: boolean; sees_all: boolean }>(
    `SELECT to_regclass('sessions.session') IS NOT NULL AS installed,
            to_regclass($1) IS NOT NULL AS migrations,
            (SELECT rolsuper OR rolbypassrls FROM pg_roles WHERE rolname = current_user)
              OR (to_regrole('sessions_admin') IS NOT NULL AND pg_has_role(current_user, 'sessions_admin', 'USAGE'))
              OR (to_regrole('sessions_auditor') IS NOT NULL AND pg_has_role(current_user, 'sessions_auditor', 'USAGE'))
              AS sees_all`,
    [MIGRATIONS_TABLE],
  );
  const {
    installed,
    migrations,
    sees_all: seesAll,
  } = facts.rows[0] ?? {
    installed: false,
    migrations: false,
    sees_all: false,
  };
  const applied = migrations
    ? (
        await client.query<{ version: string }>(
          `SELECT version FROM ${MIGRATIONS_TABLE} ORDER BY version`,
        )
      ).rows.map((row) => row.version)
    : [];
  const liveSessions =
    installed && seesAll
      ? Number(
          (
            await client.query<{ n: number }>(
              'SELECT count(*) AS n FROM sessions.session WHERE revoked_at IS NULL AND expires_at > now()',
            )
          ).rows[0]?.n ?? 0,
        )
      : null;
  // LISTEN runs on the primary only: a replica has no listeners to count.
  const listeners = onPrimary
    ? Number(
        (
          await client.query<{ n: number }>(
            `SELECT count(*) AS n FROM pg_stat_activity
              WHERE application_name = $1 AND datname = current_database()`,
            [LISTENER_APPLICATION_NAME],
          )
        ).rows[0]?.n ?? 0,
      )
    : null;
  return {
    schema: {
      version: applied.at(-1) ?? null,
      applied: applied.length,
      pending: expected.filter((version) => !applied.includes(version)),
      unknown: applied.filter((version) => !expected.includes(version)),
    },
    liveSessions,
    listeners,
  };
}

function liveSessions(report: StatusReport): string {
  if (report.liveSessions !== null) return `${report.liveSessions} live`;
  return report.schema.version === null
    ? 'unknown (no schema)'
    : 'unknown (this role cannot see every tenant: use one granted sessions_auditor)';
}

function renderStatus(report: StatusReport): string {
  const { schema } = report;
  const schemaLine =
    schema.version === null
      ? `not installed (${schema.pending.length} pending: run \`pg-sessions migrate up\`)`
      : `${schema.version} (${schema.applied} applied, ${schema.pending.length} pending${
          schema.unknown.length > 0 ? `, ${schema.unknown.length} unknown to this version` : ''
        })`;
  const lines = [
    `schema     ${schemaLine}`,
    `sessions   ${liveSessions(report)}`,
    `listeners  ${report.listeners === null ? 'unknown (no primary among the hosts)' : report.listeners}`,
    '',
  ];
  const hosts = report.hosts.map((host) => ({
    host: host.host,
    role: host.role,
    current_lsn: host.currentLsn,
    replay_lsn: host.replayLsn,
    lag_bytes: host.lagBytes,
    lag_ms: host.lagMs,
    error: host.error,
  }));
  const columns = ['host', 'role', 'current_lsn', 'replay_lsn', 'lag_bytes', 'lag_ms'];
  if (hosts.some((host) => host.error)) columns.push('error');
  return `${lines.join('\n')}\n${toTable(columns, hosts, { rowCount: false, nullAs: '-' })}`;
}
