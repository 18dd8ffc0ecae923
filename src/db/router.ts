import type pg from 'pg';
import { createPool } from './connection-config.js';

/**
 * Where the store's statements go. `writer()` is the primary; `reader(fence)` is a
 * server that has replayed at least the WAL position `fence` (a replica, or the
 * primary when none has). The replica router implements the same interface.
 */
export interface SessionDatabase {
  writer(): pg.Pool;
  reader(fence: string | undefined): pg.Pool;
  /** The primary's URL or config, for the LISTEN connection, which must bypass poolers. */
  listenerConfig(): pg.ClientConfig;
  /** Closes what this object created. */
  close(): Promise<void>;
  /** Resolves once the primary is known (a router that discovers roles checks first). */
  ready?(): Promise<void>;
  /** The primary, for re-reading a replica's answer older than the client's fence (to count it). */
  staleReader?(): pg.Pool;
}

export function isSessionDatabase(value: unknown): value is SessionDatabase {
  return (
    typeof value === 'object' &&
    value !== null &&
    typeof (value as SessionDatabase).writer === 'function' &&
    typeof (value as SessionDatabase).reader === 'function'
  );
}

/** One pool for reads and writes: the default, and what a single server needs. */
export class SinglePoolDatabase implements SessionDatabase {
  private constructor(
    private readonly pool: pg.Pool,
    private readonly config: pg.ClientConfig,
    private readonly owned: boolean,
  ) {}

  /** A pool pg-sessions creates (and closes in `close()`), with libpq's sslmode meaning. */
  static create(config: pg.PoolConfig): SinglePoolDatabase {
    const pool = createPool(config);
    // An idle client whose server went away must not crash the process.
    pool.on('error', () => {});
    return new SinglePoolDatabase(pool, config, true);
  }

  /** Your pool: pg-sessions never ends it. */
  static wrap(pool: pg.Pool): SinglePoolDatabase {
    return new SinglePoolDatabase(pool, pool.options as pg.ClientConfig, false);
  }

  writer(): pg.Pool {
    return this.pool;
  }

  reader(): pg.Pool {
    return this.pool;
  }

  listenerConfig(): pg.ClientConfig {
    return this.config;
  }

  async close(): Promise<void> {
    if (this.owned) await this.pool.end();
  }
}
