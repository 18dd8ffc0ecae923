/** How a result set is written to stdout. */
export type OutputFormat = 'table' | 'csv' | 'json';
export const OUTPUT_FORMATS: readonly OutputFormat[] = ['table', 'csv', 'json'];

export type Row = Readonly<Record<string, unknown>>;

/** Writes `rows` (with `columns` in order, so an empty result still has a header). */
export function formatRows(
  format: OutputFormat,
  columns: readonly string[],
  rows: readonly Row[],
): string {
  switch (format) {
    case 'json':
      return `${JSON.stringify(
        rows.map((row) => pick(row, columns)),
        null,
        2,
      )}\n`;
    case 'csv':
      return toCsv(columns, rows);
    case 'table':
      return toTable(columns, rows);
  }
}

function pick(row: Row, columns: readonly string[]): Record<string, unknown> {
  const picked: Record<string, unknown> = {};
  for (const column of columns) picked[column] = row[column] ?? null;
  return picked;
}

/**
 * RFC 4180: a header line, CRLF line ends, a field quoted when it holds a comma, a
 * quote or a line break, quotes doubled. NULL is an empty field; an array is written
 * as JSON (unambiguous, and any CSV reader hands it back as one field).
 */
export function toCsv(columns: readonly string[], rows: readonly Row[]): string {
  const lines = [columns.map(csvField).join(',')];
  for (const row of rows) {
    lines.push(columns.map((column) => csvField(csvValue(row[column]))).join(','));
  }
  return `${lines.join('\r\n')}\r\n`;
}

function csvValue(value: unknown): string {
  if (value === null || value === undefined) return '';
  if (Array.isArray(value) || (typeof value === 'object' && !(value instanceof Date))) {
    return JSON.stringify(value);
  }
  return value instanceof Date ? value.toISOString() : String(value);
}

function csvField(value: string): string {
  return /[",\r\n]/.test(value) ? `"${value.replaceAll('"', '""')}"` : value;
}

/** A cell longer than this is cut in tables (csv and json carry the whole value). */
const CELL_WIDTH = 60;

/**
 * Columns aligned for a terminal, numbers to the right, in the spirit of psql:
 * a header, a rule, the rows, and the row count.
 */
export function toTable(
  columns: readonly string[],
  rows: readonly Row[],
  options: { readonly rowCount?: boolean; readonly nullAs?: string } = {},
): string {
  const cells = rows.map((row) =>
    columns.map((column) =>
      row[column] == null ? (options.nullAs ?? '') : tableValue(row[column]),
    ),
  );
  const numeric = columns.map(
    (column) =>
      rows.some((row) => typeof row[column] === 'number') &&
      rows.every((row) => typeof row[column] === 'number' || row[column] == null),
  );
  const widths = columns.map((column, index) =>
    Math.max(column.length, ...cells.map((line) => (line[index] as string).length)),
  );
  const render = (line: readonly string[]) =>
    line
      .map((cell, index) =>
        numeric[index] ? cell.padStart(widths[index] ?? 0) : cell.padEnd(widths[index] ?? 0),
      )
      .join('  ')
      .trimEnd();
  const out = [render(columns), widths.map((width) => '-'.repeat(width)).join('  ')];
  for (const line of cells) out.push(render(line));
  if (options.rowCount !== false)
    out.push(`(${rows.length} ${rows.length === 1 ? 'row' : 'rows'})`);
  return `${out.join('\n')}\n`;
}

function tableValue(value: unknown): string {
  let text: string;
  if (value === null || value === undefined) text = '';
  else if (Array.isArray(value)) text = value.map((item) => String(item)).join(', ');
  else if (value instanceof Date) text = value.toISOString();
  else if (typeof value === 'object') text = JSON.stringify(value);
  else text = String(value);
  // A line break or tab would break the alignment.
  text = text.replace(/[\r\n\t]+/g, ' ');
  return text.length > CELL_WIDTH ? `${text.slice(0, CELL_WIDTH - 1)}…` : text;
}

/** `1 session`, `2 sessions`: a count with its noun, for the commands' one-line results. */
export function counted(count: number, noun: string): string {
  return `${count} ${count === 1 ? noun : `${noun}s`}`;
}
