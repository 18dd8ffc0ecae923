// Group commit in the app (`batchWrites`, on by default): saves that queue while the
// pool's batch slots are busy go to the database as one statement in one transaction.
// Each test makes the queue deterministic: a session row locked by a test connection
// holds the only slot (poolSize 2 gives one), the writes under test are sent and queue
// behind it, then the lock is released. A probe trigger records each row change's
// transaction id, which shows which writes shared a transaction.
import test from 'ava';
import type pg from 'pg';
import type { SessionOptions } from '../src/index.js';
import type { TestDatabase } from '../src/testing/index.js';
import { setupDatabase } from './helpers/database.js';
import { Browser, startApp, type TestApp } from './helpers/http.js';

let db: TestDatabase;
let admin: pg.Pool;

test.before(async () => {
  ({ db, admin } = await setupDatabase());
  await admin.query(`
    CREATE TABLE public.write_probe (seq bigserial, xid bigint, session_id uuid);
    GRANT INSERT ON public.write_probe TO PUBLIC;
    GRANT USAGE ON SEQUENCE public.write_probe_seq_seq TO PUBLIC;
    CREATE FUNCTION public.probe_write() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
      IF NEW.data ? 'poison' THEN
        RAISE EXCEPTION 'this write is refused by the test';
      END IF;
      INSERT INTO public.write_probe (xid, session_id) VALUES (txid_current(), NEW.id);
      RETURN NEW;
    END $$;
    CREATE TRIGGER session_write_probe BEFORE UPDATE ON sessions.session
      FOR EACH ROW EXECUTE FUNCTION public.probe_write();
  `);
});

test.after.always(async () => {
  await admin?.end();
  await db?.drop();
});

/** One batch slot (poolSize 2), so that writes queue behind a write that waits. */
async function app(options: Partial<SessionOptions> = {}): Promise<TestApp> {
  return startApp(
    { database: db.appUrl, gc: false, touchInterval: 60_000, poolSize: 2, ...options },
    (router) => {
      router.post('/set', (ctx) => {
        Object.assign(ctx.session!, ctx.request.query);
        ctx.body = 'ok';
      });
      router.get('/get', (ctx) => {
        ctx.body = ctx.session!.toJSON();
      });
      router.get('/id', (ctx) => {
        ctx.body = { id: ctx.sessions.id };
      });
    },
  );
}

/** A browser with a session of its own (created and saved), and that session's id. */
async function signedUp(server: TestApp): Promise<{ browser: Browser; id: string }> {
  const browser = new Browser(server.url);
  await browser.post('/set?started=yes');
  const { body } = await browser.get('/id');
  return { browser, id: (body as { id: string }).id };
}

/** A test connection holding `id`'s row lock until `release()`. */
async function lockRow(id: string): Promise<{ release(): Promise<void> }> {
  const client = await admin.connect();
  await client.query('BEGIN');
  await client.query('SELECT 1 FROM sessions.session WHERE id = $1 FOR UPDATE', [id]);
  return {
    async release() {
      await client.query('COMMIT');
      client.release();
    },
  };
}

