import { isIP } from 'node:net';

/**
 * The client's address as the `inet` column can hold it, or null. `ctx.ip` comes from
 * `X-Forwarded-For` when `app.proxy` is on, so it is whatever a client wrote there
 * (`not-an-ip`, `999.1.1.1`, `fe80::1%eth0`): a session is never refused for it.
 */
export function clientAddress(ip: string | undefined): string | null {
  if (!ip) return null;
  // An IPv6 zone (`%eth0`) means nothing beyond the link; inet has no place for it.
  const address = ip.includes('%') ? ip.slice(0, ip.indexOf('%')) : ip;
  return isIP(address) === 0 ? null : address;
}
