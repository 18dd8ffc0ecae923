// The middleware on a Citus cluster (issue "Past one primary"): `pg-sessions citus
// distribute` on a coordinator and two workers, then apps pointed at the coordinator as
// a plain app role, unchanged, over real HTTP. What must hold there: every mode works,
// row-level security on every node, the audit log's actor, invalidation from any
// worker on every app node, garbage collection on every shard, the user-wide
// operations across workers, and a listener that follows an added worker.
import test from 'ava';
import pg from 'pg';
import { type ConcurrencyMode, migrate, type SessionOptions } from '../../src/index.js';
import { type CitusCluster, startCitusCluster } from '../../src/testing/index.js';
import { runCli } from '../helpers/cli.js';
import { Browser, startApp, type TestApp } from '../helpers/http.js';

let cluster: CitusCluster;
let appUrl: string;
const apps: TestApp[] = [];

function asUser(url: string, user: string): string {
  const target = new URL(url);
  target.username = user;
  return target.toString();
}

/** The schema's owner: a plain login role, as the README asks (no superuser, no CREATEROLE). */
let ownerUrl: string;

test.before(async () => {
  cluster = await startCitusCluster();
  await cluster.sql('CREATE ROLE sowner LOGIN');
  await cluster.sql('GRANT CREATE ON DATABASE postgres TO sowner');
  // The DBA runs `migrate roles`' SQL once (as psql would: the DO block, then the GRANT).
  const roles = await runCli(['migrate', 'roles', '--owner', 'sowner']);
  for (const part of roles.stdout.split(/\n(?=GRANT )/)) await cluster.sql(part);
  ownerUrl = asUser(cluster.url(), 'sowner');
  await migrate(ownerUrl, 'up');
  await cluster.sql('CREATE ROLE app LOGIN IN ROLE sessions_app');
  appUrl = asUser(cluster.url(), 'app');
});

test.after.always(async () => {
  await Promise.all(apps.map((app) => app.close()));
  await cluster?.stop();
});

/** An app node on the coordinator as the app role, cache on (the default). */
async function node(options: Partial<SessionOptions> = {}): Promise<TestApp> {
  const app = await startApp(
    {
      database: appUrl,
      gc: false,
      rotationGrace: 300,
      tenant: (ctx) => String(ctx.query.tenant ?? 'default'),
      mode: (ctx) => String(ctx.query.mode ?? 'merge') as ConcurrencyMode,
      transaction: (ctx) => (ctx.query.transaction === 'request' ? 'request' : 'none'),
      ...options,
    },
    (router) => {
      router.post('/inc', (ctx) => {
        ctx.session!.n = Number(ctx.session!.n ?? 0) + 1;
        ctx.body = { n: ctx.session!.n };
      });
      router.post('/login', (ctx) => {
        ctx.sessions.bindUser(String(ctx.query.user));
        ctx.body = { id: ctx.sessions.id };
      });
      router.get('/me', (ctx) => {
        ctx.body = { id: ctx.sessions.id ?? null, data: ctx.session?.toJSON() ?? null };
      });
      router.get('/devices', async (ctx) => {
        ctx.body = await ctx.sessions.listForUser(String(ctx.query.user));
      });
      router.post('/revoke-user', async (ctx) => {
        ctx.body = { revoked: await ctx.sessions.revokeUser(String(ctx.query.user)) };
      });
      router.post('/reauthenticated', async (ctx) => {
        await ctx.sessions.reauthenticated();
        ctx.body = 'ok';
      });
      router.get('/sensitive', async (ctx) => {
        await ctx.sessions.requireFresh(Number(ctx.query.maxAge ?? 60_000));
        ctx.body = 'fresh';
      });
      router.post('/logout', (ctx) => {
        ctx.session = null;
        ctx.body = 'bye';
      });
    },
  );
  await app.middleware.start();
  apps.push(app);
  return app;
}

