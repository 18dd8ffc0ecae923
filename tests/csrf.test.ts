// CSRF tokens bound to the session (option `csrf`, ctx.sessions.csrfToken()): real
// HTTP through Koa, forms and headers, two nodes, rotation and its grace, bearer
// requests, lock mode and request transactions, and what a refusal leaves behind.
import { randomBytes } from 'node:crypto';
import bodyParser from '@koa/bodyparser';
import test from 'ava';
import Keygrip from 'keygrip';
import Koa from 'koa';
import type pg from 'pg';
import { type SessionOptions, sessions } from '../src/index.js';
import type { TestDatabase } from '../src/testing/index.js';
import { setupDatabase } from './helpers/database.js';
import { Browser, startApp, type TestApp } from './helpers/http.js';

let db: TestDatabase;
let admin: pg.Pool;

test.before(async () => {
  ({ db, admin } = await setupDatabase());
});

test.after.always(async () => {
  await admin?.end();
  await db?.drop();
});

async function app(
  options: Partial<SessionOptions> = {},
  configure?: (app: Koa) => void,
): Promise<TestApp> {
  return startApp(
    { database: db.appUrl, gc: false, csrf: true, ...options },
    (router) => {
      router.get('/form', async (ctx) => {
        ctx.body = { token: await ctx.sessions.csrfToken(), id: ctx.sessions.id };
      });
      router.post('/set', bodyParser(), (ctx) => {
        const body = (ctx.request as { body?: Record<string, unknown> }).body ?? {};
        ctx.session!.value = body.value;
        ctx.body = { value: body.value, version: ctx.sessions.version };
      });
      router.post('/login', async (ctx) => {
        ctx.sessions.bindUser('alice');
        ctx.body = { token: await ctx.sessions.csrfToken() };
      });
      router.get('/get', (ctx) => {
        ctx.body = { id: ctx.sessions.id, data: ctx.session!.toJSON() };
      });
      router.all('/webhook', (ctx) => {
        ctx.body = { reached: true };
      });
      router.delete('/anything', (ctx) => {
        ctx.body = { reached: true };
      });
      router.post('/echo', bodyParser(), (ctx) => {
        ctx.body = { body: (ctx.request as { body?: unknown }).body };
      });
      router.get('/session-token', (ctx) => {
        ctx.body = { token: ctx.sessions.token };
      });
    },
    configure,
  );
}

function form(fields: Record<string, string>): URLSearchParams {
  return new URLSearchParams(fields);
}

async function versionOf(id: string): Promise<number> {
  const { rows } = await admin.query<{ version: string }>(
    'SELECT version FROM sessions.session WHERE id = $1',
    [id],
  );
  return Number(rows[0]?.version);
}

test('a form carrying its session token is accepted; the handler reads the parsed form', async (t) => {
  const server = await app();
  try {
    const browser = new Browser(server.url);
    const { body } = await browser.get('/form');
    const { token } = body as { token: string };
    const saved = await browser.request('/set', {
      method: 'POST',
      body: form({ _csrf: token, value: 'from the form' }),
    });
    t.is(saved.status, 200);
    t.is((saved.body as { value: string }).value, 'from the form');
    const read = await browser.get('/get');
    t.deepEqual((read.body as { data: unknown }).data, { value: 'from the form' });
  } finally {
    await server.close();
  }
});

test('the header carries the token for fetch; each call masks it anew and every one verifies', async (t) => {
  const server = await app();
  try {
    const browser = new Browser(server.url);
    const first = ((await browser.get('/form')).body as { token: string }).token;
    const second = ((await browser.get('/form')).body as { token: string }).token;
    t.not(first, second);
    for (const token of [first, second]) {
      const response = await browser.request('/set', {
        method: 'POST',
        headers: { 'x-csrf-token': token },
        body: { value: token.slice(0, 8) },
      });
      t.is(response.status, 200, token);
    }
  } finally {
    await server.close();
  }
});

