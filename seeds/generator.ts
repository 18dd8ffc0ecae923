import { createHash } from 'node:crypto';
import { GC_ACTOR } from '../src/jobs/garbage-collector.js';
import { Random } from './random.js';

/** The actor of GC's deletions, as the in-process collector logs them. */
export { GC_ACTOR };

/**
 * The deterministic story the seed tells: tenants of very different sizes, their
 * users (a few of them very busy), and every session's life across the weeks before
 * `now` — created, perhaps bound to a user at login, updated, then logged out,
 * revoked (alone or with all of the user's sessions at once, as after a password
 * change) or expired and collected by GC. The same options always give the same
 * sessions; only `now` moves them in time.
 */
export interface SeedOptions {
  /** How many sessions are created over the whole history. */
  readonly sessions: number;
  /** The PRNG seed. @default 20260101 */
  readonly seed?: number;
  /** How many tenants (at most {@link TENANT_NAMES}.length). @default 6 */
  readonly tenants?: number;
  /** How many weeks of history end at `now`. @default 4 */
  readonly weeks?: number;
  /**
   * Only sessions still going at `now` (created within the idle timeout, none ended)
   * instead of weeks of history: every seeded row is live, as a scale benchmark wants
   * its table. `weeks` does not apply. @default false
   */
  readonly live?: boolean;
  /**
   * With `live`: how many of the sessions (spread evenly among them) had their idle
   * timeout pass before `now` and wait for garbage collection, a collector's backlog.
   * @default 0
   */
  readonly expired?: number;
  /** The end of the history: the database's clock when seeding. */
  readonly now: Date;
}

export interface ResolvedSeedOptions {
  readonly sessions: number;
  readonly seed: number;
  readonly tenants: readonly string[];
  readonly weeks: number;
  readonly live: boolean;
  readonly expired: number;
  /** Epoch milliseconds. */
  readonly now: number;
  readonly start: number;
}

export type EndingKind = 'destroyed' | 'revoked' | 'expired';

/** The event that ended a session, when it happened before `now`. */
export interface SeedEnding {
  readonly kind: EndingKind;
  /** Epoch ms: logout, revocation, or (for `expired`) the GC run that collected it. */
  readonly at: number;
  readonly reason: string | null;
  readonly actor: string;
}

/** One session's whole life; times are epoch milliseconds. */
export interface SeedSession {
  readonly tenantId: string;
  readonly id: string;
  /** The user it was bound to, or null for an anonymous session. */
  readonly userId: string | null;
  /** When it was bound: `createdAt` when bound at creation, later after a login, null if never. */
  readonly boundAt: number | null;
  readonly createdAt: number;
  readonly lastSeenAt: number;
  readonly idleExpiresAt: number;
  readonly absoluteExpiresAt: number;
  /** Data changes after creation (and after the login), each an `updated` event. */
  readonly updates: number;
  readonly ending: SeedEnding | null;
  /** When GC removed the row of a revoked session ('purged'), if it did before `now`. */
  readonly purgedAt: number | null;
  readonly ip: string;
  readonly userAgent: string;
}

export const IDLE_TIMEOUT_MS = 24 * 3_600_000;
export const ABSOLUTE_TIMEOUT_MS = 7 * 24 * 3_600_000;
export const TENANT_NAMES = [
  'acme',
  'globex',
  'initech',
  'umbrella',
  'hooli',
  'soylent',
  'tyrell',
  'wonka',
  'stark',
  'wayne',
  'cyberdyne',
  'aperture',
] as const;
export const USER_AGENTS = [
  'Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36',
  'Mozilla/5.0 (Macintosh; Intel Mac OS X 14_6) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Safari/605.1.15',
  'Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0',
  'Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Mobile/15E148 Safari/604.1',
  'Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Mobile Safari/537.36',
  'Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36 Edg/131.0.0.0',
  'okhttp/4.12.0',
  'MyApp/3.2.1 (iOS 18.1; iPad)',
] as const;