/** Which worker (0, 1, …) holds a session's row, from Citus' placement metadata. */
async function workerOf(sessionId: string): Promise<number> {
  const rows = await cluster.sql<{ port: number }>(
    `SELECT nodeport AS port FROM pg_dist_shard_placement
      WHERE shardid = get_shard_id_for_distribution_column('sessions.session', '${sessionId}')`,
  );
  return cluster.workers.findIndex((worker) => worker.port === rows[0]?.port);
}

test.serial(
  'citus distribute as the schema’s plain owner: refuses without Citus, distributes, and a second run changes nothing',
  async (t) => {
    await cluster.sql('CREATE DATABASE plain');
    const plain = new URL(cluster.url());
    plain.pathname = '/plain';
    await migrate(plain.toString(), 'up');
    const refused = await runCli(['citus', 'distribute', '--url', plain.toString()]);
    t.is(refused.code, 2, refused.stderr);
    t.regex(refused.stderr, /this server has no Citus/);

    const first = await runCli(['citus', 'distribute', '--url', ownerUrl]);
    t.is(first.code, 0, first.stderr);
    t.regex(first.stdout, /^done +sessions\.session distributed by id$/m);
    t.regex(first.stdout, /^done +sessions\.save_session runs on the worker of its session_id$/m);
    const again = await runCli(['citus', 'distribute', '--url', ownerUrl]);
    t.is(again.code, 0, again.stderr);
    t.regex(again.stdout, /already distributed: nothing changed/);
    // The trigger functions run as sessions_admin (handed over by a role that is not a superuser).
    const owners = await cluster.sql(
      `SELECT DISTINCT proowner::regrole::text AS owner FROM pg_proc
        WHERE pronamespace = 'sessions'::regnamespace AND prosecdef AND proname LIKE 'citus%'`,
    );
    t.deepEqual(owners, [{ owner: 'sessions_admin' }]);
    t.notRegex(again.stdout, /^done/m);
  },
);

test.serial(
  'merge, strict, lock and request transactions work through the coordinator; the row lives on a worker',
  async (t) => {
    const app = await node();
    for (const query of [
      '',
      '?mode=strict',
      '?mode=lock',
      '?transaction=request',
      '?mode=lock&transaction=request',
    ]) {
      const browser = new Browser(app.url);
      for (let i = 1; i <= 3; i++) {
        const response = await browser.post(`/inc${query}`);
        t.is(response.status, 200, `${query} ${JSON.stringify(response.body)}`);
        t.deepEqual(response.body, { n: i }, query);
      }
      const { body } = await browser.get(`/me${query}`);
      const { id } = body as { id: string };
      t.true((await workerOf(id)) >= 0, `${query}: on a worker`);
      const stored = await cluster.sql(`SELECT data FROM sessions.session WHERE id = '${id}'`);
      t.deepEqual(stored[0]?.data, { n: 3 }, query);
    }
  },
);

test.serial(
  'no lost update: parallel increments of one session in lock mode all land; in strict mode the refused ones are told',
  async (t) => {
    const app = await node();
    for (const mode of ['lock', 'strict'] as const) {
      const browser = new Browser(app.url);
      await browser.post(`/inc?mode=${mode}`);
      const answers = await Promise.all(
        Array.from({ length: 20 }, () => browser.post(`/inc?mode=${mode}`)),
      );
      const ok = answers.filter((answer) => answer.status === 200).length;
      if (mode === 'lock') t.is(ok, 20, JSON.stringify(answers.map((answer) => answer.body)));
      t.true(answers.every((answer) => answer.status === 200 || answer.status === 409));
      const { body } = await browser.get('/me');
      t.is((body as { data: { n: number } }).data.n, 1 + ok, mode);
    }
  },
);

