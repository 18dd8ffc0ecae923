import test from 'ava';
import type pg from 'pg';
import type { ConcurrencyMode } from '../src/index.js';
import type { TestDatabase } from '../src/testing/index.js';
import { sessionRows, setupDatabase } from './helpers/database.js';
import { Browser, startApp, type TestApp } from './helpers/http.js';

let db: TestDatabase;
let admin: pg.Pool;
let app: TestApp;

test.before(async () => {
  ({ db, admin } = await setupDatabase());
  app = await startApp(
    {
      database: db.appUrl,
      poolSize: 20,
      mode: (ctx) => String(ctx.query.mode ?? 'merge') as ConcurrencyMode,
    },
    (router) => {
      router.post('/init', (ctx) => {
        ctx.session!.counter = 0;
        ctx.body = ctx.sessions.id;
      });
      router.post('/key/:name', (ctx) => {
        ctx.session![ctx.params.name!] = true;
        ctx.body = 'ok';
      });
      router.post('/increment', async (ctx) => {
        const session = ctx.session as unknown as { counter: number };
        const current = session.counter;
        // Widen the window between read and write so the requests really overlap.
        await new Promise((resolve) => setTimeout(resolve, 5));
        session.counter = current + 1;
        ctx.body = 'ok';
      });
      router.get('/id', (ctx) => {
        ctx.body = ctx.sessions.id;
      });
      router.get('/data', (ctx) => {
        ctx.body = ctx.session!.toJSON();
      });
    },
  );
});

test.after.always(async () => {
  await app?.close();
  await admin?.end();
  await db?.drop();
});

test('50 parallel requests that each set a different key of one session all land', async (t) => {
  const browser = new Browser(app.url);
  await browser.post('/init');
  const responses = await Promise.all(
    Array.from({ length: 50 }, (_, index) => browser.clone().post(`/key/k${index}`)),
  );
  t.true(responses.every((response) => response.status === 200));
  const data = (await browser.get('/data')).body as Record<string, unknown>;
  for (let index = 0; index < 50; index++) t.true(data[`k${index}`] === true, `k${index}`);
});

async function increments(mode: ConcurrencyMode) {
  const browser = new Browser(app.url);
  await browser.post('/init');
  const responses = await Promise.all(
    Array.from({ length: 50 }, () => browser.clone().post(`/increment?mode=${mode}`)),
  );
  const counter = ((await browser.get('/data')).body as { counter: number }).counter;
  return { statuses: responses.map((response) => response.status), counter };
}

test('merge: 50 parallel increments of one key never fail (last writer wins per key)', async (t) => {
  const { statuses, counter } = await increments('merge');
  t.true(statuses.every((status) => status === 200));
  t.true(counter >= 1 && counter <= 50);
});

test('strict: each increment lands or gets 409, and the counter equals the successes', async (t) => {
  const { statuses, counter } = await increments('strict');
  const successes = statuses.filter((status) => status === 200).length;
  const conflicts = statuses.filter((status) => status === 409).length;
  t.is(successes + conflicts, 50, `statuses: ${statuses.join(',')}`);
  t.true(successes >= 1);
  t.is(counter, successes);
  t.log(`strict: ${successes} landed, ${conflicts} conflicts`);
});

test('lock: 50 parallel increments serialise and all land', async (t) => {
  const { statuses, counter } = await increments('lock');
  t.true(
    statuses.every((status) => status === 200),
    statuses.join(','),
  );
  t.is(counter, 50);
});

test('a strict conflict writes nothing and every version bump is one landed write', async (t) => {
  const browser = new Browser(app.url);
  await browser.post('/init');
  const id = (await browser.get('/id')).body as string;
  const before = (await sessionRows(admin)).find((row) => row.id === id);
  const responses = await Promise.all(
    Array.from({ length: 10 }, () => browser.clone().post('/increment?mode=strict')),
  );
  const successes = responses.filter((response) => response.status === 200).length;
  const after = (await sessionRows(admin)).find((row) => row.id === id);
  t.is(after.version - before.version, successes);
  t.is(after.data.counter, successes);
});
