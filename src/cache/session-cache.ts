import { LRUCache } from 'lru-cache';
import { snapshotData } from '../session.js';
import type { EndedSession, SessionRecord } from '../store/records.js';
import { hashesEqual } from '../token.js';

/** Safety margin against clock skew between Node and the database for cached rows. */
const EXPIRY_MARGIN_MS = 1_000;

export interface SessionCacheOptions {
  /** Most entries kept. */
  readonly maxEntries: number;
  /** Most bytes kept, estimated from each row's JSON size. */
  readonly maxBytes: number;
}

/** The per-process session cache: rows keyed by tenant and token hash. */
export class SessionCache {
  readonly #entries: LRUCache<string, SessionRecord>;
  /**
   * Versions announced by notifications for keys not (or no longer) cached: a load
   * that read an older version before the notification arrived must not cache it.
   * Deletions are remembered as Infinity.
   */
  readonly #announced: LRUCache<string, number>;
  /** Bumped whenever the cache is cleared: loads begun before cannot fill it. */
  #epoch = 0;

  constructor(options: SessionCacheOptions) {
    this.#entries = new LRUCache<string, SessionRecord>({
      max: options.maxEntries,
      maxSize: options.maxBytes,
      sizeCalculation: estimateBytes,
    });
    this.#announced = new LRUCache<string, number>({ max: Math.max(1000, options.maxEntries) });
  }

  get size(): number {
    return this.#entries.size;
  }

  get bytes(): number {
    return this.#entries.calculatedSize;
  }

  /** The epoch to pass back to {@link set}: a load records it before it starts. */
  get epoch(): number {
    return this.#epoch;
  }

  get(tenantId: string, tokenHash: Buffer): SessionRecord | undefined {
    return this.#entries.get(key(tenantId, tokenHash.toString('hex')));
  }

  /**
   * The cached row for a token when it may be served: at least `minVersion` (what the
   * client is known to have written: the read-your-writes fence), and not within a
   * second of its expiry by this node's clock (the database's decides; this one may
   * be a little off). The stored hash is compared too: it costs nothing and keeps a
   * cache-key mistake from ever handing out another session.
   */
  fresh(tenantId: string, tokenHash: Buffer, minVersion: number): SessionRecord | undefined {
    const cached = this.#entries.get(key(tenantId, tokenHash.toString('hex')));
    if (
      cached === undefined ||
      cached.version < minVersion ||
      !hashesEqual(cached.tokenHash, tokenHash) ||
      Math.min(cached.idleExpiresAt.getTime(), cached.absoluteExpiresAt.getTime()) -
        EXPIRY_MARGIN_MS <=
        Date.now()
    ) {
      return undefined;
    }
    return cached;
  }

  /**
   * Caches a row read or written at `epoch`, unless the cache was cleared since, or a
   * notification already announced a newer version (or the row's deletion).
   */
  set(record: SessionRecord, epoch: number): void {
    if (epoch !== this.#epoch) return;
    const cacheKey = key(record.tenantId, record.tokenHash.toString('hex'));
    const announced = this.#announced.get(cacheKey);
    if (announced !== undefined && announced > record.version) return;
    const current = this.#entries.get(cacheKey);
    if (current && current.version > record.version) return;
    // Cached rows are shared by every request: each gets its own copies from the snapshot.
    this.#entries.set(
      cacheKey,
      record.snapshot ? record : { ...record, snapshot: snapshotData(record.data) },
    );
  }

  /** The newest version a notification announced for this token (0 if none; Infinity if deleted). */
  announcedVersion(tenantId: string, tokenHash: Buffer): number {
    return this.#announced.get(key(tenantId, tokenHash.toString('hex'))) ?? 0;
  }

  /** Replaces a cached row's activity columns after a touch (same version). */
  touched(record: SessionRecord, lastSeenAt: Date): void {
    const cacheKey = key(record.tenantId, record.tokenHash.toString('hex'));
    const current = this.#entries.get(cacheKey);
    if (current && current.version === record.version) {
      this.#entries.set(cacheKey, { ...current, lastSeenAt, touchDue: false });
    }
  }

  /**
   * Sessions this process ended (revoked, deleted): gone from the cache at once, and a
   * load that read them before cannot put them back, whenever the notification arrives.
   */
  forgetEnded(tenantId: string, ended: readonly EndedSession[]): void {
    for (const session of ended) {
      this.invalidate(tenantId, session.tokenHash.toString('hex'), Number.POSITIVE_INFINITY, true);
    }
  }

  /** A notification: drop the entry unless it is already at least that version. True if evicted. */
  invalidate(tenantId: string, tokenHashHex: string, version: number, deleted: boolean): boolean {
    const cacheKey = key(tenantId, tokenHashHex);
    const announced = deleted ? Number.POSITIVE_INFINITY : version;
    this.#announced.set(cacheKey, Math.max(announced, this.#announced.get(cacheKey) ?? 0));
    const current = this.#entries.get(cacheKey);
    if (!current) return false;
    if (!deleted && current.version >= version) return false;
    this.#entries.delete(cacheKey);
    return true;
  }

  /** Drops one entry without remembering anything about it (the row may come back). */
  delete(tenantId: string, tokenHashHex: string): void {
    this.#entries.delete(key(tenantId, tokenHashHex));
  }

  /** Drops every entry of a tenant (bulk changes); returns how many. */
  invalidateTenant(tenantId: string): number {
    let evicted = 0;
    for (const [cacheKey, record] of this.#entries.entries()) {
      if (record.tenantId === tenantId) {
        this.#entries.delete(cacheKey);
        evicted++;
      }
    }
    return evicted;
  }

  /** Forgets everything, and makes loads already under way unable to fill the cache. */
  clear(): void {
    this.#epoch++;
    this.#entries.clear();
    this.#announced.clear();
  }
}

function key(tenantId: string, tokenHashHex: string): string {
  return `${tokenHashHex}:${tenantId}`;
}

/** A row's memory, roughly: its data (parsed and as JSON) plus the fixed columns. */
function estimateBytes(record: SessionRecord): number {
  let dataBytes = 0;
  for (const entry of record.snapshot?.values() ?? []) dataBytes += entry.bytes;
  return 400 + record.tenantId.length * 2 + (record.userId?.length ?? 0) * 2 + dataBytes * 4;
}
