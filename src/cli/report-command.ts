import { Command, Option } from 'commander';
import { CliError } from './cli-error.js';
import { withClient } from './connection.js';
import { databaseUrl } from './database-url.js';
import { positiveInteger, type Since, since, text } from './option-parsers.js';
import { formatRows, OUTPUT_FORMATS, type OutputFormat } from './output-format.js';
import { findReport, REPORTS, type Report } from './report-catalog.js';

interface ReportOptions {
  readonly list?: boolean;
  readonly format: OutputFormat;
  readonly since?: Since;
  readonly tenant?: string;
  readonly limit?: number;
  readonly url?: string;
}

export function reportCommand(): Command {
  return new Command('report')
    .description('print a reporting view of schema sessions as a table, CSV (RFC 4180) or JSON')
    .argument('[name]', 'the report: a view of schema sessions, with or without "sessions."')
    .option('--list', 'list the reports, one line each (also what `report` alone does)')
    .addOption(
      new Option('--format <format>', 'output format').choices(OUTPUT_FORMATS).default('table'),
    )
    .option(
      '--since <when>',
      'only rows from then on: 2026-11-01, 2026-11-01T12:00Z (UTC unless zoned) or an age: 90m, 24h, 7d, 2w',
      since,
    )
    .option('--tenant <tenant>', 'only this tenant', text(200))
    .option('--limit <n>', 'at most n rows (time series come newest first)', positiveInteger)
    .option('--url <url>', 'database URL (default: $DATABASE_URL); a replica will do')
    .addHelpText('after', `\nReports:\n${listing()}`)
    .action(async (name: string | undefined, options: ReportOptions) => {
      if (options.list || name === undefined) {
        process.stdout.write(
          options.format === 'json'
            ? `${JSON.stringify(
                REPORTS.map(({ name, description }) => ({ name, description })),
                null,
                2,
              )}\n`
            : listing(),
        );
        return;
      }
      const report = findReport(name);
      if (!report) {
        throw new CliError(
          `no report called "${name}": one of ${REPORTS.map((r) => r.name).join(', ')}`,
        );
      }
      const query = reportQuery(report, options);
      const url = databaseUrl(options.url);
      const { columns, rows } = await withClient(
        url,
        async (client) => {
          // Read-only, so that a mistyped URL to the primary cannot write, and a replica serves it.
          await client.query('BEGIN READ ONLY');
          // The tenant also for row-level security: a role that sees one tenant at a time sees it.
          if (options.tenant) {
            await client.query("SELECT set_config('sessions.tenant', $1, true)", [options.tenant]);
          }
          const result = await client.query(query.text, query.values);
          await client.query('COMMIT');
          return { columns: result.fields.map((field) => field.name), rows: result.rows };
        },
        { permission: 'reports need a role granted sessions_auditor' },
      );
      process.stdout.write(formatRows(options.format, columns, rows));
    });
}

/** The report's SELECT: the view's name from the catalog, every user value a parameter. */
export function reportQuery(
  report: Report,
  options: Pick<ReportOptions, 'since' | 'tenant' | 'limit'>,
): { text: string; values: unknown[] } {
  const values: unknown[] = [];
  const where: string[] = [];
  if (options.tenant !== undefined) {
    values.push(options.tenant);
    where.push(`tenant_id = $${values.length}`);
  }
  if (options.since) {
    if (!report.since) {
      throw new CliError(`report ${report.name} shows the present only: --since does not apply`);
    }
    values.push(options.since.kind === 'instant' ? options.since.iso : options.since.interval);
    const start =
      options.since.kind === 'instant'
        ? `$${values.length}::timestamptz`
        : `(now() - $${values.length}::interval)`;
    const { column, kind } = report.since;
    const bound =
      kind === 'day'
        ? `(${start} AT TIME ZONE 'UTC')::date`
        : kind === 'hour'
          ? `date_trunc('hour', ${start}, 'UTC')`
          : start;
    where.push(`${column} >= ${bound}`);
  }
  let text = `SELECT * FROM sessions.${report.name}`;
  if (where.length > 0) text += ` WHERE ${where.join(' AND ')}`;
  text += ` ORDER BY ${report.orderBy}`;
  if (options.limit !== undefined) {
    values.push(options.limit);
    text += ` LIMIT $${values.length}`;
  }
  return { text, values };
}

function listing(): string {
  const width = Math.max(...REPORTS.map((report) => report.name.length));
  return REPORTS.map((report) => `  ${report.name.padEnd(width)}  ${report.description}\n`).join(
    '',
  );
}