test('missing, forged, another session’s and malformed tokens are a typed 403 that writes nothing', async (t) => {
  const server = await app();
  try {
    const victim = new Browser(server.url);
    const { id } = (await victim.get('/form')).body as { id: string };
    await victim.request('/set', {
      method: 'POST',
      headers: { 'x-csrf-token': ((await victim.get('/form')).body as { token: string }).token },
      body: { value: 'kept' },
    });
    const before = await versionOf(id);
    const attacker = new Browser(server.url);
    const attackersOwn = ((await attacker.get('/form')).body as { token: string }).token;
    const cases: [string, Record<string, string>, string][] = [
      ['missing', {}, 'missing'],
      ['forged', { 'x-csrf-token': randomBytes(104).toString('base64url') }, 'mismatch'],
      ['another session’s', { 'x-csrf-token': attackersOwn }, 'mismatch'],
      ['malformed', { 'x-csrf-token': 'not a token!' }, 'malformed'],
      ['too short', { 'x-csrf-token': randomBytes(20).toString('base64url') }, 'malformed'],
    ];
    for (const [name, headers, reason] of cases) {
      const refused = await victim.request('/set', {
        method: 'POST',
        headers,
        body: { value: `overwritten by ${name}` },
      });
      t.is(refused.status, 403, name);
      t.is((refused.body as { error: string }).error, 'SESSION_CSRF_INVALID', name);
      t.regex((refused.body as { message: string }).message, new RegExp(`\\(${reason}\\)`), name);
    }
    t.is(await versionOf(id), before);
    t.deepEqual(((await victim.get('/get')).body as { data: unknown }).data, { value: 'kept' });
    t.is(server.middleware.metrics.snapshot().csrfRefusals, cases.length);
  } finally {
    await server.close();
  }
});

test('a state-changing request without a session is refused; reads are never checked', async (t) => {
  const server = await app();
  try {
    const stranger = new Browser(server.url);
    // A value of this test's own: the file's other tests write sessions beside it.
    const marker = `stranger ${randomBytes(8).toString('hex')}`;
    const refused = await stranger.post('/set', { value: marker });
    t.is(refused.status, 403);
    t.regex((refused.body as { message: string }).message, /no-session/);
    const { rows } = await admin.query(
      "SELECT 1 FROM sessions.session WHERE data ->> 'value' = $1",
      [marker],
    );
    t.is(rows.length, 0);
    t.deepEqual(stranger.cookies.size, 0, 'no cookie either');
    t.is((await stranger.get('/get')).status, 200);
  } finally {
    await server.close();
  }
});

test('a revoked session’s own form still posts, in a fresh session; another’s token does not', async (t) => {
  const server = await app();
  try {
    const browser = new Browser(server.url);
    const { id, token } = (await browser.get('/form')).body as { id: string; token: string };
    const stranger = ((await new Browser(server.url).get('/form')).body as { token: string }).token;
    await admin.query(
      "UPDATE sessions.session SET revoked_at = now(), revoked_reason = 'test' WHERE id = $1",
      [id],
    );
    // The node's cache drops the row on the notification.
    await new Promise((resolve) => setTimeout(resolve, 200));
    const forged = await browser.clone().request('/set', {
      method: 'POST',
      headers: { 'x-csrf-token': stranger },
      body: { value: 'x' },
    });
    t.is(forged.status, 403);
    const missing = await browser.clone().post('/set', { value: 'x' });
    t.is(missing.status, 403);
    const own = await browser.request('/set', {
      method: 'POST',
      headers: { 'x-csrf-token': token },
      body: { value: 'after revocation' },
    });
    t.is(own.status, 200);
    const after = (await browser.get('/get')).body as { id: string; data: unknown };
    t.not(after.id, id, 'a fresh session');
    t.deepEqual(after.data, { value: 'after revocation' });
  } finally {
    await server.close();
  }
});