/** Waits until a backend of the app waits for a row lock (the slot is taken). */
async function untilLockWait(): Promise<void> {
  for (let attempt = 0; attempt < 200; attempt++) {
    const { rows } = await admin.query(
      `SELECT 1 FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'`,
    );
    if (rows.length > 0) return;
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
  throw new Error('no write came to wait for the test lock');
}

/** The transaction ids of the recorded row changes of `ids` since `after`. */
async function transactionsOf(ids: readonly string[], after: number): Promise<Set<string>> {
  const { rows } = await admin.query<{ xid: string }>(
    'SELECT xid::text FROM public.write_probe WHERE seq > $1 AND session_id = ANY($2::uuid[])',
    [after, ids],
  );
  return new Set(rows.map((row) => row.xid));
}

async function probeMark(): Promise<number> {
  const { rows } = await admin.query<{ seq: string | null }>(
    'SELECT max(seq)::text AS seq FROM public.write_probe',
  );
  return Number(rows[0]?.seq ?? 0);
}

/** Sends `send` while `blocker`'s row is locked, so that they queue; then lets them go. */
async function queuedBehindLock<T>(
  blocker: { browser: Browser; id: string },
  send: () => Promise<T>,
): Promise<T> {
  const lock = await lockRow(blocker.id);
  const blocked = blocker.browser.post('/set?blocked=yes');
  await untilLockWait();
  const sent = send();
  // The requests reach the middleware and queue; nothing can go while the slot is held.
  await new Promise((resolve) => setTimeout(resolve, 300));
  await lock.release();
  const [, result] = await Promise.all([blocked, sent]);
  return result;
}

test.serial(
  'saves that queue share one transaction, and each lands with its own data',
  async (t) => {
    const server = await app();
    try {
      const blocker = await signedUp(server);
      const others = await Promise.all(Array.from({ length: 8 }, () => signedUp(server)));
      const mark = await probeMark();
      const answers = await queuedBehindLock(blocker, () =>
        Promise.all(others.map(({ browser }, index) => browser.post(`/set?n=${index}`))),
      );
      t.deepEqual(
        answers.map((answer) => answer.status),
        others.map(() => 200),
      );
      const transactions = await transactionsOf(
        others.map(({ id }) => id),
        mark,
      );
      t.true(transactions.size < others.length, `${transactions.size} transactions for 8 writes`);
      for (const [index, { browser }] of others.entries()) {
        t.like((await browser.get('/get')).body, { started: 'yes', n: String(index) });
      }
    } finally {
      await server.close();
    }
  },
);

test.serial(
  'concurrent writes of one session in one batch keep every key (merge mode)',
  async (t) => {
    const server = await app();
    try {
      const blocker = await signedUp(server);
      const { browser } = await signedUp(server);
      const answers = await queuedBehindLock(blocker, () =>
        Promise.all(
          Array.from({ length: 10 }, (_, index) => browser.post(`/set?key${index}=${index}`)),
        ),
      );
      t.true(answers.every((answer) => answer.status === 200));
      const session = (await browser.get('/get')).body as Record<string, string>;
      for (let index = 0; index < 10; index++) t.is(session[`key${index}`], String(index));
      // A second node reads the row, not this node's cache: the database has every key.
      const second = await app();
      try {
        const fromRow = (await browser.clone(second.url).get('/get')).body as Record<
          string,
          string
        >;
        for (let index = 0; index < 10; index++) t.is(fromRow[`key${index}`], String(index));
      } finally {
        await second.close();
      }
    } finally {
      await server.close();
    }
  },
);

test.serial(
  'a write that fails in a batch fails alone: the others are retried one by one and land',
  async (t) => {
    const server = await app();
    try {
      const blocker = await signedUp(server);
      const others = await Promise.all(Array.from({ length: 6 }, () => signedUp(server)));
      const answers = await queuedBehindLock(blocker, () =>
        Promise.all(
          others.map(({ browser }, index) =>
            browser.post(index === 3 ? '/set?poison=1' : `/set?n=${index}`),
          ),
        ),
      );
      t.deepEqual(
        answers.map((answer) => answer.status),
        [200, 200, 200, 500, 200, 200],
      );
      for (const [index, { browser }] of others.entries()) {
        const session = (await browser.get('/get')).body as Record<string, string>;
        if (index === 3) t.is(session.poison, undefined);
        else t.is(session.n, String(index));
      }
    } finally {
      await server.close();
    }
  },
);

test.serial(
  'a batch gives way to a row lock held elsewhere: its other writes do not wait for it',
  async (t) => {
    const server = await app();
    try {
      const blocker = await signedUp(server);
      const held = await signedUp(server);
      const others = await Promise.all(Array.from({ length: 4 }, () => signedUp(server)));
      const heldLock = await lockRow(held.id);
      let heldAnswered = false;
      let heldWrite: Promise<{ status: number }> | undefined;
      try {
        // The held session's write and the others queue together behind the blocker.
        const answers = await queuedBehindLock(blocker, () => {
          heldWrite = held.browser.post('/set?n=held').then((answer) => {
            heldAnswered = true;
            return answer;
          });
          return Promise.all(others.map(({ browser }, index) => browser.post(`/set?n=${index}`)));
        });
        t.true(answers.every((answer) => answer.status === 200));
        t.false(heldAnswered, 'the write of the locked row still waits');
      } finally {
        await heldLock.release();
      }
      t.is((await heldWrite!).status, 200);
      t.like((await held.browser.get('/get')).body, { n: 'held' });
    } finally {
      await server.close();
    }
  },
);

test.serial('batchWrites: false sends every save in its own transaction', async (t) => {
  const server = await app({ batchWrites: false });
  try {
    const blocker = await signedUp(server);
    const others = await Promise.all(Array.from({ length: 5 }, () => signedUp(server)));
    const mark = await probeMark();
    await queuedBehindLock(blocker, () =>
      Promise.all(others.map(({ browser }, index) => browser.post(`/set?n=${index}`))),
    );
    const transactions = await transactionsOf(
      others.map(({ id }) => id),
      mark,
    );
    t.is(transactions.size, others.length);
  } finally {
    await server.close();
  }
});
