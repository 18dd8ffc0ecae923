/**
 * The payloads the triggers send on channel `sessions_changed` (see docs/schema.md):
 * `{"op":"update"|"delete","s":[[tenant, id, tokenHashHex, version, change, userId,
 * reason, atMs], …]}` (migration 11; before it, the first four alone) or, for a
 * statement that changed more than 1000 rows, `{"op":"flush","tenant":…}`.
 */
export type SessionNotification =
  | {
      readonly op: 'update' | 'delete';
      readonly sessions: readonly {
        readonly tenantId: string;
        readonly id: string;
        readonly tokenHashHex: string;
        readonly version: number;
        /** What happened (migration 11): created, updated, rotated, bound, revoked, purged, expired, destroyed. */
        readonly change?: string;
        readonly userId?: string | null;
        readonly reason?: string | null;
        /** When the database made the change, ms since the epoch. */
        readonly at?: number;
      }[];
    }
  | { readonly op: 'flush'; readonly tenantId: string };

export const NOTIFY_CHANNEL = 'sessions_changed';

/** Parses a payload; undefined for anything malformed (never trusted blindly). */
export function parseNotification(payload: string | undefined): SessionNotification | undefined {
  if (!payload) return undefined;
  let parsed: unknown;
  try {
    parsed = JSON.parse(payload);
  } catch {
    return undefined;
  }
  if (typeof parsed !== 'object' || parsed === null) return undefined;
  const message = parsed as { op?: unknown; s?: unknown; tenant?: unknown };
  if (message.op === 'flush' && typeof message.tenant === 'string') {
    return { op: 'flush', tenantId: message.tenant };
  }
  if ((message.op === 'update' || message.op === 'delete') && Array.isArray(message.s)) {
    const sessions = [];
    for (const entry of message.s) {
      if (!Array.isArray(entry) || (entry.length !== 4 && entry.length !== 8)) return undefined;
      const [tenantId, id, tokenHashHex, version, change, userId, reason, at] = entry as unknown[];
      if (
        typeof tenantId !== 'string' ||
        typeof id !== 'string' ||
        typeof tokenHashHex !== 'string' ||
        typeof version !== 'number'
      ) {
        return undefined;
      }
      if (entry.length === 4) {
        sessions.push({ tenantId, id, tokenHashHex, version });
        continue;
      }
      if (
        typeof change !== 'string' ||
        (userId !== null && typeof userId !== 'string') ||
        (reason !== null && typeof reason !== 'string') ||
        typeof at !== 'number'
      ) {
        return undefined;
      }
      sessions.push({ tenantId, id, tokenHashHex, version, change, userId, reason, at });
    }
    return { op: message.op, sessions };
  }
  return undefined;
}
