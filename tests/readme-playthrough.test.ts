import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import test from 'ava';
import pg from 'pg';
import { expectedMigrationVersions } from '../src/db/migrator.js';
import { freePort } from '../src/testing/free-port.js';
import { PostgresServer } from '../src/testing/index.js';
import { packAndInstall } from './helpers/package.js';

// A stranger's first hour, played from the README as written: the package installed
// from `npm pack` into a fresh folder, plain URLs (no sslmode, nothing test-only), a
// database owner that is not a superuser and cannot create roles (the README's
// "roles managed by someone else" recipe), the middleware on its own login role with
// the defaults (cache on), and the CLI commands an operator runs. On a server of its
// own, since the sessions_* roles are cluster-wide.

const execFileAsync = promisify(execFile);
const TSX = import.meta.resolve('tsx');

let server: PostgresServer | undefined;
let consumer: string | undefined;
const apps: ChildProcess[] = [];

test.before(async () => {
  [server, consumer] = await Promise.all([PostgresServer.start(), packAndInstall(['koa'])]);
});

test.after.always(async () => {
  for (const app of apps) app.kill('SIGKILL');
  await server?.destroy();
  if (consumer) await rm(consumer, { recursive: true, force: true });
});

/** A plain URL, the form a platform hands out: user, host, port, database, nothing else. */
function plainUrl(role: string, database: string): string {
  const { port } = server as PostgresServer;
  return `postgres://${role}@127.0.0.1:${port}/${database}`;
}

async function asSuperuser(text: string, database = 'postgres'): Promise<void> {
  const client = new pg.Client(plainUrl('postgres', database));
  await client.connect();
  try {
    await client.query(text);
  } finally {
    await client.end();
  }
}

interface Run {
  readonly code: number | null;
  readonly stdout: string;
  readonly stderr: string;
}

/** `npx pg-sessions …` in the consumer's folder: the installed package's bin. */
async function pgSessions(args: string[], env: Record<string, string> = {}): Promise<Run> {
  try {
    const { stdout, stderr } = await execFileAsync(
      join(consumer as string, 'node_modules', '.bin', 'pg-sessions'),
      args,
      { cwd: consumer, env: { ...withoutNpmConfig(), ...env }, timeout: 60_000 },
    );
    return { code: 0, stdout, stderr };
  } catch (error) {
    const failure = error as { code?: number; stdout?: string; stderr?: string };
    return {
      code: typeof failure.code === 'number' ? failure.code : null,
      stdout: failure.stdout ?? '',
      stderr: failure.stderr ?? '',
    };
  }
}

function withoutNpmConfig(): Record<string, string> {
  return Object.fromEntries(
    Object.entries(process.env).filter(
      (entry): entry is [string, string] => !/^npm_/i.test(entry[0]) && entry[1] !== undefined,
    ),
  );
}

/** The README's first TypeScript example, as published, listening on `port` instead of 3000. */
async function readmeExample(port: number): Promise<string> {
  const readme = await readFile(
    join(consumer as string, 'node_modules/pg-sessions/README.md'),
    'utf8',
  );
  const first = /```ts\n([\s\S]*?)```/.exec(readme)?.[1];
  if (!first?.includes('app.listen(3000)')) throw new Error('README: first example not found');
  return first.replace('app.listen(3000)', `app.listen(${port}, '127.0.0.1')`);
}