const MINUTE = 60_000;
const HOUR = 60 * MINUTE;
const DAY = 24 * HOUR;
/** Sessions over the history per user, on average. */
const SESSIONS_PER_USER = 6;
/** Busy hours (UTC) weigh more; weekends less. */
const HOUR_WEIGHTS = [
  2, 1, 1, 1, 1, 2, 4, 7, 9, 10, 10, 10, 9, 10, 10, 10, 9, 8, 7, 6, 5, 4, 3, 2,
] as const;
const FIRST_OCTETS = [
  31, 37, 46, 62, 77, 78, 79, 80, 81, 82, 83, 84, 85, 86, 87, 88, 89, 90, 91, 92, 93, 94, 95, 109,
  176, 178, 185, 188, 193, 194, 195, 212, 213, 217,
] as const;
const REVOCATIONS = [
  { reason: 'device_lost', actor: 'user' },
  { reason: 'suspicious_activity', actor: 'admin:security' },
  { reason: 'admin', actor: 'admin:alice' },
  { reason: 'max_sessions', actor: 'user' },
] as const;
const INCIDENT_REASONS = ['password_changed', 'account_locked'] as const;

export function resolveSeedOptions(options: SeedOptions): ResolvedSeedOptions {
  const tenants = options.tenants ?? 6;
  const weeks = options.weeks ?? 4;
  if (!Number.isInteger(options.sessions) || options.sessions < 1) {
    throw new RangeError(`sessions must be a whole number of at least 1, got ${options.sessions}`);
  }
  if (!Number.isInteger(tenants) || tenants < 1 || tenants > TENANT_NAMES.length) {
    throw new RangeError(`tenants must be between 1 and ${TENANT_NAMES.length}, got ${tenants}`);
  }
  if (!Number.isInteger(weeks) || weeks < 1 || weeks > 52) {
    throw new RangeError(`weeks must be between 1 and 52, got ${weeks}`);
  }
  const live = options.live ?? false;
  const expired = options.expired ?? 0;
  if (!Number.isInteger(expired) || expired < 0 || expired > options.sessions) {
    throw new RangeError(`expired must be a whole number of at most sessions, got ${expired}`);
  }
  if (expired > 0 && !live) throw new RangeError('expired needs live: a history has its own');
  const now = options.now.getTime();
  if (!Number.isFinite(now)) throw new RangeError('now must be a valid date');
  return {
    sessions: options.sessions,
    seed: (options.seed ?? 20260101) >>> 0,
    tenants: TENANT_NAMES.slice(0, tenants),
    weeks,
    live,
    expired,
    now,
    // Live sessions were all created within the idle timeout (less the margin `finish` keeps).
    start: live ? now - IDLE_TIMEOUT_MS + 2 * HOUR : now - weeks * 7 * DAY,
  };
}

/**
 * Every session of the story, tenant by tenant and user by user (anonymous sessions
 * last), generated lazily: a million sessions never sit in memory at once.
 */
export function* seedSessions(options: SeedOptions | ResolvedSeedOptions): Generator<SeedSession> {
  const plan = 'start' in options ? options : resolveSeedOptions(options);
  let index = 0;
  for (const session of storySessions(plan)) {
    // Session i is in the backlog when the running share of `expired` steps past it.
    const backlog =
      Math.floor(((index + 1) * plan.expired) / plan.sessions) >
      Math.floor((index * plan.expired) / plan.sessions);
    const withId = { ...session, id: sessionId(plan.seed, index) };
    index++;
    yield backlog ? expiredBefore(withId) : withId;
  }
}

/**
 * The id of the seed's session number `index`: unique by construction. Drawn from the
 * per-user streams, ids repeated: every stream is a stretch of the same 2^32-long
 * cycle, so a long one (a tenant's anonymous sessions) overlaps some others once there
 * are a few hundred thousand sessions.
 */