test('a token spelt another way (trailing bits a decoder ignores) is refused', async (t) => {
  const server = await app();
  try {
    const browser = new Browser(server.url);
    const { token } = (await browser.get('/form')).body as { token: string };
    const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_';
    const last = alphabet.indexOf(token.at(-1)!);
    // 80 bytes are 107 characters: the last one carries 4 bits and 2 unused ones.
    const respelt = token.slice(0, -1) + alphabet[last ^ 1];
    t.deepEqual(Buffer.from(respelt, 'base64url'), Buffer.from(token, 'base64url'));
    const post = (value: string) =>
      browser.request('/set', { method: 'POST', headers: { 'x-csrf-token': value }, body: {} });
    t.is((await post(respelt)).status, 403);
    t.is((await post(token)).status, 200);
  } finally {
    await server.close();
  }
});

test('a token of the session verifies on another node, cache or none, both ways', async (t) => {
  const a = await app();
  const b = await app({ cache: false });
  try {
    const onA = new Browser(a.url);
    const tokenFromA = ((await onA.get('/form')).body as { token: string }).token;
    const onB = onA.clone(b.url);
    const accepted = await onB.request('/set', {
      method: 'POST',
      headers: { 'x-csrf-token': tokenFromA },
      body: { value: 'via b' },
    });
    t.is(accepted.status, 200);
    const tokenFromB = ((await onB.get('/form')).body as { token: string }).token;
    const back = await onA.request('/set', {
      method: 'POST',
      headers: { 'x-csrf-token': tokenFromB },
      body: { value: 'via a' },
    });
    t.is(back.status, 200);
  } finally {
    await a.close();
    await b.close();
  }
});

test('a sign-in rotates the token: earlier forms work for rotationGrace, then are refused', async (t) => {
  const server = await app({ rotationGrace: 1_500 });
  try {
    const browser = new Browser(server.url);
    const beforeLogin = ((await browser.get('/form')).body as { token: string }).token;
    const login = await browser.request('/login', {
      method: 'POST',
      headers: { 'x-csrf-token': beforeLogin },
    });
    t.is(login.status, 200);
    const afterLogin = (login.body as { token: string }).token;
    const post = (token: string) =>
      browser.request('/set', {
        method: 'POST',
        headers: { 'x-csrf-token': token },
        body: { value: 'v' },
      });
    t.is((await post(beforeLogin)).status, 200, 'within the grace');
    await new Promise((resolve) => setTimeout(resolve, 1_700));
    const late = await post(beforeLogin);
    t.is(late.status, 403);
    t.regex((late.body as { message: string }).message, /rotated/);
    t.is((await post(afterLogin)).status, 200, 'the token minted after the rotation');
  } finally {
    await server.close();
  }
});

test('bearer requests are exempt; a cookie request to the same route is not', async (t) => {
  const server = await app({ bearer: true });
  try {
    const browser = new Browser(server.url);
    await browser.get('/form');
    const { token } = (await browser.get('/session-token')).body as { token: string };
    const api = new Browser(server.url);
    const viaBearer = await api.request('/set', {
      method: 'POST',
      headers: { authorization: `Bearer ${token}` },
      body: { value: 'api' },
    });
    t.is(viaBearer.status, 200);
    t.is((await browser.post('/set', { value: 'cookie' })).status, 403);
    t.deepEqual(((await browser.get('/get')).body as { data: unknown }).data, { value: 'api' });
  } finally {
    await server.close();
  }
});

test('methods and ignore choose what is checked', async (t) => {
  const server = await app({
    csrf: { methods: ['delete'], ignore: (ctx) => ctx.path === '/webhook' },
  });
  try {
    const browser = new Browser(server.url);
    await browser.get('/form');
    t.is((await browser.post('/set', { value: 'post is not guarded here' })).status, 200);
    t.is((await browser.request('/anything', { method: 'DELETE' })).status, 403);
    const webhook = await browser.request('/webhook', { method: 'DELETE' });
    t.is(webhook.status, 200);
  } finally {
    await server.close();
  }
});

