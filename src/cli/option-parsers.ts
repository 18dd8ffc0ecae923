import { InvalidArgumentError } from 'commander';

// Commander calls these with the raw text; an InvalidArgumentError becomes
// "error: option '--x <n>' argument 'y' is invalid. <message>" and exit code 2.

/** A whole number from `min` to `max`. */
export function wholeNumber(min: number, max = Number.MAX_SAFE_INTEGER): (value: string) => number {
  return (value) => {
    const parsed = /^\d+$/.test(value.trim()) ? Number(value) : Number.NaN;
    if (!Number.isSafeInteger(parsed) || parsed < min || parsed > max) {
      throw new InvalidArgumentError(
        max === Number.MAX_SAFE_INTEGER
          ? `expected a whole number of at least ${min}`
          : `expected a whole number from ${min} to ${max}`,
      );
    }
    return parsed;
  };
}

export const positiveInteger = wholeNumber(1);

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

/** A session id: a UUID, as `ctx.sessions.id` and the reports show it. */
export function sessionId(value: string): string {
  const trimmed = value.trim();
  if (!UUID.test(trimmed)) {
    throw new InvalidArgumentError('expected a session id (a UUID like 0b7e…-…-…-…-…)');
  }
  return trimmed.toLowerCase();
}

/** A non-empty text of at most `max` characters (the database checks the same). */
export function text(max: number): (value: string) => string {
  return (value) => {
    if (value.trim() === '' || value.length > max) {
      throw new InvalidArgumentError(`expected 1 to ${max} characters`);
    }
    return value;
  };
}

/** A point in time a report starts from: a fixed instant, or an age back from now. */
export type Since =
  | { readonly kind: 'instant'; readonly iso: string }
  | { readonly kind: 'interval'; readonly interval: string };

const DATE = /^\d{4}-\d{2}-\d{2}$/;
const DATE_TIME =
  /^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}(?::?\d{2})?)?$/i;
const SHORT_INTERVAL =
  /^(\d+)\s*(m|mins?|minutes?|h|hours?|d|days?|w|weeks?|mons?|months?|y|years?)$/i;
const ISO_DURATION =
  /^P(?=\d|T\d)(?:\d+Y)?(?:\d+M)?(?:\d+W)?(?:\d+D)?(?:T(?:\d+H)?(?:\d+M)?(?:\d+S)?)?$/i;

function unitName(unit: string): string {
  const lower = unit.toLowerCase();
  if (lower.startsWith('mon')) return 'months';
  if (lower === 'm' || lower.startsWith('min')) return 'minutes';
  const names: Record<string, string> = { h: 'hours', d: 'days', w: 'weeks', y: 'years' };
  return names[lower[0] ?? ''] ?? lower;
}

/**
 * `--since`: an ISO date (`2026-11-01`, midnight UTC, as the reports' days are UTC),
 * an ISO timestamp (`2026-11-01T12:00Z`; UTC when it names no zone), or an age back
 * from the database's now (`90m`, `24h`, `7d`, `2w`, `7 days`, `P7D`).
 */
export function since(value: string): Since {
  const trimmed = value.trim();
  if (DATE.test(trimmed) || DATE_TIME.test(trimmed)) {
    let candidate = DATE.test(trimmed) ? `${trimmed}T00:00:00Z` : trimmed.replace(' ', 'T');
    if (!/(?:Z|[+-]\d{2}(?::?\d{2})?)$/i.test(candidate)) candidate += 'Z';
    const instant = new Date(candidate);
    if (!Number.isNaN(instant.getTime())) return { kind: 'instant', iso: instant.toISOString() };
  }
  const interval = intervalText(trimmed);
  if (interval) return { kind: 'interval', interval };
  throw new InvalidArgumentError(
    'expected an ISO date (2026-11-01), a timestamp (2026-11-01T12:00Z) or an age (90m, 24h, 7d, 2w)',
  );
}

/** `--older-than`: an age (`90m`, `24h`, `7d`, `2w`, `3 months`, `P30D`), as a Postgres interval. */
export function age(value: string): string {
  const interval = intervalText(value.trim());
  if (!interval) {
    throw new InvalidArgumentError('expected an age: 90m, 24h, 7d, 2w, 3 months or P30D');
  }
  return interval;
}

/** An age in the forms above, spelled for Postgres' interval input; undefined if it is none. */
function intervalText(text: string): string | undefined {
  const short = SHORT_INTERVAL.exec(text);
  if (short) {
    const [, amount, unit = ''] = short;
    return `${amount} ${unitName(unit)}`;
  }
  return ISO_DURATION.test(text) ? text.toUpperCase() : undefined;
}