function sessionId(seed: number, index: number): string {
  const hex = createHash('sha256').update(`pg-sessions seed ${seed} ${index}`).digest('hex');
  const variant = ((Number.parseInt(hex.slice(16, 17), 16) & 0x3) | 0x8).toString(16);
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-4${hex.slice(13, 16)}-${variant}${hex.slice(17, 20)}-${hex.slice(20, 32)}`;
}

/**
 * A live session moved back in time by one idle timeout and a minute: it expired
 * before `now` (its expiry was at most a day ahead) and GC has not collected it yet.
 */
function expiredBefore(session: SeedSession): SeedSession {
  const shift = IDLE_TIMEOUT_MS + MINUTE;
  return {
    ...session,
    boundAt: session.boundAt === null ? null : session.boundAt - shift,
    createdAt: session.createdAt - shift,
    lastSeenAt: session.lastSeenAt - shift,
    idleExpiresAt: session.idleExpiresAt - shift,
    absoluteExpiresAt: session.absoluteExpiresAt - shift,
  };
}

function* storySessions(plan: ResolvedSeedOptions): Generator<SeedSession> {
  const counts = assignSessions(plan);
  for (const [tenantIndex, tenantId] of plan.tenants.entries()) {
    const perUser = counts[tenantIndex] as Int32Array;
    for (let userIndex = 0; userIndex < perUser.length - 1; userIndex++) {
      const count = perUser[userIndex] as number;
      if (count > 0) yield* userSessions(plan, tenantIndex, tenantId, userIndex, count);
    }
    const anonymous = perUser[perUser.length - 1] as number;
    const random = Random.derive(plan.seed, tenantIndex, 0xffffffff);
    for (let index = 0; index < anonymous; index++) {
      yield finish(plan, planSession(plan, random, tenantId, null, null, randomAddress(random)));
    }
  }
}

/** Whether the session's row is still in sessions.session at `now`. */
export function keepsRow(session: SeedSession): boolean {
  return (
    session.ending === null || (session.ending.kind === 'revoked' && session.purgedAt === null)
  );
}

/** Live at `at`: its row exists, it is not revoked and neither expiry has passed. */
export function isLive(session: SeedSession, at: number): boolean {
  return session.ending === null && Math.min(session.idleExpiresAt, session.absoluteExpiresAt) > at;
}

/** The row version after the session's last change (1 at creation). */
export function finalVersion(session: SeedSession): number {
  return (
    1 +
    (session.boundAt !== null && session.boundAt !== session.createdAt ? 1 : 0) +
    session.updates +
    (session.ending?.kind === 'revoked' ? 1 : 0)
  );
}

/** The /24 (IPv4) or /48 (IPv6) an address belongs to, as PostgreSQL prints the cidr. */
export function networkOf(ip: string): string {
  if (ip.includes(':')) return `${ip.split(':').slice(0, 3).join(':')}::/48`;
  return `${ip.split('.').slice(0, 3).join('.')}.0/24`;
}

/**
 * Pass one: how many sessions each user of each tenant gets (the last slot of each
 * tenant counts its anonymous sessions). Tenants follow a Zipf curve, users a skew
 * that gives a few of them far more sessions than the rest.
 */
function assignSessions(plan: ResolvedSeedOptions): Int32Array[] {
  const random = Random.derive(plan.seed, 0x7e4a47);
  const weights = plan.tenants.map((_, index) => 1 / (index + 1));
  const total = weights.reduce((sum, weight) => sum + weight, 0);
  const counts = weights.map(
    (weight) =>
      new Int32Array(
        Math.max(3, Math.ceil((plan.sessions * weight) / total / SESSIONS_PER_USER)) + 1,
      ),
  );
  for (let index = 0; index < plan.sessions; index++) {
    const perUser = counts[random.weighted(weights)] as Int32Array;
    const users = perUser.length - 1;
    const slot = random.chance(0.35) ? users : Math.floor(users * random.next() ** 1.5);
    perUser[slot] = (perUser[slot] as number) + 1;
  }
  return counts;
}

interface UserProfile {
  readonly networks: readonly (readonly [string, boolean])[];
  readonly traveller: boolean;
  readonly devices: readonly string[];
}

function* userSessions(
  plan: ResolvedSeedOptions,
  tenantIndex: number,
  tenantId: string,
  userIndex: number,
  count: number,
): Generator<SeedSession> {
  const random = Random.derive(plan.seed, tenantIndex, userIndex);
  const userId = `u${String(userIndex + 1).padStart(6, '0')}`;
  const profile: UserProfile = {
    networks: [
      randomNetwork(random, random.chance(0.2)),
      ...(random.chance(0.5) ? [randomNetwork(random, false)] : []),
    ],
    traveller: random.chance(0.03),
    devices: Array.from({ length: random.int(1, 3) }, () => random.pick(USER_AGENTS)),
  };
  const plans: Planned[] = [];
  for (let index = 0; index < count; index++) {
    const ip = profile.traveller
      ? randomAddress(random)
      : addressIn(random, random.pick(profile.networks));
    plans.push(planSession(plan, random, tenantId, userId, profile, ip));
  }
  // "Log out everywhere" after a password change: every session live at that moment.
  if (!plan.live && count >= 6 && random.chance(0.25)) {
    const at =
      plan.start + DAY + Math.floor(random.next() * (plan.now - plan.start - DAY - 2 * HOUR));
    const reason = random.pick(INCIDENT_REASONS);
    const actor = random.chance(0.5) ? `user:${userId}` : 'admin:security';
    for (const session of plans) {
      if (session.boundAt !== null && session.boundAt <= at && session.endAt > at) {
        session.kind = 'revoked';
        session.endAt = at;
        session.reason = reason;
        session.actor = actor;
        session.lastSeenAt = Math.min(session.lastSeenAt, at);
      }
    }
  }
  for (const session of plans) yield finish(plan, session);
}

/** A session as planned, before `now` cuts its story short. */
interface Planned {
  tenantId: string;
  id: string;
  userId: string | null;
  boundAt: number | null;
  createdAt: number;
  lastSeenAt: number;
  absoluteExpiresAt: number;
  kind: EndingKind;
  endAt: number;
  reason: string | null;
  actor: string;
  updates: number;
  gcDelay: number;
  ip: string;
  userAgent: string;
}

function planSession(
  plan: ResolvedSeedOptions,
  random: Random,
  tenantId: string,
  userId: string | null,
  profile: UserProfile | null,
  ip: string,
): Planned {
  const createdAt = creationTime(plan, random);
  let boundAt: number | null = null;
  if (userId !== null) {
    boundAt = random.chance(0.3) ? createdAt : createdAt + random.int(5_000, 10 * MINUTE);
  }
  const absoluteExpiresAt = createdAt + ABSOLUTE_TIMEOUT_MS;
  const activity = random.next();
  const duration =
    activity < 0.5
      ? random.int(0, 30 * MINUTE)
      : activity < 0.8
        ? random.int(30 * MINUTE, 6 * HOUR)
        : activity < 0.95
          ? random.int(6 * HOUR, 3 * DAY)
          : random.int(3 * DAY, 8 * DAY);
  let lastSeenAt = Math.min(
    Math.max(createdAt + duration, boundAt ?? createdAt),
    absoluteExpiresAt,
  );
  const expiresAt = Math.min(lastSeenAt + IDLE_TIMEOUT_MS, absoluteExpiresAt);
  const user = userId === null ? 'anonymous' : `user:${userId}`;
  const ending = random.next();
  let kind: EndingKind = 'expired';
  let endAt = expiresAt;
  let reason: string | null = null;
  let actor = GC_ACTOR;
  if (ending < (userId === null ? 0.03 : 0.3)) {
    kind = 'destroyed';
    endAt = lastSeenAt;
    actor = user;
  } else if (ending < (userId === null ? 0.04 : 0.34)) {
    kind = 'revoked';
    const from = boundAt ?? createdAt;
    endAt =
      from + Math.floor(random.next() * Math.min(lastSeenAt + 12 * HOUR - from, expiresAt - from));
    lastSeenAt = Math.min(lastSeenAt, endAt);
    if (userId === null) {
      reason = 'abuse';
      actor = 'admin:security';
    } else {
      const revocation = random.pick(REVOCATIONS);
      reason = revocation.reason;
      actor = revocation.actor === 'user' ? user : revocation.actor;
    }
  }
  if (plan.live) {
    // Still going at `now`, whatever the roll said.
    kind = 'expired';
    endAt = Number.POSITIVE_INFINITY;
    lastSeenAt = Math.min(lastSeenAt, plan.now);
  }
  return {
    tenantId,
    id: random.uuid(),
    userId,
    boundAt,
    createdAt,
    lastSeenAt,
    absoluteExpiresAt,
    kind,
    endAt,
    reason,
    actor,
    updates: userId === null ? random.int(0, 1) : random.int(0, 3),
    gcDelay: random.int(MINUTE, 10 * MINUTE),
    ip,
    userAgent: profile ? random.pick(profile.devices) : random.pick(USER_AGENTS),
  };
}

/** Cuts the planned story at `now`: what happened by then, and the row as it stands. */
function finish(plan: ResolvedSeedOptions, session: Planned): SeedSession {
  const now = plan.now;
  let lastSeenAt = session.lastSeenAt;
  let absoluteExpiresAt = session.absoluteExpiresAt;
  let ending: SeedEnding | null = null;
  let purgedAt: number | null = null;
  if (session.endAt <= now) {
    if (session.kind === 'expired') {
      const collectedAt = session.endAt + session.gcDelay;
      // Not collected yet: the row is still there, expired; no event so far.
      if (collectedAt <= now) {
        ending = { kind: 'expired', at: collectedAt, reason: 'gc', actor: GC_ACTOR };
      }
    } else {
      ending = {
        kind: session.kind,
        at: session.endAt,
        reason: session.reason,
        actor: session.actor,
      };
      if (session.kind === 'revoked' && session.endAt + session.gcDelay <= now) {
        purgedAt = session.endAt + session.gcDelay;
      }
    }
  } else {
    // Still going at `now`: seen lately, and (so that a report run soon after the seed
    // sees the same live sessions) expiring at least an hour after `now`.
    const from = session.boundAt ?? session.createdAt;
    lastSeenAt = Math.min(lastSeenAt, Math.max(from, now - session.gcDelay * 3));
    if (Math.min(lastSeenAt + IDLE_TIMEOUT_MS, absoluteExpiresAt) < now + HOUR) {
      lastSeenAt = Math.max(lastSeenAt, now - IDLE_TIMEOUT_MS + 2 * HOUR);
      absoluteExpiresAt = Math.max(absoluteExpiresAt, now + 2 * HOUR);
    }
  }
  const updates = lastSeenAt - (session.boundAt ?? session.createdAt) < 1_000 ? 0 : session.updates;
  return {
    tenantId: session.tenantId,
    id: session.id,
    userId: session.userId,
    boundAt: session.boundAt,
    createdAt: session.createdAt,
    lastSeenAt,
    idleExpiresAt: Math.min(lastSeenAt + IDLE_TIMEOUT_MS, absoluteExpiresAt),
    absoluteExpiresAt,
    updates,
    ending,
    purgedAt,
    ip: session.ip,
    userAgent: session.userAgent,
  };
}

/** A creation time in [start, now - 15 min), denser in busy hours and on weekdays. */
function creationTime(plan: ResolvedSeedOptions, random: Random): number {
  const span = plan.now - 15 * MINUTE - plan.start;
  for (;;) {
    const at = plan.start + Math.floor(random.next() * span);
    const date = new Date(at);
    const weekend = date.getUTCDay() === 0 || date.getUTCDay() === 6;
    const weight = (HOUR_WEIGHTS[date.getUTCHours()] as number) * (weekend ? 0.6 : 1);
    if (random.next() * 10 < weight) return at;
  }
}

/** A network: the first three IPv4 octets, or the first three IPv6 groups. */
function randomNetwork(random: Random, ipv6: boolean): readonly [string, boolean] {
  if (ipv6) {
    const group = () => random.int(1, 0xffff).toString(16);
    return [`2a0${random.int(1, 9)}:${group()}:${group()}`, true];
  }
  return [`${random.pick(FIRST_OCTETS)}.${random.int(0, 255)}.${random.int(0, 255)}`, false];
}

function addressIn(random: Random, [network, ipv6]: readonly [string, boolean]): string {
  return ipv6
    ? `${network}::${random.int(1, 0xffff).toString(16)}`
    : `${network}.${random.int(1, 254)}`;
}

function randomAddress(random: Random): string {
  return addressIn(random, randomNetwork(random, random.chance(0.1)));
}
