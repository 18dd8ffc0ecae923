// A load generator's cookie jar over autocannon's responses, as a browser keeps one:
// shared by bench/load.ts and bench/create-load.ts.

/** A `Cookie` request header as name → value. */
export function parseCookieHeader(header: string): Map<string, string> {
  const jar = new Map<string, string>();
  for (const pair of header.split(';')) {
    const at = pair.indexOf('=');
    if (at > 0) jar.set(pair.slice(0, at).trim(), pair.slice(at + 1).trim());
  }
  return jar;
}

/** A Set-Cookie line: an empty value (or one already expired) deletes the cookie. */
export function applySetCookie(jar: Map<string, string>, line: string): void {
  const [pair = '', ...attributes] = line.split(';');
  const at = pair.indexOf('=');
  if (at <= 0) return;
  const name = pair.slice(0, at).trim();
  const value = pair.slice(at + 1).trim();
  const expired = attributes.some((attribute) => {
    const [key = '', date = ''] = attribute.split('=');
    return key.trim().toLowerCase() === 'expires' && Date.parse(date) <= Date.now();
  });
  if (value === '' || expired) jar.delete(name);
  else jar.set(name, value);
}

/** autocannon keeps the raw header names; a repeated header comes as an array. */
export function headerValues(
  headers: Record<string, unknown> | undefined,
  wanted: string,
): string[] {
  const values: string[] = [];
  for (const [name, value] of Object.entries(headers ?? {})) {
    if (name.toLowerCase() !== wanted) continue;
    for (const item of Array.isArray(value) ? value : [value]) {
      if (typeof item === 'string') values.push(item);
    }
  }
  return values;
}
