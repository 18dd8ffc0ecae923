// Lifecycle events on every node (migration 11): the notifications each node's listener
// already receives say what happened to which session; these are the typed events the
// middleware emits from them on `middleware.events`, once per node per change.
import type { EventEmitter } from 'node:events';
import type { Logger } from '../logger.js';
import type { SessionNotification } from './notification.js';

export const LIFECYCLE_EVENTS = [
  'session:created',
  'session:rotated',
  'session:revoked',
  'session:ended',
  'session:stolen',
] as const;
export type SessionLifecycleEventName = (typeof LIFECYCLE_EVENTS)[number];

/** One change to one session, as every node running the middleware hears of it. */
export interface SessionLifecycleEvent {
  readonly type: SessionLifecycleEventName;
  readonly tenantId: string;
  readonly sessionId: string;
  /** The session's user at the change (null: anonymous). */
  readonly userId: string | null;
  /**
   * session:revoked: the revocation's reason (`revoke(id, reason)`, `max_sessions`, …);
   * session:ended: `expired`, `collected` (garbage collection) or `destroyed` (logout,
   * `ctx.session = null`); session:stolen: `token_reused`; else null.
   */
  readonly reason: string | null;
  /** When the database made the change (its clock). */
  readonly at: Date;
}

/** The lifecycle events a notification carries (none for data writes and bindings alone). */
export function lifecycleEvents(notification: SessionNotification): SessionLifecycleEvent[] {
  if (notification.op === 'flush') return [];
  const events: SessionLifecycleEvent[] = [];
  for (const entry of notification.sessions) {
    if (entry.change === undefined || entry.at === undefined) continue;
    const named = nameOf(entry.change, entry.reason ?? null);
    if (!named) continue;
    events.push({
      type: named.type,
      tenantId: entry.tenantId,
      sessionId: entry.id,
      userId: entry.userId ?? null,
      reason: named.reason,
      at: new Date(entry.at),
    });
  }
  return events;
}

function nameOf(
  change: string,
  reason: string | null,
): { type: SessionLifecycleEventName; reason: string | null } | undefined {
  switch (change) {
    case 'created':
      return { type: 'session:created', reason: null };
    case 'rotated':
      return { type: 'session:rotated', reason: null };
    case 'revoked':
      return reason === 'token_reused'
        ? { type: 'session:stolen', reason }
        : { type: 'session:revoked', reason };
    case 'expired':
      return { type: 'session:ended', reason: 'expired' };
    case 'purged':
      return { type: 'session:ended', reason: 'collected' };
    case 'destroyed':
      return { type: 'session:ended', reason: reason === 'gc' ? 'collected' : 'destroyed' };
    default:
      return undefined; // updated, bound: data and bindings are not lifecycle events
  }
}

/**
 * Calls each listener of each event by itself: one that throws is logged and the
 * others still run; nothing reaches the LISTEN connection that delivered the change.
 */
export function emitLifecycle(
  emitter: EventEmitter,
  notification: SessionNotification,
  logger: Logger,
): void {
  // Every data write's notification comes here: build no events nobody listens to.
  if (!LIFECYCLE_EVENTS.some((name) => emitter.listenerCount(name) > 0)) return;
  for (const event of lifecycleEvents(notification)) {
    for (const listener of emitter.listeners(event.type)) {
      try {
        const result = (listener as (event: SessionLifecycleEvent) => unknown)(event);
        if (result instanceof Promise) {
          result.catch((error: unknown) => reportListenerError(logger, event, error));
        }
      } catch (error) {
        reportListenerError(logger, event, error);
      }
    }
  }
}

function reportListenerError(logger: Logger, event: SessionLifecycleEvent, error: unknown): void {
  logger.error({ err: error, event: event.type }, 'pg-sessions: a session event listener threw');
}
