/**
 * Which writes may share a transaction, and in what order they lock their rows. Only
 * writes whose statement sets its own tenant and actor (the session functions of
 * migration 6) and that return their own rows are batched; `key` keeps apart what must
 * not commit together (another statement, another durability).
 */
export interface BatchTicket {
  /** Writes with the same key may run in one transaction (and must agree on `notify`). */
  readonly key: string;
  /** The row the write locks: a batch locks in this order, so two batches never deadlock. */
  readonly order: string;
}

/** A write's rows, and the commit's WAL position when reads may go to replicas. */
export interface WriteReply {
  readonly rows: Record<string, unknown>[];
  readonly fence?: string;
}

/** One queued write: its statement's text (parameters inlined) and its caller. */
interface Pending {
  readonly key: string;
  /** The transaction sends its deferred notifications after its commit. */
  readonly notify: boolean;
  readonly order: string;
  readonly text: string;
  resolve(reply: WriteReply): void;
  reject(error: unknown): void;
}

/** The runner's single write path, which a batch goes through like any write. */
export interface BatchTransport {
  /** Runs `statement` in a transaction of its own, through the commit (and the notifications). */
  send(statement: string, notify: boolean): Promise<WriteReply>;
  /** Whether an error means the connection (and the batch with it) is gone. */
  endsConnection(error: unknown): boolean;
}

/** The most writes one transaction takes: a bound on the time its first row stays locked. */
const MAX_ITEMS = 32;

/** How long a batch waits for a row lock: well below deadlock_timeout's default 1 s. */
const BATCH_LOCK_TIMEOUT = '250ms';

/**
 * Group commit in the app: the session writes that arrive while `limit` transactions
 * are already out go together in the next, as one statement (one round trip, one
 * commit, one WAL flush, one notification message). Nothing waits for a timer: a write
 * that finds a free slot goes at once, alone. A batch that fails before its commit (one
 * bad write aborts the transaction) is retried one write at a time, so a write's
 * failure stays its own; a lost connection fails every write of the batch, and each
 * caller's failover then checks whether its write committed (all of the batch did, or
 * none of it).
 */
export class WriteBatcher {
  readonly #queue: Pending[] = [];
  #inFlight = 0;
  #scheduled = false;

  constructor(
    private readonly transport: BatchTransport,
    /** Transactions out at once: the writes beyond wait and go in the next one. */
    private readonly limit: number,
  ) {}

  /**
   * Queues `text` (a statement returning the write's rows). The queue goes out at the end
   * of this turn of the event loop (`setImmediate`: after the I/O callbacks that run in
   * it, whose writes it gathers), in as many batches as there are free slots.
   */
  write(text: string, ticket: BatchTicket, notify: boolean): Promise<WriteReply> {
    return new Promise((resolve, reject) => {
      this.#queue.push({ key: ticket.key, notify, order: ticket.order, text, resolve, reject });
      this.#schedule();
    });
  }

  #schedule(): void {
    if (this.#scheduled || this.#inFlight >= this.limit) return;
    this.#scheduled = true;
    setImmediate(() => {
      this.#scheduled = false;
      this.#flush();
    });
  }

  #flush(): void {
    while (this.#inFlight < this.limit && this.#queue.length > 0) {
      this.#inFlight++;
      this.#run(this.#takeBatch()).finally(() => {
        this.#inFlight--;
        if (this.#queue.length > 0) this.#schedule();
      });
    }
  }

  /** The oldest queued write and up to MAX_ITEMS - 1 more with its key, in lock order. */
  #takeBatch(): Pending[] {
    const key = this.#queue[0]!.key;
    const batch: Pending[] = [];
    for (let index = 0; index < this.#queue.length && batch.length < MAX_ITEMS; ) {
      const pending = this.#queue[index]!;
      if (pending.key === key) {
        batch.push(pending);
        this.#queue.splice(index, 1);
      } else {
        index++;
      }
    }
    return batch.sort((a, b) => (a.order < b.order ? -1 : a.order > b.order ? 1 : 0));
  }

  async #run(batch: Pending[]): Promise<void> {
    if (batch.length === 1) {
      const only = batch[0]!;
      await this.transport.send(only.text, only.notify).then(only.resolve, only.reject);
      return;
    }
    // One statement: its branches run in order, each call seeing the ones before it. A
    // batch gives way to a row lock held elsewhere (a lock-mode request that also wants
    // a row of this batch would otherwise deadlock with it): it fails fast, and its
    // writes go one by one, each waiting as long as a write alone does.
    const statement = `SET LOCAL lock_timeout = '${BATCH_LOCK_TIMEOUT}'; ${batch
      .map((pending, index) => `SELECT ${index} AS batch_item, w.* FROM (${pending.text}) AS w`)
      .join(' UNION ALL ')}`;
    let reply: WriteReply;
    try {
      reply = await this.transport.send(
        statement,
        batch.some((pending) => pending.notify),
      );
    } catch (error) {
      if (this.transport.endsConnection(error)) {
        for (const pending of batch) pending.reject(error);
        return;
      }
      // Nothing committed: each write again on its own, so that only the bad one fails.
      await Promise.all(
        batch.map((pending) =>
          this.transport.send(pending.text, pending.notify).then(pending.resolve, pending.reject),
        ),
      );
      return;
    }
    const byItem: Record<string, unknown>[][] = batch.map(() => []);
    for (const row of reply.rows) {
      const { batch_item: item, ...own } = row;
      byItem[item as number]?.push(own);
    }
    for (const [index, pending] of batch.entries()) {
      pending.resolve({ rows: byItem[index]!, fence: reply.fence });
    }
  }
}

/** A pool's batcher: every runner on the pool shares it, whatever its tenant. */
const batchers = new WeakMap<object, WriteBatcher>();

export function batcherFor(pool: object, create: () => WriteBatcher): WriteBatcher {
  let batcher = batchers.get(pool);
  if (!batcher) {
    batcher = create();
    batchers.set(pool, batcher);
  }
  return batcher;
}
