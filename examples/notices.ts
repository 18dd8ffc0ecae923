// The one-line notices at the top of a page: why this device was signed out (from
// ctx.sessions.ended), and what the user just did. A notice survives one redirect in a
// short-lived signed cookie of its own: the device's session is gone, so it cannot
// carry it, and a cookie costs no database write.
import type Koa from 'koa';
import type { SessionEnd } from '../src/index.js';
import { escapeHtml, timeTag } from './format.js';

/** What happened, by code; the words are chosen at render time, never taken from input. */
export type Notice =
  | { readonly code: 'ended'; readonly ended: SessionEnd; readonly maxSessions?: number }
  | { readonly code: 'signed-out' }
  | { readonly code: 'signed-out-here' }
  | { readonly code: 'device-signed-out'; readonly device: string }
  | { readonly code: 'others-signed-out'; readonly count: number };

const COOKIE = 'notice';

/** The reasons the demo's own revocations store (revoke() and revokeUser() take any). */
export const REVOKED_DEVICE = 'user_revoked_device';
export const REVOKED_OTHERS = 'user_logout_others';

/** Is it bad news about this device (amber), or the outcome of the user's own action (green)? */
export function noticeTone(notice: Notice): 'warning' | 'success' {
  return notice.code === 'ended' ? 'warning' : 'success';
}

/** The notice as HTML (escaped: a revocation reason is whatever an admin typed). */
export function noticeHtml(notice: Notice, now = new Date()): string {
  switch (notice.code) {
    case 'ended':
      return endedHtml(notice.ended, notice.maxSessions, now);
    case 'signed-out':
      return 'You signed out.';
    case 'signed-out-here':
      return 'You signed out this device. Your other devices stay signed in.';
    case 'device-signed-out':
      return `Signed out <b>${escapeHtml(notice.device)}</b>. It will be asked to sign in again.`;
    case 'others-signed-out':
      return notice.count === 1
        ? 'Signed out 1 other device.'
        : `Signed out ${notice.count} other devices.`;
  }
}

function endedHtml(ended: SessionEnd, maxSessions: number | undefined, now: Date): string {
  const when = timeTag(ended.endedAt, now);
  if (ended.reason === 'expired') {
    return `Your session expired ${when}. Sign in again to continue.`;
  }
  switch (ended.revokedReason) {
    case REVOKED_DEVICE:
      return `This device was signed out ${when} from another of your devices.`;
    case REVOKED_OTHERS:
      return `This device was signed out ${when}: you chose “Log out everywhere else” on another device.`;
    case 'max_sessions':
      return `This device was signed out ${when} because you signed in on more than ${maxSessions ?? 'the allowed number of'} devices; the oldest sign-in ends first.`;
    default:
      return `This device was signed out ${when} by the site${
        ended.revokedReason ? ` (${escapeHtml(ended.revokedReason)})` : ''
      }.`;
  }
}

/**
 * Middleware: sets `ctx.state.notice` from why the presented session ended, or from the
 * notice a redirect carried; a handler may set its own. A page that renders shows it and
 * so consumes it; a redirect carries it to the next page.
 */
export async function notices(ctx: Koa.Context, next: Koa.Next): Promise<void> {
  const carried = readCarried(ctx);
  const ended = ctx.sessions.ended;
  ctx.state.notice = ended
    ? ({ code: 'ended', ended, maxSessions: ctx.sessions.maxSessionsPerUser } satisfies Notice)
    : carried;
  await next();
  const notice = ctx.state.notice as Notice | undefined;
  const options = { signed: true, httpOnly: true, sameSite: 'lax', secure: ctx.secure } as const;
  if (notice && ctx.status >= 300 && ctx.status < 400) {
    ctx.cookies.set(COOKIE, encode(notice), { ...options, maxAge: 60_000 });
  } else if (carried) {
    ctx.cookies.set(COOKIE, null, options);
  }
}

function encode(notice: Notice): string {
  return Buffer.from(JSON.stringify(notice)).toString('base64url');
}

/** The carried notice: signed by app.keys, so it is ours; its shape is still checked. */
function readCarried(ctx: Koa.Context): Notice | undefined {
  const value = ctx.cookies.get(COOKIE, { signed: true });
  if (!value) return undefined;
  try {
    const notice = JSON.parse(Buffer.from(value, 'base64url').toString('utf8')) as Notice;
    if (notice.code === 'ended') {
      const endedAt = new Date(notice.ended.endedAt);
      if (Number.isNaN(endedAt.getTime())) return undefined;
      return { ...notice, ended: { ...notice.ended, endedAt } };
    }
    if (notice.code === 'device-signed-out' && typeof notice.device !== 'string') return undefined;
    if (notice.code === 'others-signed-out' && !Number.isInteger(notice.count)) return undefined;
    return ['signed-out', 'signed-out-here', 'device-signed-out', 'others-signed-out'].includes(
      notice.code,
    )
      ? notice
      : undefined;
  } catch {
    return undefined;
  }
}