/** Starts a TypeScript app file in the consumer's folder and waits until it answers. */
async function startApp(file: string, port: number, env: Record<string, string>): Promise<void> {
  const app = spawn(process.execPath, ['--import', TSX, file], {
    cwd: consumer,
    env: { ...withoutNpmConfig(), ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  apps.push(app);
  let output = '';
  app.stdout?.on('data', (chunk: Buffer) => {
    output += chunk.toString();
  });
  app.stderr?.on('data', (chunk: Buffer) => {
    output += chunk.toString();
  });
  const deadline = Date.now() + 30_000;
  while (Date.now() < deadline) {
    if (app.exitCode !== null) throw new Error(`${file} exited: ${output}`);
    try {
      await fetch(`http://127.0.0.1:${port}/`, { method: 'HEAD' });
      return;
    } catch {
      await new Promise((resolve) => setTimeout(resolve, 200));
    }
  }
  throw new Error(`${file} did not answer within 30 s: ${output}`);
}

/** One browser: keeps the cookies a site sets. */
function browser(port: number) {
  const jar = new Map<string, string>();
  return async (path: string, method = 'GET'): Promise<{ status: number; body: string }> => {
    const response = await fetch(`http://127.0.0.1:${port}${path}`, {
      method,
      headers: { cookie: [...jar].map(([name, value]) => `${name}=${value}`).join('; ') },
    });
    for (const line of response.headers.getSetCookie()) {
      const [pair] = line.split(';');
      const [name, value] = (pair as string).split('=') as [string, string];
      if (/expires=Thu, 01 Jan 1970/i.test(line)) jar.delete(name);
      else jar.set(name, value);
    }
    return { status: response.status, body: await response.text() };
  };
}

test.serial(
  'the README from the top: migrate as a plain owner, serve sessions, revoke, report, gate CI',
  async (t) => {
    t.timeout(300_000);
    // What a platform or a DBA hands a new user: an owner without CREATEROLE, login roles.
    await asSuperuser('CREATE ROLE app_owner LOGIN');
    await asSuperuser('CREATE DATABASE app OWNER app_owner');
    await asSuperuser('CREATE ROLE my_app_login LOGIN');
    await asSuperuser('CREATE ROLE my_analyst_login LOGIN');
    const ownerEnv = { DATABASE_URL: plainUrl('app_owner', 'app') };

    // CI gate before anything is applied: pending.
    const pending = await pgSessions(['migrate', 'status'], ownerEnv);
    t.is(pending.code, 1, pending.stderr);

    // Without the roles, the owner is stopped before anything is applied, and told why.
    const refused = await pgSessions(['migrate', 'up'], ownerEnv);
    t.is(refused.code, 2);
    t.regex(refused.stderr, /^pg-sessions: .*CREATEROLE.*\n$/);

    // "Roles managed by someone else": print the SQL, the DBA runs it, the owner migrates.
    const roles = await pgSessions(['migrate', 'roles', '--owner', 'app_owner']);
    t.is(roles.code, 0, roles.stderr);
    await asSuperuser(roles.stdout);
    const up = await pgSessions(['migrate', 'up'], ownerEnv);
    t.is(up.code, 0, up.stderr);
    const migrations = (await expectedMigrationVersions()).length;
    t.is(up.stdout.match(/^applied /gm)?.length, migrations, up.stdout);
    const again = await pgSessions(['migrate', 'up'], ownerEnv);
    t.true(again.stdout.includes(`up to date (${migrations} applied)`), again.stdout);
    const gate = await pgSessions(['migrate', 'status'], ownerEnv);
    t.is(gate.code, 0, gate.stdout + gate.stderr);

    // The README's GRANTs, run by whoever may grant the roles.
    await asSuperuser('GRANT sessions_app TO my_app_login', 'app');
    await asSuperuser('GRANT sessions_auditor TO my_analyst_login', 'app');

    // The README's first example, connected as the application's login role, defaults on.
    const examplePort = await freePort();
    await writeFile(join(consumer as string, 'app.ts'), await readmeExample(examplePort));
    const appEnv = {
      DATABASE_URL: plainUrl('my_app_login', 'app'),
      SESSION_SECRET: 'a long random secret for the play-through',
    };
    await startApp('app.ts', examplePort, appEnv);
    const visit = browser(examplePort);
    t.is((await visit('/')).body, 'views: 1');
    t.is((await visit('/')).body, 'views: 2');
    t.is((await visit('/')).body, 'views: 3');

    // A login, bound with the README's ctx.sessions.bindUser, on a second app process.
    const loginPort = await freePort();
    await writeFile(
      join(consumer as string, 'login.ts'),
      `import Koa from 'koa';
import { sessions } from 'pg-sessions';

const app = new Koa();
app.keys = [process.env.SESSION_SECRET!];
app.use(sessions({ database: process.env.DATABASE_URL }));
app.use((ctx) => {
  if (ctx.path === '/login' && ctx.method === 'POST') {
    ctx.sessions.bindUser('alice');
    ctx.session!.name = 'Alice';
  }
  ctx.body = ctx.sessions.userId ?? 'signed out';
});
app.listen(${loginPort}, '127.0.0.1');
`,
    );
    await startApp('login.ts', loginPort, appEnv);
    const alice = browser(loginPort);
    t.is((await alice('/')).body, 'signed out');
    t.is((await alice('/login', 'POST')).body, 'alice');
    t.is((await alice('/')).body, 'alice');
    t.is((await alice('/')).body, 'alice'); // from the app's cache

    // revoke needs a tenant (or --all-tenants), and names its count per tenant.
    const unscoped = await pgSessions(['revoke', '--user', 'alice', '--reason', 'test'], ownerEnv);
    t.is(unscoped.code, 2);
    const revoked = await pgSessions(
      ['revoke', '--user', 'alice', '--tenant', 'default', '--reason', 'play-through'],
      ownerEnv,
    );
    t.is(revoked.code, 0, revoked.stderr);
    t.regex(revoked.stdout, /default: 1 session/);
    // Every app node drops it at once, cache or not.
    let signedOut = false;
    for (let attempt = 0; attempt < 20 && !signedOut; attempt++) {
      signedOut = (await alice('/')).body === 'signed out';
      if (!signedOut) await new Promise((resolve) => setTimeout(resolve, 100));
    }
    t.true(signedOut, 'the revoked session still worked');

    // The auditor reads the reports with its own login role.
    const report = await pgSessions(['report', 'active_sessions_per_tenant', '--format', 'csv'], {
      DATABASE_URL: plainUrl('my_analyst_login', 'app'),
    });
    t.is(report.code, 0, report.stderr);
    t.regex(report.stdout, /^tenant_id,/m);
    t.regex(report.stdout, /^default,/m);
  },
);
