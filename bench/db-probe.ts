// PostgreSQL's own account of a measured run, next to the HTTP and ceiling cells:
//   WAL fsyncs, cluster-wide (pg_stat_wal.wal_sync up to 17; pg_stat_io's WAL fsyncs from
//   18, which moved them there), to divide by the writes the run made;
//   Lock:object waits, sampled from pg_stat_activity: the cluster-wide lock every
//   transaction that queued a NOTIFY takes in PreCommit_Notify and holds through its
//   commit's WAL flush.
import pg from 'pg';

export interface DbActivity {
  /** WAL fsyncs during the run, all processes of the server. */
  readonly walFsyncs: number;
  /** Samples of the database's client backends taken during the run. */
  readonly samples: number;
  /** Of the sampled backends that were active, the share waiting on Lock:object. */
  readonly lockObjectShare: number;
  /** Average number of backends waiting on Lock:object per sample. */
  readonly lockObjectWaiting: number;
}

/** Statistics reach the shared counters when a backend goes idle, at most once a second. */
const STATS_SETTLE_MS = 1_200;

export class DbProbe {
  readonly #client: pg.Client;
  #version = 0;
  #fsyncsBefore = 0;
  #timer: NodeJS.Timeout | undefined;
  #sampling: Promise<void> = Promise.resolve();
  #samples = 0;
  #active = 0;
  #waiting = 0;

  private constructor(
    url: string,
    private readonly database: string,
    private readonly settle: boolean,
  ) {
    this.#client = new pg.Client({ connectionString: url, application_name: 'bench:probe' });
    this.#client.on('error', () => {});
  }

  /** A probe of `database` through the superuser `url`; `settle`: wait for the statistics (not in the smoke run). */
  static async open(url: string, settle: boolean): Promise<DbProbe> {
    const database = decodeURIComponent(new URL(url).pathname.slice(1));
    const probe = new DbProbe(url, database, settle);
    await probe.#client.connect();
    const { rows } = await probe.#client.query<{ version: string }>(
      "SELECT current_setting('server_version_num') AS version",
    );
    probe.#version = Number(rows[0]?.version);
    return probe;
  }

  async #fsyncs(): Promise<number> {
    await this.#client.query('SELECT pg_stat_clear_snapshot()');
    const text =
      this.#version >= 180000
        ? "SELECT coalesce(sum(fsyncs), 0)::float8 AS fsyncs FROM pg_stat_io WHERE object = 'wal'"
        : 'SELECT wal_sync::float8 AS fsyncs FROM pg_stat_wal';
    const { rows } = await this.#client.query<{ fsyncs: number }>(text);
    return rows[0]?.fsyncs ?? Number.NaN;
  }

  /** Before a run: the fsync counter, then sampling every 20 ms. */
  async begin(): Promise<void> {
    if (this.settle) await new Promise((resolve) => setTimeout(resolve, STATS_SETTLE_MS));
    this.#fsyncsBefore = await this.#fsyncs();
    this.#samples = 0;
    this.#active = 0;
    this.#waiting = 0;
    this.#timer = setInterval(() => {
      this.#sampling = this.#sampling.then(() => this.#sample()).catch(() => {});
    }, 20);
  }

  async #sample(): Promise<void> {
    const { rows } = await this.#client.query<{ active: number; waiting: number }>(
      `SELECT count(*) FILTER (WHERE state = 'active')::int AS active,
              count(*) FILTER (WHERE wait_event_type = 'Lock' AND wait_event = 'object')::int AS waiting
         FROM pg_stat_activity
        WHERE datname = $1 AND backend_type = 'client backend' AND pid <> pg_backend_pid()`,
      [this.database],
    );
    this.#samples++;
    this.#active += rows[0]?.active ?? 0;
    this.#waiting += rows[0]?.waiting ?? 0;
  }

  /** After a run: what it cost. */
  async end(): Promise<DbActivity> {
    clearInterval(this.#timer);
    await this.#sampling;
    if (this.settle) await new Promise((resolve) => setTimeout(resolve, STATS_SETTLE_MS));
    const fsyncs = await this.#fsyncs();
    return {
      walFsyncs: fsyncs - this.#fsyncsBefore,
      samples: this.#samples,
      lockObjectShare: this.#active > 0 ? this.#waiting / this.#active : 0,
      lockObjectWaiting: this.#samples > 0 ? this.#waiting / this.#samples : 0,
    };
  }

  async close(): Promise<void> {
    clearInterval(this.#timer);
    await this.#sampling;
    await this.#client.end().catch(() => {});
  }
}
