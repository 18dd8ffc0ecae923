// `npm start`: the demo on DATABASE_URL, or on an embedded PostgreSQL kept in .data/.
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import { loadSeed } from '../seeds/load.js';
import { migrate } from '../src/index.js';
import { PostgresServer } from '../src/testing/index.js';
import { createDemoApp } from './app.js';

/** Weeks of history in other tenants, so `pg-sessions report …` has something to show. */
const DEMO_HISTORY_SESSIONS = 20_000;

const DEMO_ROLE = 'pgs_demo_app';

async function databaseUrl(): Promise<{ url: string; server?: PostgresServer }> {
  if (process.env.DATABASE_URL) return { url: process.env.DATABASE_URL };
  const dataDir = fileURLToPath(new URL('../.data/postgres', import.meta.url));
  process.stdout.write(`starting embedded PostgreSQL in ${dataDir} …\n`);
  const server = await PostgresServer.start({ dataDir });
  return { url: server.url('postgres'), server };
}

/** The middleware connects as a login role of sessions_app, so row-level security applies. */
async function appRoleUrl(adminUrl: string): Promise<string> {
  const client = new pg.Client(adminUrl);
  await client.connect();
  try {
    const exists = await client.query('SELECT 1 FROM pg_roles WHERE rolname = $1', [DEMO_ROLE]);
    if (!exists.rowCount) await client.query(`CREATE ROLE ${DEMO_ROLE} LOGIN IN ROLE sessions_app`);
  } finally {
    await client.end();
  }
  const url = new URL(adminUrl);
  url.username = DEMO_ROLE;
  url.password = '';
  return url.toString();
}

/** Seeds the embedded demo database once (the seed refuses tenants that hold data). */
async function seedOnce(adminUrl: string): Promise<void> {
  const client = new pg.Client(adminUrl);
  await client.connect();
  const seeded = await client
    .query('SELECT 1 FROM sessions.event LIMIT 1')
    .finally(() => client.end());
  if (seeded.rowCount) return;
  const result = await loadSeed(adminUrl, { sessions: DEMO_HISTORY_SESSIONS });
  process.stdout.write(
    `seeded ${result.sessions} sessions of history (${result.events} events) in ${result.tenants.join(', ')}: ` +
      `try \`DATABASE_URL=${adminUrl} npx pg-sessions report daily_session_counts\`\n`,
  );
}

const { url, server } = await databaseUrl();
const migrated = await migrate(url, 'up', { onOutput: (text) => process.stdout.write(text) });
if (migrated.exitCode !== 0) {
  process.stderr.write('migration failed\n');
  process.exit(1);
}
if (server) await seedOnce(url);
const { app, middleware } = createDemoApp({
  database: server ? await appRoleUrl(url) : url,
});
await middleware.start();
const port = Number(process.env.PORT ?? 3000);
const http = app.listen(port, '127.0.0.1', () => {
  const address = http.address();
  const actualPort = typeof address === 'object' && address ? address.port : port;
  process.stdout.write(`pg-sessions demo on http://localhost:${actualPort}/ (Ctrl-C to stop)\n`);
});

let stopping = false;
async function shutdown(): Promise<void> {
  if (stopping) return;
  stopping = true;
  http.close();
  await middleware.close();
  await server?.stop();
  process.exit(0);
}
process.on('SIGINT', shutdown);
process.on('SIGTERM', shutdown);