test.serial(
  'row-level security holds on the coordinator and on each worker, as the app role',
  async (t) => {
    const app = await node();
    for (const tenant of ['alpha', 'beta']) {
      for (let i = 0; i < 6; i++) await new Browser(app.url).post(`/inc?tenant=${tenant}`);
    }
    const urls = [
      appUrl,
      ...cluster.workers.map((_, index) => asUser(cluster.workerUrl(index), 'app')),
    ];
    for (const url of urls) {
      const client = new pg.Client({ connectionString: url });
      await client.connect();
      try {
        await client.query('BEGIN');
        await client.query(
          "SET LOCAL citus.propagate_set_commands = 'local'; SET LOCAL sessions.tenant = 'alpha'",
        );
        const seen = await client.query('SELECT DISTINCT tenant_id FROM sessions.session');
        const updated = await client.query(
          "UPDATE sessions.session SET data = '{}' WHERE tenant_id = 'beta' RETURNING id",
        );
        await client.query('ROLLBACK');
        t.deepEqual(seen.rows, [{ tenant_id: 'alpha' }], url);
        t.is(updated.rowCount, 0, `${url}: beta's rows untouched`);
      } finally {
        await client.end();
      }
    }
    // A beta session's cookie presented to alpha finds nothing there.
    const beta = new Browser(app.url);
    await beta.post('/inc?tenant=beta');
    const asAlpha = await beta.get('/me?tenant=alpha');
    t.deepEqual((asAlpha.body as { data: unknown }).data, {});
  },
);

test.serial(
  'a change on any worker evicts on every app node; the audit log names the actor',
  async (t) => {
    const [a, b] = [await node(), await node()];
    const browsers = Array.from({ length: 6 }, () => new Browser(a.url));
    const ids: string[] = [];
    for (const browser of browsers) {
      await browser.post('/login?user=grace');
      ids.push(((await browser.get('/me')).body as { id: string }).id);
    }
    t.deepEqual([...new Set(await Promise.all(ids.map(workerOf)))].sort(), [0, 1], 'both workers');
    for (const browser of browsers) {
      const onB = new Browser(b.url);
      onB.cookies.clear();
      for (const [name, value] of browser.cookies) onB.cookies.set(name, value);
      await onB.get('/me'); // cached on b
      await browser.post('/inc'); // written through a
      await new Promise((resolve) => setTimeout(resolve, 200));
      const { body } = await onB.get('/me');
      t.is((body as { data: { n?: number } }).data.n, 1, 'b sees a’s write');
    }
    const actors = await cluster.sql(
      `SELECT DISTINCT actor FROM sessions.event WHERE kind = 'updated' AND session_id = ANY('{${ids.join(',')}}')`,
    );
    t.deepEqual(actors, [{ actor: 'user:grace' }]);
  },
);

test.serial(
  'listForUser and revokeUser reach every worker; every node refuses the revoked sessions',
  async (t) => {
    const [a, b] = [await node(), await node()];
    const browsers = Array.from({ length: 8 }, () => new Browser(a.url));
    for (const browser of browsers) await browser.post('/login?user=linus');
    const ids = await Promise.all(
      browsers.map(async (browser) => ((await browser.get('/me')).body as { id: string }).id),
    );
    t.deepEqual([...new Set(await Promise.all(ids.map(workerOf)))].sort(), [0, 1]);
    const listed = (await browsers[0]!.get('/devices?user=linus')).body as { id: string }[];
    t.deepEqual(listed.map((device) => device.id).sort(), [...ids].sort());
    const revoked = await browsers[0]!.post('/revoke-user?user=linus');
    t.deepEqual(revoked.body, { revoked: 8 });
    await new Promise((resolve) => setTimeout(resolve, 200));
    for (const browser of browsers) {
      const onB = new Browser(b.url);
      for (const [name, value] of browser.cookies) onB.cookies.set(name, value);
      t.is(((await onB.get('/me')).body as { id: string | null }).id, null);
    }
  },
);

