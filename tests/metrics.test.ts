import { once } from 'node:events';
import test, { type ExecutionContext } from 'ava';
import pg from 'pg';
import { Registry } from 'prom-client';
import { type Logger, registerPrometheusMetrics, TIMING_BUCKETS } from '../src/index.js';
import { createTestDatabase } from '../src/testing/index.js';
import { Browser, startApp } from './helpers/http.js';

test('metrics reach a prom-client registry and a pino-style logger hears the listener drop', async (t) => {
  const db = await createTestDatabase();
  t.teardown(() => db.drop());
  const warnings: { fields: object; message: string }[] = [];
  const logger: Logger = {
    debug: () => {},
    info: () => {},
    warn: (fields, message) => warnings.push({ fields, message }),
    error: () => {},
  };
  const app = await startApp({ database: db.appUrl, gc: false, logger }, (router) => {
    router.post('/set', (ctx) => {
      ctx.session!.a = 1;
      ctx.body = 'ok';
    });
    router.get('/get', (ctx) => {
      ctx.body = ctx.session!.toJSON();
    });
  });
  t.teardown(() => app.close());
  const registry = new Registry();
  await registerPrometheusMetrics(app.middleware.metrics, { registry });
  const browser = new Browser(app.url);
  await browser.post('/set');
  await browser.get('/get');
  await browser.get('/get');
  const text = await registry.metrics();
  t.regex(text, /^pg_sessions_requests_total 3$/m);
  t.regex(text, /^pg_sessions_creates_total 1$/m);
  t.regex(text, /^pg_sessions_cache_hits_total [12]$/m);
  t.regex(text, /^pg_sessions_listener_up 1$/m);
  t.regex(text, /^# TYPE pg_sessions_requests_total counter$/m);
  t.regex(text, /^# TYPE pg_sessions_cache_entries gauge$/m);

  const admin = new pg.Client(db.url);
  await admin.connect();
  const down = once(app.middleware.events, 'cache:listener:down');
  await admin.query('SELECT pg_terminate_backend($1)', [app.middleware.listenerPid]);
  await admin.end();
  await down;
  t.true(warnings.some((warning) => /listener lost/.test(warning.message)));
  t.regex(await registry.metrics(), /^pg_sessions_listener_up 0$/m);
});

/** The `_bucket`, `_sum` and `_count` samples of one histogram in a scrape, checked for shape. */
function histogram(t: ExecutionContext, text: string, name: string) {
  t.regex(text, new RegExp(`^# TYPE ${name} histogram$`, 'm'));
  const buckets = [...text.matchAll(new RegExp(`^${name}_bucket\\{le="([^"]+)"\\} (\\S+)$`, 'gm'))];
  t.deepEqual(
    buckets.map((match) => match[1]),
    [...TIMING_BUCKETS.map(String), '+Inf'],
    `${name}: one bucket per bound, then +Inf`,
  );
  const counts = buckets.map((match) => Number(match[2]));
  t.true(
    counts.every((count, index) => index === 0 || count >= counts[index - 1]!),
    `${name}: buckets are cumulative`,
  );
  const sum = Number(new RegExp(`^${name}_sum (\\S+)$`, 'm').exec(text)?.[1]);
  const count = Number(new RegExp(`^${name}_count (\\S+)$`, 'm').exec(text)?.[1]);
  t.is(counts.at(-1), count, `${name}: +Inf equals _count`);
  return { counts, sum, count };
}

test('timings are histograms with _bucket, _sum and _count after real requests', async (t) => {
  const db = await createTestDatabase();
  t.teardown(() => db.drop());
  // No cache: every request loads from PostgreSQL, so each one is timed.
  const app = await startApp({ database: db.appUrl, gc: false, cache: false }, (router) => {
    router.post('/set', (ctx) => {
      ctx.session!.n = Number(ctx.session!.n ?? 0) + 1;
      ctx.body = 'ok';
    });
  });
  t.teardown(() => app.close());
  const registry = new Registry();
  await registerPrometheusMetrics(app.middleware.metrics, { registry });
  const browser = new Browser(app.url);
  const startedAt = performance.now();
  for (let request = 0; request < 5; request++) await browser.post('/set');
  const elapsedSeconds = (performance.now() - startedAt) / 1000;

  const text = await registry.metrics();
  const load = histogram(t, text, 'pg_sessions_load_seconds');
  const save = histogram(t, text, 'pg_sessions_save_seconds');
  histogram(t, text, 'pg_sessions_touch_flush_seconds');
  const gc = histogram(t, text, 'pg_sessions_gc_seconds');
  // The first request creates its session; the four after it load it and save a delta.
  t.is(load.count, 4);
  t.is(save.count, 5);
  t.is(gc.count, 0);
  t.is(gc.sum, 0);
  for (const timing of [load, save]) {
    t.true(timing.sum > 0, 'a database round trip takes some time');
    t.true(timing.sum < elapsedSeconds, 'no more time than the requests took');
    t.is(timing.counts.at(-2), timing.count, 'nothing took more than 10 s');
    // Each observation lies inside its bucket, so the sum lies between the bounds' sums.
    let atLeast = 0;
    let atMost = 0;
    timing.counts.slice(0, -1).forEach((cumulative, index) => {
      const inBucket = cumulative - (index === 0 ? 0 : timing.counts[index - 1]!);
      atLeast += inBucket * (index === 0 ? 0 : TIMING_BUCKETS[index - 1]!);
      atMost += inBucket * TIMING_BUCKETS[index]!;
    });
    t.true(
      timing.sum >= atLeast && timing.sum <= atMost,
      `${timing.sum} in [${atLeast}, ${atMost}]`,
    );
  }
  t.notRegex(text, /stat="/, 'no gauges with a stat label are left');
  t.regex(text, /^# TYPE pg_sessions_saves_total counter$/m);
  t.regex(text, /^pg_sessions_saves_total 4$/m);
});