test('lock mode and request transactions: a refusal releases the lock and rolls back', async (t) => {
  for (const options of [{ mode: 'lock' }, { transaction: 'request' }] as const) {
    const server = await app(options);
    try {
      const browser = new Browser(server.url);
      const { id, token } = (await browser.get('/form')).body as { id: string; token: string };
      const before = await versionOf(id);
      t.is((await browser.post('/set', { value: 'refused' })).status, 403);
      t.is(await versionOf(id), before);
      const accepted = await browser.request('/set', {
        method: 'POST',
        headers: { 'x-csrf-token': token },
        body: { value: 'accepted' },
      });
      t.is(accepted.status, 200, JSON.stringify(options));
      t.deepEqual(((await browser.get('/get')).body as { data: unknown }).data, {
        value: 'accepted',
      });
    } finally {
      await server.close();
    }
  }
});

test('a body parser mounted before the middleware is read; one after it finds the form parsed', async (t) => {
  const before = await app({}, (koa) => koa.use(bodyParser()));
  const after = await app();
  try {
    const first = new Browser(before.url);
    const { token } = (await first.get('/form')).body as { token: string };
    t.is((await first.post('/set', { _csrf: token, value: 'json field' })).status, 200);

    const second = new Browser(after.url);
    const secondToken = ((await second.get('/form')).body as { token: string }).token;
    const echoed = await second.request('/echo', {
      method: 'POST',
      body: form({ _csrf: secondToken, 'user[name]': 'Zoë' }),
    });
    t.is(echoed.status, 200);
    t.deepEqual((echoed.body as { body: unknown }).body, {
      _csrf: secondToken,
      user: { name: 'Zoë' },
    });
  } finally {
    await before.close();
    await after.close();
  }
});

test('a form larger than formLimit is a 413 and writes nothing', async (t) => {
  const server = await app({ csrf: { formLimit: 1_024 } });
  try {
    const browser = new Browser(server.url);
    const { id, token } = (await browser.get('/form')).body as { id: string; token: string };
    const before = await versionOf(id);
    const response = await browser.request('/set', {
      method: 'POST',
      body: form({ _csrf: token, value: 'x'.repeat(2_000) }),
    });
    t.is(response.status, 413);
    t.is(await versionOf(id), before);
  } finally {
    await server.close();
  }
});

test('app.keys rotation keeps earlier tokens valid; a Keygrip instance signs and verifies them', async (t) => {
  const server = await app();
  try {
    const browser = new Browser(server.url);
    const { token } = (await browser.get('/form')).body as { token: string };
    const post = (value: string) =>
      browser.request('/set', { method: 'POST', headers: { 'x-csrf-token': value }, body: {} });
    // A new first key: the cookie and the token signed with the old one still verify.
    server.app.keys = ['a new first key', ...(server.app.keys as string[])];
    t.is((await post(token)).status, 200);
    server.app.keys = new Keygrip(
      ['a keygrip key', 'test key one'],
      'sha256',
    ) as unknown as string[];
    const minted = ((await browser.get('/form')).body as { token: string }).token;
    t.is((await post(minted)).status, 200);
  } finally {
    await server.close();
  }
});

test('csrf without app.keys, or with an unknown option, is a clear options error', (t) => {
  const koa = new Koa();
  t.throws(() => sessions({ database: db.appUrl, csrf: true }, koa), {
    code: 'SESSION_OPTIONS_INVALID',
    message: /app\.keys/,
  });
  t.throws(
    () =>
      sessions({
        database: db.appUrl,
        csrf: { headers: 'x' } as unknown as SessionOptions['csrf'],
      }),
    { code: 'SESSION_OPTIONS_INVALID', message: /csrf\.headers/ },
  );
});
