// `npm start`: the demo on DATABASE_URL, or on an embedded PostgreSQL kept in .data/.
import { chmod, chown, readdir, realpath, stat } from 'node:fs/promises';
import { createServer, type Server } from 'node:http';
import { basename, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import { loadSeed } from '../seeds/load.js';
import { resolveConnectionConfig } from '../src/db/connection-config.js';
import { migrate, type SessionMiddleware } from '../src/index.js';
import { PostgresServer } from '../src/testing/index.js';
import {
  blockedFolder,
  SERVICE_USER,
  unprivilegedUser,
  unreachableMessage,
} from '../src/testing/os-user.js';
import { createDemoApp } from './app.js';
import {
  claimInstance,
  type InstanceClaim,
  rememberedPort,
  rememberPort,
  stopOrphanedPostmaster,
} from './instance.js';

/** Weeks of history in other tenants, so `pg-sessions report …` has something to show. */
const DEMO_HISTORY_SESSIONS = 20_000;

const DEMO_ROLE = 'pgs_demo_app';

/** The state folder: the embedded server's data, its port, and the running demo's pid. */
const stateDir = resolve(
  process.env.DEMO_DATA_DIR || fileURLToPath(new URL('../.data', import.meta.url)),
);

/** A failure the user can act on: printed as one line, without a stack. */
class DemoError extends Error {}

/** What the demo keeps in its state folder. */
const STATE_ENTRIES = new Set(['demo.pid', 'postgres.port', 'postgres']);

/**
 * Run by root, the embedded server runs as an unprivileged user, who must be able to
 * enter the state folder. A folder of root's that holds nothing but the demo's state (a
 * fresh `mktemp -d`, mode 0700, say) is opened to that user alone: its group becomes the
 * user's group, given search permission only (0700 becomes 0710); no other user gains
 * anything, and the data below stays the server user's own (0700). Anything else is
 * refused in one line saying what to do: the folders above the state folder, a folder
 * holding other files, or one whose group already has access are not the demo's to change.
 */
async function letServerIn(): Promise<void> {
  const runAs = await unprivilegedUser();
  if (runAs.uid === undefined || runAs.gid === undefined) return;
  const folder = await realpath(stateDir);
  const blocked = await blockedFolder(folder, runAs);
  if (!blocked) return;
  const named = process.env.DEMO_DATA_DIR
    ? `DEMO_DATA_DIR ${stateDir}`
    : `the demo folder ${stateDir} (DEMO_DATA_DIR moves it)`;
  const refusal = (remedy?: string) => new DemoError(unreachableMessage(named, blocked, remedy));
  if (blocked !== folder) throw refusal();
  const info = await stat(folder);
  if (info.uid !== process.getuid?.()) throw refusal();
  const other = (await readdir(folder)).find((entry) => !STATE_ENTRIES.has(entry));
  if (other !== undefined) {
    throw refusal(
      `it holds files other than the demo's (${other}), so the demo leaves its permissions ` +
        `alone: run chmod o+x ${folder} or choose an empty folder`,
    );
  }
  if ((info.mode & 0o070) !== 0 && info.gid !== runAs.gid) {
    throw refusal(
      `its group (gid ${info.gid}) has access to it, so the demo leaves its group alone: ` +
        `run chmod o+x ${folder} or choose another folder`,
    );
  }
  const mode = (info.mode & 0o7777) | 0o010;
  await chown(folder, info.uid, runAs.gid);
  await chmod(folder, mode);
  if (await blockedFolder(folder, runAs)) throw refusal();
  say(
    `let the PostgreSQL user '${SERVICE_USER}' (PostgreSQL refuses to run as root) enter ` +
      `${folder}: group gid ${runAs.gid}, mode ${mode.toString(8).padStart(4, '0')}`,
  );
}

async function embeddedServer(): Promise<PostgresServer> {
  const dataDir = join(stateDir, 'postgres');
  await letServerIn();
  const orphan = await stopOrphanedPostmaster(dataDir);
  if (orphan) {
    say(`stopped the embedded PostgreSQL (pid ${orphan}) that a killed demo left running`);
  }
  const port = await rememberedPort(stateDir);
  say(`starting embedded PostgreSQL in ${dataDir} …`);
  // On the remembered port when it is free; when another program holds it, on a free one.
  const server = await PostgresServer.start({ dataDir, ...(port ? { port } : {}) });
  if (port && server.port !== port) {
    say(
      `port ${port} (remembered in ${join(stateDir, 'postgres.port')}) is taken by another ` +
        `program: the embedded PostgreSQL now uses port ${server.port} and keeps it`,
    );
  }
  await rememberPort(stateDir, server.port);
  return server;
}

/** The middleware connects as a login role of sessions_app, so row-level security applies. */
async function appRoleUrl(adminUrl: string): Promise<string> {
  const client = new pg.Client(await resolveConnectionConfig(adminUrl));
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
  const client = new pg.Client(await resolveConnectionConfig(adminUrl));
  await client.connect();
  const seeded = await client
    .query('SELECT 1 FROM sessions.event LIMIT 1')
    .finally(() => client.end());
  if (seeded.rowCount) return;
  const result = await loadSeed(adminUrl, { sessions: DEMO_HISTORY_SESSIONS });
  say(
    `seeded ${result.sessions} sessions of history (${result.events} events) in ${result.tenants.join(', ')}`,
  );
}

/** Listens on PORT, answering a port held by another program with a sentence. */
function listen(server: Server, port: number): Promise<number> {
  return new Promise((resolvePort, reject) => {
    server.once('error', (error: NodeJS.ErrnoException) => {
      reject(
        error.code === 'EADDRINUSE'
          ? new DemoError(
              `port ${port} is taken by another program: set PORT to a free one (PORT=0 picks one)`,
            )
          : error,
      );
    });
    server.listen(port, '127.0.0.1', () => {
      const address = server.address();
      resolvePort(typeof address === 'object' && address ? address.port : port);
    });
  });
}

/** A URL fit to print: a password, if the URL has one, is not echoed to the terminal. */
function printable(url: string): string {
  const parsed = new URL(url);
  if (parsed.password) parsed.password = '****';
  return parsed.toString();
}

function say(line: string): void {
  process.stdout.write(`${line}\n`);
}

// What this start has brought up, torn down in reverse on Ctrl-C, SIGTERM or a failure.
let claim: InstanceClaim | undefined;
let server: PostgresServer | undefined;
let middleware: SessionMiddleware | undefined;
let http: Server | undefined;
let stopping: Promise<void> | undefined;

function shutdown(exitCode: number): Promise<void> {
  stopping ??= (async () => {
    if (http?.listening) {
      http.closeAllConnections();
      http.close();
    }
    await middleware?.close().catch(() => {});
    await server?.stop().catch(() => {});
    claim?.release();
    process.exit(exitCode);
  })();
  return stopping;
}
process.on('SIGINT', () => void shutdown(0));
process.on('SIGTERM', () => void shutdown(0));
// However the process ends (short of SIGKILL), the pid file goes with it.
process.on('exit', () => claim?.release());

async function main(): Promise<void> {
  const claimed = await claimInstance(stateDir, basename(fileURLToPath(import.meta.url)));
  if ('running' in claimed) {
    const { pid, appUrl } = claimed.running;
    throw new DemoError(
      `the demo is already ${appUrl ? `running on ${appUrl}` : 'starting'} (pid ${pid}); ` +
        `stop it first, or set DEMO_DATA_DIR to run another one`,
    );
  }
  claim = claimed.claim;
  if (!process.env.DATABASE_URL) server = await embeddedServer();
  const url = server ? server.url('postgres') : process.env.DATABASE_URL!;
  const migrated = await migrate(url, 'up');
  if (migrated.exitCode !== 0) {
    throw new DemoError(`migration failed: ${migrated.error?.message ?? migrated.output.trim()}`);
  }
  for (const file of migrated.applied) say(`applied ${file}`);
  if (migrated.applied.length === 0) say(`schema up to date (${migrated.appliedCount} applied)`);
  if (server) await seedOnce(url);
  const demo = createDemoApp({ database: server ? await appRoleUrl(url) : url });
  middleware = demo.middleware;
  await middleware.start();
  http = createServer(demo.app.callback());
  const port = await listen(http, httpPort());
  const appUrl = `http://localhost:${port}/`;
  await claim.publish(appUrl);
  say(`pg-sessions demo on ${appUrl} (pid ${process.pid}; Ctrl-C to stop)`);
  say(`reports: DATABASE_URL='${printable(url)}' npx pg-sessions report daily_session_counts`);
}

function httpPort(): number {
  const port = Number(process.env.PORT ?? 3000);
  if (!Number.isInteger(port) || port < 0 || port > 65535) {
    throw new DemoError(`PORT must be a port number (0 picks a free one), not ${process.env.PORT}`);
  }
  return port;
}

try {
  await main();
} catch (error) {
  // A setup problem is one line; anything else keeps its stack under NODE_DEBUG.
  const message = error instanceof Error ? error.message : String(error);
  process.stderr.write(`pg-sessions demo: ${message}\n`);
  if (!(error instanceof DemoError) && process.env.NODE_DEBUG) console.error(error);
  await shutdown(1);
}
