// Run by root, the embedded PostgreSQL runs as an unprivileged user: a folder only root
// may enter (what `mktemp -d` makes) must not end in initdb's "Permission denied".
import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { mkdir, mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import test from 'ava';
import { PostgresServer } from '../src/testing/index.js';

const START_SCRIPT = fileURLToPath(new URL('../examples/start.ts', import.meta.url));
const TESTING = fileURLToPath(new URL('../src/testing/index.ts', import.meta.url));
const SERVER_USER = 'postgres';

// Only root gets an unprivileged server user; as any other user there is nothing to prove.
const asRoot = process.getuid?.() === 0;
const rootTest = asRoot ? test.serial : test.serial.skip;

const folders: string[] = [];
const children = new Set<ChildProcess>();

/** A fresh folder as `mktemp -d` makes it: mode 0700, owned by root. */
async function rootOnlyFolder(): Promise<string> {
  const folder = await mkdtemp(join(tmpdir(), 'pg-sessions-root-only-'));
  folders.push(folder);
  return folder;
}

function run(
  args: string[],
  env: Record<string, string>,
  until?: RegExp,
): { child: ChildProcess; output: () => string; matched: Promise<void>; exited: Promise<number> } {
  const { DATABASE_URL: _ignored, PG_TEST_URL: _alsoIgnored, ...inherited } = process.env;
  const child = spawn(process.execPath, ['--import', 'tsx', ...args], {
    env: { ...inherited, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  children.add(child);
  let output = '';
  let onOutput = () => {};
  const collect = (chunk: Buffer) => {
    output += chunk.toString();
    onOutput();
  };
  child.stdout!.on('data', collect);
  child.stderr!.on('data', collect);
  const exited = new Promise<number>((resolve) => {
    child.once('exit', (code, signal) => {
      children.delete(child);
      resolve(code ?? (signal ? 128 : 1));
      onOutput();
    });
  });
  const matched = new Promise<void>((resolve, reject) => {
    onOutput = () => {
      if (until?.test(output)) resolve();
      else if (child.exitCode !== null || child.signalCode !== null) {
        reject(new Error(`ended before printing ${until}:\n${output}`));
      }
    };
  });
  matched.catch(() => {});
  return { child, output: () => output, matched, exited };
}

function owner(uid: number): string {
  return execFileSync('id', ['-nu', String(uid)])
    .toString()
    .trim();
}

function serverGid(): number {
  return Number(execFileSync('id', ['-g', SERVER_USER]).toString().trim());
}

async function postmasterPid(dataDir: string): Promise<number | undefined> {
  const text = await readFile(join(dataDir, 'postmaster.pid'), 'utf8').catch(() => '');
  const pid = Number(text.split('\n')[0]);
  if (!(pid > 0)) return undefined;
  try {
    process.kill(pid, 0);
    return pid;
  } catch {
    return undefined;
  }
}

test.after.always(async () => {
  for (const child of children) child.kill('SIGKILL');
  for (const folder of folders) {
    // A demo killed by a failed test leaves its server running.
    const pid = await postmasterPid(join(folder, 'postgres'));
    if (pid) process.kill(pid, 'SIGQUIT');
    for (let waited = 0; pid && (await postmasterPid(join(folder, 'postgres'))); waited += 50) {
      if (waited > 10_000) break;
      await delay(50);
    }
    await rm(folder, { recursive: true, force: true });
  }
});

const STARTED = /^pg-sessions demo on (http:\/\/localhost:\d+\/) \(pid \d+;/m;

rootTest(
  'npm start by root with DEMO_DATA_DIR a fresh mktemp -d folder lets the server user in, and only it',
  async (t) => {
    const folder = await rootOnlyFolder();
    t.is((await stat(folder)).mode & 0o777, 0o700);
    const demo = run([START_SCRIPT], { DEMO_DATA_DIR: folder, PORT: '0' }, STARTED);
    await demo.matched;
    const appUrl = STARTED.exec(demo.output())![1]!;
    t.regex(await (await fetch(appUrl)).text(), /pg-sessions demo/);
    t.regex(
      demo.output(),
      new RegExp(`^let the PostgreSQL user '${SERVER_USER}' .* enter ${folder}: .*mode 0710$`, 'm'),
    );
    const info = await stat(folder);
    t.is(info.mode & 0o7777, 0o710, 'search permission for the group only; nothing for others');
    t.is(info.uid, 0, 'the folder stays root’s');
    t.is(info.gid, serverGid(), 'its group is the server user’s');
    const data = await stat(join(folder, 'postgres'));
    t.is(owner(data.uid), SERVER_USER);
    t.is(data.mode & 0o777, 0o700);

    demo.child.kill('SIGTERM');
    t.is(await demo.exited, 0);
    t.is(
      await postmasterPid(join(folder, 'postgres')),
      undefined,
      'the server stops with the demo',
    );
  },
);

rootTest(
  'npm start by root refuses in one line when a folder above DEMO_DATA_DIR shuts the server user out',
  async (t) => {
    const parent = await rootOnlyFolder();
    const demo = run([START_SCRIPT], { DEMO_DATA_DIR: join(parent, 'state'), PORT: '0' });
    t.is(await demo.exited, 1);
    t.is(
      demo.output(),
      `pg-sessions demo: DEMO_DATA_DIR ${join(parent, 'state')} is not reachable by the PostgreSQL user '${SERVER_USER}' (PostgreSQL refuses to run as root): it cannot enter ${parent}; run chmod o+x ${parent} or choose another folder\n`,
    );
    const info = await stat(parent);
    t.is(info.mode & 0o7777, 0o700, 'a folder the user did not name is left alone');
    t.is(info.gid, 0);
  },
);

rootTest(
  'npm start by root refuses in one line when DEMO_DATA_DIR holds files other than the demo’s',
  async (t) => {
    const folder = await rootOnlyFolder();
    await writeFile(join(folder, 'notes.txt'), 'private\n', { mode: 0o644 });
    const demo = run([START_SCRIPT], { DEMO_DATA_DIR: folder, PORT: '0' });
    t.is(await demo.exited, 1);
    t.is(
      demo.output(),
      `pg-sessions demo: DEMO_DATA_DIR ${folder} is not reachable by the PostgreSQL user '${SERVER_USER}' (PostgreSQL refuses to run as root): it cannot enter ${folder}; it holds files other than the demo's (notes.txt), so the demo leaves its permissions alone: run chmod o+x ${folder} or choose an empty folder\n`,
    );
    const info = await stat(folder);
    t.is(info.mode & 0o7777, 0o700);
    t.is(info.gid, 0);
  },
);

rootTest(
  'the harness under a root-only TMPDIR runs its servers below /tmp and leaves TMPDIR as it was',
  async (t) => {
    const privateTmp = await rootOnlyFolder();
    const script = `
      import pg from 'pg';
      import { createTestDatabase, PostgresServer, stopTestServer } from ${JSON.stringify(TESTING)};
      const server = await PostgresServer.start();
      const db = await createTestDatabase();
      const client = new pg.Client(db.url);
      await client.connect();
      const { rows } = await client.query("SELECT to_regclass('sessions.session') IS NOT NULL AS migrated");
      await client.end();
      console.log(JSON.stringify({ dataDirs: [server.dataDir, db.server.process.dataDir], migrated: rows[0].migrated }));
      await db.drop();
      await stopTestServer();
      await server.destroy();
    `;
    const child = run(['--input-type=module', '-e', script], { TMPDIR: privateTmp });
    t.is(await child.exited, 0, child.output());
    const { dataDirs, migrated } = JSON.parse(child.output().trim().split('\n').at(-1)!) as {
      dataDirs: string[];
      migrated: boolean;
    };
    t.true(migrated);
    for (const dataDir of dataDirs) {
      t.true(dataDir.startsWith('/tmp/') || dataDir.startsWith('/var/tmp/'), dataDir);
      t.false(dataDir.startsWith(`${privateTmp}/`));
    }
    const info = await stat(privateTmp);
    t.is(info.mode & 0o7777, 0o700, 'TMPDIR keeps its mode');
    t.is(info.gid, 0, 'and its group');
  },
);

rootTest(
  'PostgresServer.start refuses in one line a data folder the server user cannot reach',
  async (t) => {
    const parent = await rootOnlyFolder();
    const dataDir = join(parent, 'data');
    const error = await t.throwsAsync(PostgresServer.start({ dataDir }));
    t.is(
      error?.message,
      `data folder ${dataDir} is not reachable by the PostgreSQL user '${SERVER_USER}' (PostgreSQL refuses to run as root): it cannot enter ${parent}; run chmod o+x ${parent} or choose another folder`,
    );
    t.is((await stat(parent)).mode & 0o7777, 0o700);
    t.is((await stat(dataDir)).uid, 0, 'the data folder was not handed over');
  },
);

rootTest(
  'a data folder the server user can reach below a root-only one works once let in',
  async (t) => {
    const parent = await rootOnlyFolder();
    await mkdir(join(parent, 'data'));
    execFileSync('chmod', ['o+x', parent]);
    const server = await PostgresServer.start({ dataDir: join(parent, 'data') });
    t.teardown(() => server.destroy());
    t.true(server.running);
  },
);
