// Text for the demo's pages: HTML escaping and times ("2 minutes ago", exact on hover).

/** Text made safe for HTML content and attribute values. */
export function escapeHtml(text: string): string {
  return text.replace(/[&<>"']/g, (char) => `&#${char.charCodeAt(0)};`);
}

const relative = new Intl.RelativeTimeFormat('en', { numeric: 'auto' });

/** Units from the largest down, each with its length in seconds. */
const UNITS: readonly [Intl.RelativeTimeFormatUnit, number][] = [
  ['year', 365 * 24 * 3600],
  ['month', 30 * 24 * 3600],
  ['week', 7 * 24 * 3600],
  ['day', 24 * 3600],
  ['hour', 3600],
  ['minute', 60],
];

/**
 * "just now", "2 minutes ago", "yesterday", "in 2 weeks": the largest whole unit, so
 * that a list of devices reads at a glance. Under 45 seconds either way is "just now".
 */
export function relativeTime(date: Date, now: Date = new Date()): string {
  const seconds = (date.getTime() - now.getTime()) / 1000;
  if (Math.abs(seconds) < 45) return 'just now';
  // The largest unit reached in full, rounded: 13 hours is not "yesterday", 90 s is 2 minutes.
  for (const [unit, length] of UNITS) {
    if (Math.abs(seconds) >= length) {
      // Half away from zero, the same both ways (Math.round takes -1.5 to -1).
      return relative.format(Math.sign(seconds) * Math.round(Math.abs(seconds) / length), unit);
    }
  }
  return relative.format(Math.sign(seconds), 'minute');
}

const exact = new Intl.DateTimeFormat('en-GB', {
  dateStyle: 'medium',
  timeStyle: 'medium',
  timeZone: 'UTC',
});

/** "30 Nov 2026, 05:25:16 UTC": the server does not know the reader's time zone. */
export function exactTime(date: Date): string {
  return `${exact.format(date)} UTC`;
}

/** A `<time>` that reads relative and shows the exact time on hover. */
export function timeTag(date: Date, now: Date = new Date()): string {
  return `<time datetime="${date.toISOString()}" title="${exactTime(date)}">${relativeTime(date, now)}</time>`;
}