test.serial(
  'garbage collection collects every shard, each deletion logged by the collector',
  async (t) => {
    const app = await node();
    const ids: string[] = [];
    for (let i = 0; i < 12; i++) {
      const browser = new Browser(app.url);
      await browser.post('/inc?tenant=gc');
      ids.push(((await browser.get('/me?tenant=gc')).body as { id: string }).id);
    }
    await cluster.sql(
      `UPDATE sessions.session SET idle_expires_at = now() - interval '1 minute',
       last_seen_at = now() - interval '2 minutes' WHERE tenant_id = 'gc'`,
    );
    const run = await runCli(['gc', '--url', appUrl]);
    t.is(run.code, 0, run.stderr);
    const left = await cluster.sql(
      `SELECT count(*)::int AS n FROM sessions.session WHERE tenant_id = 'gc'`,
    );
    t.is(left[0]?.n, 0);
    const logged = await cluster.sql(
      `SELECT count(*)::int AS n, array_agg(DISTINCT reason) AS reasons, array_agg(DISTINCT actor) AS actors
       FROM sessions.event WHERE kind = 'expired' AND session_id = ANY('{${ids.join(',')}}')`,
    );
    t.is(logged[0]?.n, 12);
    t.deepEqual(logged[0]?.reasons, ['gc']);
    t.regex(String(logged[0]?.actors), /^\{?cli:/);
  },
);

test.serial(
  'the listener follows an added worker: a change there evicts on the other node',
  async (t) => {
    const [a, b] = [await node(), await node()];
    await cluster.addWorker();
    await cluster.sql("SELECT citus_rebalance_start(shard_transfer_mode := 'block_writes')");
    await cluster.sql('SELECT citus_rebalance_wait()');
    // Within the listener's poll of pg_dist_node.
    await new Promise((resolve) => setTimeout(resolve, 6_000));
    let onNewWorker: Browser | undefined;
    for (let i = 0; i < 40 && !onNewWorker; i++) {
      const browser = new Browser(a.url);
      await browser.post('/inc');
      const { id } = (await browser.get('/me')).body as { id: string };
      if ((await workerOf(id)) === 2) onNewWorker = browser;
    }
    t.truthy(onNewWorker, 'a session landed on the new worker');
    const onB = new Browser(b.url);
    for (const [name, value] of onNewWorker!.cookies) onB.cookies.set(name, value);
    t.is(((await onB.get('/me')).body as { data: { n: number } }).data.n, 1);
    await onNewWorker!.post('/inc');
    await new Promise((resolve) => setTimeout(resolve, 200));
    t.is(((await onB.get('/me')).body as { data: { n: number } }).data.n, 2);
  },
);

test.serial(
  'step-up on Citus: reauthenticated() and requireFresh() by the database clock, on the session’s worker',
  async (t) => {
    const app = await node();
    const browser = new Browser(app.url);
    await browser.post('/login?user=ada');
    const { id } = (await browser.get('/me')).body as { id: string };
    t.is((await browser.get('/sensitive')).status, 200);
    await cluster.sql(
      `UPDATE sessions.session SET authenticated_at = now() - interval '1 hour' WHERE id = '${id}'`,
    );
    const stale = await browser.get('/sensitive');
    t.is(stale.status, 401);
    t.is((stale.body as { error: string }).error, 'SESSION_REAUTHENTICATION_REQUIRED');
    t.is((await browser.post('/reauthenticated')).status, 200);
    t.is((await browser.get('/sensitive')).status, 200);
    const logged = await cluster.sql(
      `SELECT actor FROM sessions.event WHERE session_id = '${id}' AND kind = 'reauthenticated'`,
    );
    t.deepEqual(logged, [{ actor: 'user:ada' }]);
  },
);

test.serial(
  'the CLI on Citus: revoke --session works on the session’s worker; commands that cannot run yet refuse, changing nothing',
  async (t) => {
    const app = await node();
    const browser = new Browser(app.url);
    await browser.post('/login?user=erin');
    const { id } = (await browser.get('/me')).body as { id: string };
    const revoked = await runCli([
      'revoke',
      '--session',
      id,
      '--reason',
      'admin',
      '--url',
      cluster.url(),
    ]);
    t.is(revoked.code, 0, revoked.stderr);
    t.is(((await browser.get('/me')).body as { id: string | null }).id, null);
    const [event] = await cluster.sql(
      `SELECT reason, actor FROM sessions.event WHERE session_id = '${id}' AND kind = 'revoked'`,
    );
    t.is(event?.reason, 'admin');
    t.regex(String(event?.actor), /^cli:/);
    for (const command of [
      ['erase', '--user', 'erin', '--tenant', 'default'],
      ['export', '--user', 'erin', '--tenant', 'default'],
      ['revoke', '--user', 'erin', '--tenant', 'default', '--reason', 'admin'],
      ['prune-events', '--older-than', '90d'],
    ]) {
      const run = await runCli([...command, '--url', cluster.url()]);
      t.is(run.code, 2, `${command[0]}: ${run.stderr}`);
      t.regex(run.stderr, /does not run on a Citus cluster yet/);
    }
  },
);

test.serial(
  'a worker’s listener cut: that node stops trusting its cache, clears it, and trusts it again once back',
  async (t) => {
    const [a, b] = [await node(), await node()];
    const downs: unknown[] = [];
    const ups: unknown[] = [];
    b.middleware.events.on('cache:listener:down', (error) => downs.push(error));
    b.middleware.events.on('cache:listener:up', () => ups.push(true));
    const browser = new Browser(a.url);
    await browser.post('/inc');
    const onB = new Browser(b.url);
    for (const [name, value] of browser.cookies) onB.cookies.set(name, value);
    await onB.get('/me');
    await runSqlOn(
      cluster.workerUrl(1),
      `SELECT pg_terminate_backend(pid) FROM pg_stat_activity
     WHERE application_name = 'pg-sessions-listener' AND pid <> pg_backend_pid()`,
    );
    await waitFor(() => downs.length > 0 && ups.length > 0);
    await browser.post('/inc');
    await new Promise((resolve) => setTimeout(resolve, 200));
    t.is(((await onB.get('/me')).body as { data: { n: number } }).data.n, 2);
  },
);

// Last: it stops a worker for good.
test.serial(
  'a worker down: its sessions get the typed 503 and lose nothing, the other worker’s keep working',
  async (t) => {
    const app = await node();
    const downs: unknown[] = [];
    app.middleware.events.on('cache:listener:down', (error) => downs.push(error));
    const browsers = Array.from({ length: 8 }, () => new Browser(app.url));
    const workers: number[] = [];
    for (const browser of browsers) {
      await browser.post('/inc?tenant=down');
      workers.push(
        await workerOf(((await browser.get('/me?tenant=down')).body as { id: string }).id),
      );
    }
    const stopped = workers[0]!;
    t.true(
      workers.some((worker) => worker !== stopped),
      'sessions on more than one worker',
    );
    await cluster.workers[stopped]!.stop();
    await waitFor(() => downs.length > 0);
    for (const [index, browser] of browsers.entries()) {
      const response = await browser.post('/inc?tenant=down');
      if (workers[index] === stopped) {
        t.is(response.status, 503);
        t.is((response.body as { error: string }).error, 'SESSION_STORE_UNAVAILABLE');
      } else {
        t.deepEqual(response.body, { n: 2 }, 'the other workers serve their sessions');
      }
    }
    await cluster.workers[stopped]!.launch();
    await waitFor(() => app.middleware.metrics.snapshot().listenerUp);
    for (const [index, browser] of browsers.entries()) {
      if (workers[index] !== stopped) continue;
      t.deepEqual((await browser.post('/inc?tenant=down')).body, { n: 2 }, 'nothing was lost');
    }
  },
);

async function runSqlOn(url: string, text: string): Promise<void> {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    await client.query(text);
  } finally {
    await client.end();
  }
}

async function waitFor(condition: () => boolean, timeoutMs = 10_000): Promise<void> {
  const until = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > until) throw new Error('condition not met in time');
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}
