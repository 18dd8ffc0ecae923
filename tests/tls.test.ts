import { chmod, chown, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import test from 'ava';
import pg from 'pg';
import { generate } from 'selfsigned';
import { connectionTarget } from '../src/db/connection-config.js';
import { forDbmate } from '../src/db/migrator.js';
import { createTestDatabase, PostgresServer } from '../src/testing/index.js';
import { unprivilegedUser } from '../src/testing/os-user.js';
import { runCli, runNode } from './helpers/cli.js';
import { Browser, startApp } from './helpers/http.js';

// One server with `ssl = on` whose pg_hba.conf accepts TLS connections only (a plain
// one is refused), with a certificate for 127.0.0.1 signed by a CA this file makes.
let folder: string;
let server: PostgresServer;
let caFile: string;
let wrongCaFile: string;
let appUrl: string;

test.before(async () => {
  folder = await mkdtemp(join(tmpdir(), 'pg-sessions-tls-'));
  // The server's user (not root) reads the certificate, key and rules from here.
  await chmod(folder, 0o755);
  const ca = await certificateAuthority('pg-sessions test CA');
  const wrongCa = await certificateAuthority('some other CA');
  const serverCert = await generate([{ name: 'commonName', value: '127.0.0.1' }], {
    keyType: 'ec',
    algorithm: 'sha256',
    ca: { key: ca.private, cert: ca.cert },
    extensions: [
      { name: 'basicConstraints', cA: false },
      { name: 'keyUsage', digitalSignature: true, keyEncipherment: true },
      { name: 'extKeyUsage', serverAuth: true },
      {
        name: 'subjectAltName',
        altNames: [
          { type: 7, ip: '127.0.0.1' },
          { type: 2, value: 'localhost' },
        ],
      },
    ],
  });
  caFile = join(folder, 'root.crt');
  wrongCaFile = join(folder, 'wrong-root.crt');
  const certFile = join(folder, 'server.crt');
  const keyFile = join(folder, 'server.key');
  const hbaFile = join(folder, 'pg_hba.conf');
  await writeFile(caFile, ca.cert);
  await writeFile(wrongCaFile, wrongCa.cert);
  await writeFile(certFile, serverCert.cert);
  // PostgreSQL refuses a key readable by others, or owned by another user than its own.
  await writeFile(keyFile, serverCert.private, { mode: 0o600 });
  const runAs = await unprivilegedUser();
  if (runAs.uid !== undefined) await chown(keyFile, runAs.uid, runAs.gid ?? runAs.uid);
  await writeFile(
    hbaFile,
    'local all all trust\nhostssl all all 127.0.0.1/32 trust\nhostssl replication all 127.0.0.1/32 trust\n',
  );
  server = await PostgresServer.start({
    settings: {
      ssl: 'on',
      ssl_cert_file: certFile,
      ssl_key_file: keyFile,
      hba_file: hbaFile,
    },
  });
  const admin = new pg.Client({
    connectionString: server.url(),
    ssl: { rejectUnauthorized: false },
  });
  await admin.connect();
  await admin.query('CREATE DATABASE app');
  await admin.end();
  appUrl = server.url('app');
});

test.after.always(async () => {
  await server?.destroy();
  if (folder) await rm(folder, { recursive: true, force: true });
});

async function certificateAuthority(name: string) {
  return generate([{ name: 'commonName', value: name }], {
    keyType: 'ec',
    algorithm: 'sha256',
    extensions: [
      { name: 'basicConstraints', cA: true, critical: true },
      { name: 'keyUsage', keyCertSign: true, cRLSign: true, critical: true },
    ],
  });
}

function withParams(url: string, params: Record<string, string>): string {
  const parsed = new URL(url);
  for (const [name, value] of Object.entries(params)) parsed.searchParams.set(name, value);
  return parsed.toString();
}

/** A CLI failure as operators read it: exit 2, one line with the prefix, nothing else. */
function assertOneLineFailure(
  t: import('ava').ExecutionContext,
  result: { code: number | null; stdout: string; stderr: string },
  pattern: RegExp,
) {
  t.log(result.stderr.trim());
  t.is(result.code, 2, result.stderr + result.stdout);
  t.is(result.stdout, '');
  t.regex(result.stderr, /^pg-sessions: [^\n]+\n$/);
  t.regex(result.stderr, pattern);
  t.notRegex(result.stderr, /SECURITY WARNING/);
}

test.serial(
  'a plain URL migrates a TLS-only server through the CLI: status, up, status',
  async (t) => {
    const pending = await runCli(['migrate', 'status', '--url', appUrl]);
    t.is(pending.code, 1, pending.stderr + pending.stdout);
    t.is(pending.stderr, '');
    const up = await runCli(['migrate', 'up'], { DATABASE_URL: appUrl });
    t.is(up.code, 0, up.stderr + up.stdout);
    t.notRegex(up.stderr, /SECURITY WARNING|pq:/);
    const applied = await runCli(['migrate', 'status', '--url', appUrl]);
    t.is(applied.code, 0, applied.stderr + applied.stdout);
    t.is(applied.stderr, '');
  },
);

test.serial(
  'a plain URL serves sessions over HTTP from a TLS-only server, listener included',
  async (t) => {
    const app = await startApp({ database: appUrl }, (router) => {
      router.get('/count', (ctx) => {
        ctx.session!.count = Number(ctx.session!.count ?? 0) + 1;
        ctx.body = { count: ctx.session!.count };
      });
    });
    t.teardown(() => app.close());
    const browser = new Browser(app.url);
    t.is((await browser.request('/count')).status, 200);
    const second = await browser.request('/count');
    t.deepEqual(second.body, { count: 2 });
    t.is(
      typeof app.middleware.listenerPid,
      'number',
      'the LISTEN connection is up (over TLS: nothing else is let in)',
    );
  },
);

test.serial('sslmode=require and verify-ca/verify-full with the right CA connect', async (t) => {
  for (const params of <Record<string, string>[]>[
    { sslmode: 'require' },
    { sslmode: 'verify-ca', sslrootcert: caFile },
    { sslmode: 'verify-full', sslrootcert: caFile },
  ]) {
    const url = withParams(appUrl, params);
    const status = await runCli(['migrate', 'status', '--url', url]);
    t.is(status.code, 0, `${params.sslmode}: ${status.stderr}${status.stdout}`);
    t.is(status.stderr, '');
  }
  const app = await startApp(
    { database: withParams(appUrl, { sslmode: 'verify-full', sslrootcert: caFile }) },
    (router) => {
      router.get('/hello', (ctx) => {
        ctx.session!.hello = 'world';
        ctx.body = 'ok';
      });
    },
  );
  t.teardown(() => app.close());
  t.is((await new Browser(app.url).request('/hello')).status, 200);
});

test.serial('verify-full with another CA fails in one line, before dbmate runs', async (t) => {
  const url = withParams(appUrl, { sslmode: 'verify-full', sslrootcert: wrongCaFile });
  const result = await runCli(['migrate', 'status', '--url', url]);
  assertOneLineFailure(t, result, /cannot connect to 127\.0\.0\.1:\d+\/app: .*certificate/);
  const report = await runCli(['status', '--url', url]);
  t.not(report.code, 0);
  t.notRegex(report.stderr, /SECURITY WARNING/);
});

test.serial(
  'sslmode=disable against a TLS-only server fails in one line naming the cause',
  async (t) => {
    const result = await runCli([
      'migrate',
      'up',
      '--url',
      withParams(appUrl, { sslmode: 'disable' }),
    ]);
    assertOneLineFailure(t, result, /no pg_hba\.conf entry .*no encryption/);
  },
);

test.serial(
  'dbmate is given lib/pq sslmode require by a TLS server, the user mode otherwise',
  async (t) => {
    t.is(new URL(await forDbmate(appUrl)).searchParams.get('sslmode'), 'require');
    const full = new URL(
      await forDbmate(withParams(appUrl, { sslmode: 'verify-full', sslrootcert: caFile })),
    );
    t.is(full.searchParams.get('sslmode'), 'verify-full');
    t.is(full.searchParams.get('sslrootcert'), caFile);
  },
);

test.serial(
  'without TLS on the server: a plain URL works, sslmode=require fails in one line without the warning',
  async (t) => {
    const db = await createTestDatabase();
    t.teardown(() => db.drop());
    t.is(new URL(await forDbmate(db.url)).searchParams.get('sslmode'), 'disable');
    const plain = await runCli(['migrate', 'status', '--url', db.url]);
    t.is(plain.code, 0, plain.stderr + plain.stdout);
    const required = await runCli([
      'migrate',
      'status',
      '--url',
      withParams(db.url, { sslmode: 'require' }),
    ]);
    assertOneLineFailure(t, required, /does not support SSL/);
    const report = await runCli([
      'report',
      'active_sessions_per_tenant',
      '--url',
      withParams(db.url, { sslmode: 'require' }),
    ]);
    assertOneLineFailure(t, report, /does not support SSL/);
  },
);

test('an sslmode libpq does not know is refused before connecting', async (t) => {
  const result = await runCli([
    'migrate',
    'status',
    '--url',
    'postgres://nobody@127.0.0.1:1/app?sslmode=maybe',
  ]);
  assertOneLineFailure(t, result, /sslmode "maybe" is not one of disable, allow, prefer/);
});

test('TLS parameters are taken out of the URL; an explicit ssl option is left as given', (t) => {
  const target = connectionTarget(
    'postgres://app@db.example:6543/app?sslmode=verify-full&sslrootcert=/ca.pem&application_name=x',
  );
  t.deepEqual(target.tls, {
    mode: 'verify-full',
    rootCert: '/ca.pem',
    cert: undefined,
    key: undefined,
  });
  t.deepEqual(target.endpoint, { host: 'db.example', port: 6543 });
  t.is(target.config.connectionString, 'postgres://app@db.example:6543/app?application_name=x');
  const explicit = connectionTarget({ connectionString: 'postgres://a@h/d', ssl: false });
  t.is(explicit.tls, undefined);
  t.is(connectionTarget('postgres://a@h/d').tls?.mode, 'prefer', "libpq's default");
});

test.serial(
  'PG_TEST_URL with a plain URL of a TLS-only server builds migrated test databases',
  async (t) => {
    const testing = fileURLToPath(new URL('../src/testing/index.ts', import.meta.url));
    const script = `
    import pg from 'pg';
    import { createTestDatabase } from ${JSON.stringify(testing)};
    const db = await createTestDatabase();
    const client = new pg.Client({ connectionString: db.appUrl, ssl: { rejectUnauthorized: false } });
    await client.connect();
    const { rows } = await client.query('SELECT count(*)::int AS n FROM sessions.schema_migrations');
    await client.end();
    await db.drop();
    console.log(JSON.stringify(rows[0]));
  `;
    const { code, stdout, stderr } = await runNode(
      ['--import', 'tsx', '--input-type=module', '-e', script],
      { PG_TEST_URL: server.url() },
    );
    t.is(code, 0, stderr);
    t.true(JSON.parse(stdout).n > 0, stdout);
    t.notRegex(stderr, /SECURITY WARNING/);
  },
);
