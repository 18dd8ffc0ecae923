import { type ChildProcess, spawn } from 'node:child_process';
import { chmod, mkdtemp, readFile, rm } from 'node:fs/promises';
import { type AddressInfo, createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import test from 'ava';
import type pg from 'pg';
import { createDemoApp } from '../examples/app.js';
import type { TestDatabase } from '../src/testing/index.js';
import { sessionRows, setupDatabase } from './helpers/database.js';
import { Browser } from './helpers/http.js';

let db: TestDatabase;
let admin: pg.Pool;
let baseUrl: string;
let close: () => Promise<void>;

test.before(async () => {
  ({ db, admin } = await setupDatabase());
  const { app, middleware } = createDemoApp({ database: db.appUrl, touchInterval: 0, gc: false });
  const server = app.listen(0, '127.0.0.1');
  await new Promise((resolve) => server.once('listening', resolve));
  baseUrl = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  close = async () => {
    server.closeAllConnections();
    await new Promise((resolve) => server.close(resolve));
    await middleware.close();
  };
});

test.after.always(async () => {
  await close?.();
  await admin?.end();
  await db?.drop();
});

/**
 * Submits a form as a browser does after opening a page of the demo: the page's CSRF
 * token (its hidden `_csrf` field) goes with the fields, the cookies both ways.
 */
async function formSubmit(
  browser: Browser,
  path: string,
  fields: Record<string, string> = {},
  options: { token?: string | false } = {},
): Promise<Response> {
  const token = options.token ?? (await pageToken(browser));
  const body = new URLSearchParams(token === false ? fields : { _csrf: token, ...fields });
  const response = await fetch(`${baseUrl}${path}`, {
    method: 'POST',
    redirect: 'manual',
    headers: {
      'content-type': 'application/x-www-form-urlencoded',
      cookie: [...browser.cookies].map(([name, value]) => `${name}=${value}`).join('; '),
    },
    body: body.toString(),
  });
  for (const line of response.headers.getSetCookie()) {
    const [pair = ''] = line.split(';');
    const [name = '', value = ''] = pair.split('=');
    if (value === '' || /expires=Thu, 01 Jan 1970/i.test(line)) browser.cookies.delete(name);
    else browser.cookies.set(name, value);
  }
  return response;
}

async function formPost(browser: Browser, path: string, fields: Record<string, string> = {}) {
  return (await formSubmit(browser, path, fields)).status;
}

/** The CSRF token of the home page as this browser sees it (every form carries one). */
async function pageToken(browser: Browser): Promise<string> {
  const page = (await browser.get('/')).body as string;
  const token = /name="_csrf" value="([A-Za-z0-9_-]+)"/.exec(page)?.[1];
  if (!token) throw new Error('the home page has no form with a CSRF token');
  return token;
}

const signedInAs = (user: string) => new RegExp(`Signed in as <b class="user">${user}</b>`);

/** The devices page's sessions, and which one is this device. */
function devicesOf(page: string): { ids: string[]; current: string | undefined } {
  const items = [
    ...page.matchAll(/<li class="device" data-session="([0-9a-f-]{36})">([\s\S]*?)<\/li>/g),
  ];
  return {
    ids: items.map((item) => item[1]!),
    current: items.find((item) => item[2]!.includes('This device'))?.[1],
  };
}

test.serial('the demo: log in, count, fill a cart, see and revoke devices, log out', async (t) => {
  const laptop = new Browser(baseUrl);
  const phone = new Browser(baseUrl);
  t.is(await formPost(laptop, '/counter'), 302);
  t.is(await formPost(laptop, '/cart', { item: 'tea' }), 302);
  t.is(await formPost(laptop, '/login', { user: 'ada' }), 302);
  t.is(await formPost(phone, '/login', { user: 'ada' }), 302);
  t.is(await formPost(laptop, '/counter'), 302);
  const home = (await laptop.get('/')).body as string;
  t.regex(home, signedInAs('ada'));
  t.regex(home, /<span class="count"[^>]*>2<\/span>/, 'the count survives the login');
  t.regex(home, /<li>tea<\/li>/, 'so does the cart');

  const devices = devicesOf((await laptop.get('/devices')).body as string);
  t.is(devices.ids.length, 2);
  const phoneId = devices.ids.find((id) => id !== devices.current)!;
  t.is(await formPost(laptop, `/devices/${phoneId}/revoke`), 302);
  const revoked = (await phone.get('/')).body as string;
  t.regex(revoked, /Not signed in/, 'the revoked phone is logged out');
  t.regex(
    revoked,
    /This device was signed out <time[^>]*>just now<\/time> from another of your devices/,
  );
  t.regex((await phone.get('/')).body as string, /Not signed in/);
  t.notRegex((await phone.get('/')).body as string, /signed out/, 'the notice is shown once');
  t.regex((await laptop.get('/')).body as string, signedInAs('ada'));

  t.is(await formPost(laptop, '/logout'), 302);
  const loggedOut = (await laptop.get('/')).body as string;
  t.regex(loggedOut, /Not signed in/);
  t.regex(loggedOut, /You signed out\./);
});

test.serial('the demo keeps at most five sessions per user, revoking the oldest', async (t) => {
  const browsers = Array.from({ length: 6 }, () => new Browser(baseUrl));
  for (const browser of browsers) t.is(await formPost(browser, '/login', { user: 'grace' }), 302);
  const oldest = (await browsers[0]!.get('/')).body as string;
  t.regex(oldest, /Not signed in/, 'the oldest was revoked');
  t.regex(oldest, /because you signed in on more than 5 devices/);
  for (const browser of browsers.slice(1)) {
    t.regex((await browser.get('/')).body as string, signedInAs('grace'));
  }
  const rows = (await sessionRows(admin)).filter((row) => row.user_id === 'grace');
  t.is(rows.filter((row) => row.revoked_at === null).length, 5);
  t.is(rows.filter((row) => row.revoked_reason === 'max_sessions').length, 1);
});

test.serial('"log out everywhere else" ends every other session of the user', async (t) => {
  const browsers = Array.from({ length: 3 }, () => new Browser(baseUrl));
  for (const browser of browsers) await formPost(browser, '/login', { user: 'linus' });
  t.is(await formPost(browsers[0]!, '/devices/revoke-others'), 302);
  const devices = (await browsers[0]!.get('/devices')).body as string;
  t.regex(devices, /Signed out 2 other devices\./);
  t.is(devicesOf(devices).ids.length, 1);
  t.notRegex(devices, /Log out everywhere else/, 'no button when no other device is left');
  t.regex((await browsers[1]!.get('/')).body as string, /Not signed in/);
  t.regex((await browsers[2]!.get('/')).body as string, /chose “Log out everywhere else”/);
});

test.serial(
  '"log out everywhere else" after an old sign-in asks for the name again first',
  async (t) => {
    const [laptop, phone] = [new Browser(baseUrl), new Browser(baseUrl)];
    for (const browser of [laptop, phone]) await formPost(browser, '/login', { user: 'margaret' });
    // The laptop signed in ten minutes ago, by the database's clock.
    const laptopId = devicesOf((await laptop.get('/devices')).body as string).current!;
    await admin.query(
      `UPDATE sessions.session SET authenticated_at = now() - interval '10 minutes' WHERE id = $1`,
      [laptopId],
    );
    const asked = await formSubmit(laptop, '/devices/revoke-others');
    t.is(asked.status, 401);
    t.regex(await asked.text(), /Confirm it is you[\s\S]*more than 5 minutes ago/);
    t.regex((await phone.get('/')).body as string, signedInAs('margaret'), 'nothing ended yet');

    t.is(await formPost(laptop, '/devices/revoke-others', { user: 'someone else' }), 400);
    t.regex((await phone.get('/')).body as string, signedInAs('margaret'));

    t.is(await formPost(laptop, '/devices/revoke-others', { user: 'margaret' }), 302);
    t.regex((await laptop.get('/devices')).body as string, /Signed out 1 other device\./);
    t.regex((await phone.get('/')).body as string, /Not signed in/);
    const { rows } = await admin.query(
      `SELECT kind FROM sessions.event WHERE session_id = $1 AND kind = 'reauthenticated'`,
      [laptopId],
    );
    t.is(rows.length, 1);
  },
);

test.serial('a device is named on the devices page, by its own user only', async (t) => {
  const [laptop, phone, stranger] = [
    new Browser(baseUrl),
    new Browser(baseUrl),
    new Browser(baseUrl),
  ];
  await formPost(laptop, '/login', { user: 'hedy' });
  await formPost(phone, '/login', { user: 'hedy' });
  await formPost(stranger, '/login', { user: 'mallory' });
  const phoneId = devicesOf((await phone.get('/devices')).body as string).current!;
  t.is(
    await formPost(laptop, '/devices/' + phoneId + '/rename', { name: '  Hedy’s phone 📱 ' }),
    302,
  );
  const page = (await laptop.get('/devices')).body as string;
  t.regex(page, /<p class="title">Hedy’s phone 📱<\/p>/);
  t.is(await formPost(stranger, '/devices/' + phoneId + '/rename', { name: 'mine now' }), 404);
  t.is(await formPost(laptop, '/devices/' + phoneId + '/rename', { name: 'x'.repeat(101) }), 400);
  t.regex((await phone.get('/devices')).body as string, /Hedy’s phone 📱/);
  t.is(await formPost(laptop, '/devices/' + phoneId + '/rename', { name: '' }), 302);
  t.notRegex((await laptop.get('/devices')).body as string, /Hedy’s phone/);
});

test.serial(
  'a form without its session’s token is refused with a page and changes nothing',
  async (t) => {
    const user = new Browser(baseUrl);
    t.is(await formPost(user, '/login', { user: 'joan' }), 302);
    t.is(await formPost(user, '/counter'), 302);
    const attacker = new Browser(baseUrl);
    const attackersToken = await pageToken(attacker);
    for (const token of [false, attackersToken, 'forged'] as const) {
      const refused = await formSubmit(user, '/cart', { item: 'planted' }, { token });
      t.is(refused.status, 403, String(token));
      const page = await refused.text();
      t.regex(page, /That form has expired/);
      // The refusal page keeps its "Log out" form working: it carries a fresh token.
      t.regex(page, /action="\/logout"><input type="hidden" name="_csrf" value="[A-Za-z0-9_-]+">/);
    }
    const home = (await user.get('/')).body as string;
    t.regex(home, signedInAs('joan'));
    t.regex(home, /<span class="count" aria-live="polite">1<\/span>/);
    t.regex(home, /Your cart is empty\./);
    // Every form of the page carries the token, each page a new one.
    const forms = [
      ...home.matchAll(/<form [^>]*method="post"[^>]*>([^<]*<input type="hidden" name="_csrf")?/g),
    ];
    t.true(forms.length >= 3);
    t.true(forms.every((form) => form[1] !== undefined));
    t.not(await pageToken(user), await pageToken(user));
  },
);

test.serial('signed out, the devices page lists nothing and offers the sign-in form', async (t) => {
  const page = (await new Browser(baseUrl).get('/devices')).body as string;
  t.regex(page, /Sign in to see the devices/);
  t.regex(page, /<label for="user">User name<\/label>/);
  t.notRegex(page, /class="device"|Log out everywhere else/);
});

test.serial('errors are pages with their real status and a sentence', async (t) => {
  const visitor = new Browser(baseUrl);
  const empty = await formSubmit(visitor, '/login', { user: '  ' });
  t.is(empty.status, 400);
  t.regex(await empty.text(), /Enter a user name to sign in\./);
  for (const path of ['/login', '/logout']) {
    const response = await fetch(`${baseUrl}${path}`);
    t.is(response.status, 405, path);
    t.is(response.headers.get('allow'), 'POST');
    t.regex(await response.text(), /only takes the form&#39;s POST/);
  }
  const missing = await visitor.get('/no/such/page');
  t.is(missing.status, 404);
  t.regex(missing.body as string, /There is no page at \/no\/such\/page\./);
  const favicon = await fetch(`${baseUrl}/favicon.ico`);
  t.is(favicon.status, 200);
  t.is(favicon.headers.get('content-type'), 'image/svg+xml');
  const escaped = new Browser(baseUrl);
  await formPost(escaped, '/cart', { item: '<script>alert(1)</script>' });
  t.regex(
    (await escaped.get('/')).body as string,
    /<li>&#60;script&#62;alert\(1\)&#60;\/script&#62;<\/li>/,
  );
});

// `npm start` as real processes on one state folder of this file's own (DEMO_DATA_DIR),
// so the embedded PostgreSQL is initialised and seeded once for the tests below.
const START_SCRIPT = fileURLToPath(new URL('../examples/start.ts', import.meta.url));
let stateDir: string | undefined;
const demos = new Set<ChildProcess>();

/** A running `npm start`: its output so far and a way to wait for a line of it. */
interface Demo {
  readonly process: ChildProcess;
  output(): string;
  waitFor(pattern: RegExp): Promise<RegExpExecArray>;
  exited: Promise<number | null>;
}

async function demoStateDir(): Promise<string> {
  if (stateDir) return stateDir;
  stateDir = await mkdtemp(join(tmpdir(), 'pg-sessions-demo-'));
  // The embedded server may run as an unprivileged user: it must reach its data below.
  await chmod(stateDir, 0o755);
  return stateDir;
}

async function startDemo(env: Record<string, string> = {}): Promise<Demo> {
  const { DATABASE_URL: _ignored, ...inherited } = process.env;
  const child = spawn(process.execPath, ['--import', 'tsx', START_SCRIPT], {
    env: { ...inherited, DEMO_DATA_DIR: await demoStateDir(), PORT: '0', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  demos.add(child);
  let output = '';
  const listeners = new Set<() => void>();
  const onData = (chunk: Buffer) => {
    output += chunk.toString();
    for (const listener of listeners) listener();
  };
  child.stdout!.on('data', onData);
  child.stderr!.on('data', onData);
  const exited = new Promise<number | null>((resolve) => {
    child.once('exit', (code) => {
      demos.delete(child);
      resolve(code);
      for (const listener of listeners) listener();
    });
  });
  return {
    process: child,
    output: () => output,
    exited,
    waitFor(pattern) {
      return new Promise((resolve, reject) => {
        const check = () => {
          const match = pattern.exec(output);
          if (match) {
            listeners.delete(check);
            resolve(match);
          } else if (child.exitCode !== null || child.signalCode !== null) {
            listeners.delete(check);
            reject(new Error(`npm start ended before printing ${pattern}:\n${output}`));
          }
        };
        listeners.add(check);
        check();
      });
    },
  };
}

const STARTED =
  /^pg-sessions demo on (http:\/\/localhost:\d+\/) \(pid (\d+);.*\n^reports: DATABASE_URL='([^']+)' npx pg-sessions report daily_session_counts$/m;

async function stopDemo(demo: Demo): Promise<number | null> {
  demo.process.kill('SIGTERM');
  return demo.exited;
}

/** The embedded postmaster's pid while one runs on the state folder. */
async function postmasterPid(): Promise<number | undefined> {
  const text = await readFile(
    join(await demoStateDir(), 'postgres', 'postmaster.pid'),
    'utf8',
  ).catch(() => '');
  const pid = Number(text.split('\n')[0]);
  return pid > 0 && isAlive(pid) ? pid : undefined;
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

test.after.always(async () => {
  for (const child of demos) child.kill('SIGKILL');
  // A demo killed by a failed test leaves its server behind, as a killed `npm start` does.
  const pid = await postmasterPid();
  if (pid) process.kill(pid, 'SIGQUIT');
  for (let waited = 0; pid && isAlive(pid) && waited < 10_000; waited += 50) await delay(50);
  if (stateDir) await rm(stateDir, { recursive: true, force: true });
});

test.serial(
  'two starts in a row print the app URL, the same database URL and the report command',
  async (t) => {
    const first = await startDemo();
    const [, appUrl, , databaseUrl] = await first.waitFor(STARTED);
    t.regex(await (await fetch(appUrl!)).text(), /pg-sessions demo/);
    t.is(await stopDemo(first), 0);
    t.is(await postmasterPid(), undefined, 'the embedded server stops with the demo');

    const second = await startDemo();
    const [, , , databaseUrlAgain] = await second.waitFor(STARTED);
    t.is(databaseUrlAgain, databaseUrl, 'the embedded server keeps its port');
    t.notRegex(second.output(), /seeded/, 'seeded once');
    const port = (await readFile(join(await demoStateDir(), 'postgres.port'), 'utf8')).trim();
    t.is(new URL(databaseUrl!).port, port);
    t.is(await stopDemo(second), 0);
  },
);

test.serial('a second start while one runs says so in one line and exits non-zero', async (t) => {
  const first = await startDemo();
  const [, appUrl, pid] = await first.waitFor(STARTED);
  const second = await startDemo();
  t.is(await second.exited, 1);
  t.is(
    second.output(),
    `pg-sessions demo: the demo is already running on ${appUrl} (pid ${pid}); stop it first, or set DEMO_DATA_DIR to run another one\n`,
  );
  t.regex(await (await fetch(appUrl!)).text(), /pg-sessions demo/, 'the first one still serves');
  t.is(await stopDemo(first), 0);
});

test.serial('after kill -9 of a running demo, the next start takes over', async (t) => {
  const first = await startDemo();
  const [, , , databaseUrl] = await first.waitFor(STARTED);
  const orphan = await postmasterPid();
  first.process.kill('SIGKILL');
  await first.exited;
  t.truthy(orphan && isAlive(orphan), 'the killed demo left its PostgreSQL running');

  const next = await startDemo();
  const [, appUrl, , databaseUrlAgain] = await next.waitFor(STARTED);
  t.regex(next.output(), new RegExp(`stopped the embedded PostgreSQL \\(pid ${orphan}\\)`));
  t.is(databaseUrlAgain, databaseUrl);
  t.regex(await (await fetch(appUrl!)).text(), /pg-sessions demo/);
  t.is(await stopDemo(next), 0);
  t.is(await postmasterPid(), undefined);
});

test.serial('a PORT held by another program is named in one line', async (t) => {
  const holder = createServer();
  await new Promise<void>((resolve) => holder.listen(0, '127.0.0.1', resolve));
  t.teardown(() => new Promise<void>((resolve) => holder.close(() => resolve())));
  const port = (holder.address() as AddressInfo).port;
  const demo = await startDemo({ PORT: String(port) });
  t.is(await demo.exited, 1);
  t.regex(
    demo.output(),
    new RegExp(
      `^pg-sessions demo: port ${port} is taken by another program: set PORT to a free one \\(PORT=0 picks one\\)$`,
      'm',
    ),
  );
  t.notRegex(demo.output(), /^\s+at /m, 'no stack trace');
  t.is(await postmasterPid(), undefined, 'the embedded server is stopped again');
});
