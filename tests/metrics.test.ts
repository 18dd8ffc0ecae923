import { once } from 'node:events';
import test from 'ava';
import pg from 'pg';
import { Registry } from 'prom-client';
import { type Logger, registerPrometheusMetrics } from '../src/index.js';
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
  t.regex(text, /^pg_sessions_load_seconds\{stat="count"\} \d+$/m);

  const admin = new pg.Client(db.url);
  await admin.connect();
  const down = once(app.middleware.events, 'cache:listener:down');
  await admin.query('SELECT pg_terminate_backend($1)', [app.middleware.listenerPid]);
  await admin.end();
  await down;
  t.true(warnings.some((warning) => /listener lost/.test(warning.message)));
  t.regex(await registry.metrics(), /^pg_sessions_listener_up 0$/m);
});
