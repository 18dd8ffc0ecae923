// grant 5's Koa handler on pg-sessions with its defaults, over real HTTP, against a stub
// OAuth 2.0 provider on loopback. grant keeps its whole flow in `ctx.session.grant`: the
// provider, the `state`, the PKCE `code_verifier`, and at the end (transport: 'session')
// the provider's `response`.
import { createHash, randomBytes } from 'node:crypto';
import { createServer, type IncomingMessage, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import test, { type ExecutionContext } from 'ava';
import grantModule from 'grant';
import type Koa from 'koa';
import type Router from 'koa-router';
import type pg from 'pg';
import type { TestDatabase } from '../../src/testing/index.js';
import { sessionRows, setupDatabase } from '../helpers/database.js';
import type { Browser } from '../helpers/http.js';
import {
  type AppNode,
  REQUEST_TIMEOUT_MS,
  sessionData,
  sessionId,
  startNode,
  storageFor,
} from './harness.js';

// grant.d.ts gives its CommonJS module an ES default export: under NodeNext the default
// import is module.exports, and grant sets module.exports.default to itself.
const grant = grantModule.default;

const CLIENT_ID = 'pg-sessions-test-client';
const CLIENT_SECRET = 'stub client secret';

/** What the stub provider saw: each authorization and each token request. */
interface StubProvider {
  readonly url: string;
  readonly authorizations: URLSearchParams[];
  readonly tokenRequests: URLSearchParams[];
  /** Access tokens it issued, by the code they were exchanged for. */
  readonly issued: Map<string, string>;
  close(): Promise<void>;
}

/**
 * A minimal OAuth 2.0 authorization server: /authorize approves at once and redirects back
 * with a code; /token exchanges a code once, checking the client, the redirect URI and the
 * PKCE verifier (S256).
 */
async function startProvider(): Promise<StubProvider> {
  const codes = new Map<string, { challenge: string; redirectUri: string }>();
  const authorizations: URLSearchParams[] = [];
  const tokenRequests: URLSearchParams[] = [];
  const issued = new Map<string, string>();
  const json = (status: number, body: unknown) => ({ status, body: JSON.stringify(body) });

  const token = (form: URLSearchParams) => {
    tokenRequests.push(form);
    const code = form.get('code') ?? '';
    const grantCode = codes.get(code);
    codes.delete(code);
    if (form.get('client_id') !== CLIENT_ID || form.get('client_secret') !== CLIENT_SECRET) {
      return json(401, { error: 'invalid_client' });
    }
    const verifier = form.get('code_verifier') ?? '';
    const challenge = createHash('sha256').update(verifier).digest('base64url');
    if (
      form.get('grant_type') !== 'authorization_code' ||
      !grantCode ||
      grantCode.redirectUri !== form.get('redirect_uri') ||
      grantCode.challenge !== challenge
    ) {
      return json(400, { error: 'invalid_grant' });
    }
    const accessToken = `at-${randomBytes(8).toString('hex')}`;
    issued.set(code, accessToken);
    return json(200, {
      access_token: accessToken,
      refresh_token: `rt-${randomBytes(8).toString('hex')}`,
      token_type: 'Bearer',
      expires_in: 3600,
    });
  };

  const server: Server = createServer(async (req, res) => {
    const url = new URL(req.url ?? '/', 'http://stub');
    if (req.method === 'GET' && url.pathname === '/authorize') {
      const query = url.searchParams;
      authorizations.push(query);
      const redirectUri = query.get('redirect_uri') ?? '';
      if (query.get('client_id') !== CLIENT_ID || query.get('code_challenge_method') !== 'S256') {
        res.writeHead(400).end('invalid_request');
        return;
      }
      const code = randomBytes(12).toString('hex');
      codes.set(code, { challenge: query.get('code_challenge') ?? '', redirectUri });
      const back = new URL(redirectUri);
      back.searchParams.set('code', code);
      back.searchParams.set('state', query.get('state') ?? '');
      res.writeHead(302, { location: back.toString() }).end();
      return;
    }
    if (req.method === 'POST' && url.pathname === '/token') {
      const answer = token(new URLSearchParams(await text(req)));
      res.writeHead(answer.status, { 'content-type': 'application/json' }).end(answer.body);
      return;
    }
    res.writeHead(404).end();
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    authorizations,
    tokenRequests,
    issued,
    close: async () => {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

async function text(req: IncomingMessage): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const chunk of req) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks).toString('utf8');
}

let db: TestDatabase;
let admin: pg.Pool;
let provider: StubProvider;
let a: AppNode;
let b: AppNode;

/**
 * The site's public origin, which grant puts in redirect_uri: both nodes serve one site (as
 * behind a load balancer), so it is the first node's address on both.
 */
let origin: string | undefined;

/** grant with one made-up provider, `stub`, whose endpoints are the stub's. */
function grantApp(app: Koa, router: Router, url: string): void {
  origin ??= url;
  app.use(
    grant.koa()({
      defaults: { origin, transport: 'session', state: true },
      stub: {
        authorize_url: `${provider.url}/authorize`,
        access_url: `${provider.url}/token`,
        oauth: 2,
        key: CLIENT_ID,
        secret: CLIENT_SECRET,
        scope: ['profile', 'email'],
        pkce: true,
        callback: '/done',
      },
    }),
  );
  router.get('/done', (ctx) => {
    const session = ctx.session as { grant?: { response?: unknown } } | null;
    ctx.body = { response: session?.grant?.response ?? null };
  });
  router.get('/session', (ctx) => {
    ctx.body = { id: sessionId(ctx), data: sessionData(ctx) };
  });
}

test.before(async () => {
  ({ db, admin } = await setupDatabase());
  provider = await startProvider();
  const storage = storageFor('pg-sessions', db.appUrl);
  a = await startNode(storage, grantApp);
  b = await startNode(storage, grantApp);
});

test.after.always(async () => {
  await a?.close();
  await b?.close();
  await provider?.close();
  await admin?.end();
  await db?.drop();
});

function bounded(t: ExecutionContext): void {
  t.timeout(REQUEST_TIMEOUT_MS * 4, 'a request hung past its own timeout');
}

interface GrantSession {
  provider?: string;
  state?: string;
  code_verifier?: string;
  response?: Record<string, unknown>;
}

/** GET /connect/stub: grant's redirect to the provider, and the parameters it carries. */
async function connect(browser: Browser) {
  const reply = await browser.get('/connect/stub');
  const location = reply.headers.get('location') ?? '';
  return { status: reply.status, location, params: new URL(location).searchParams };
}

/** The provider's answer to the authorization: where it sends the browser back to. */
async function authorize(location: string): Promise<URL> {
  const reply = await fetch(location, {
    redirect: 'manual',
    signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS),
  });
  if (reply.status !== 302) throw new Error(`the provider answered ${reply.status}`);
  return new URL(reply.headers.get('location') ?? '');
}

async function storedGrant(browser: Browser): Promise<GrantSession | undefined> {
  const { id } = (await browser.get('/session')).body as { id: string | null };
  const row = (await sessionRows(admin)).find((candidate) => candidate.id === id);
  return row?.data.grant as GrantSession | undefined;
}

test('GET /connect/<provider> redirects to the authorize URL with state and PKCE, kept in ctx.session.grant', async (t) => {
  bounded(t);
  const browser = a.browser();
  const { status, location, params } = await connect(browser);
  t.is(status, 302);
  t.true(location.startsWith(`${provider.url}/authorize?`), location);
  t.is(params.get('client_id'), CLIENT_ID);
  t.is(params.get('response_type'), 'code');
  t.is(params.get('redirect_uri'), `${a.url}/connect/stub/callback`);
  t.is(params.get('scope'), 'profile,email');
  t.is(params.get('code_challenge_method'), 'S256');
  const state = params.get('state') ?? '';
  t.regex(state, /^[0-9a-f]{40}$/);

  const stored = await storedGrant(browser);
  t.is(stored?.provider, 'stub');
  t.is(stored?.state, state, 'the state sent is the one stored in the session row');
  const challenge = createHash('sha256')
    .update(stored?.code_verifier ?? '')
    .digest('base64url');
  t.is(
    params.get('code_challenge'),
    challenge,
    'the verifier stays in the session, its hash goes out',
  );
});

test('the whole flow: the provider redirects back, grant exchanges the code, the callback route reads the token from the session', async (t) => {
  bounded(t);
  const browser = a.browser();
  const { location } = await connect(browser);
  const back = await authorize(location);
  t.is(`${back.origin}${back.pathname}`, `${a.url}/connect/stub/callback`);
  const code = back.searchParams.get('code') ?? '';

  const callback = await browser.get(`${back.pathname}${back.search}`);
  t.is(callback.status, 302);
  t.is(callback.headers.get('location'), '/done');
  const done = (await browser.get('/done')).body as { response: Record<string, unknown> };
  const accessToken = provider.issued.get(code);
  t.truthy(accessToken, 'the provider exchanged the code, with the PKCE verifier');
  t.is(done.response.access_token, accessToken);
  t.regex(String(done.response.refresh_token), /^rt-/);
  t.is((done.response.raw as { token_type?: string }).token_type, 'Bearer');
  t.is((await storedGrant(browser))?.response?.access_token, accessToken);
});

test('the provider may send the browser back to another node: the state is in the database', async (t) => {
  bounded(t);
  const browser = a.browser();
  const { location } = await connect(browser);
  const back = await authorize(location);
  const code = back.searchParams.get('code') ?? '';
  const onB = browser.clone(b.url);
  const callback = await onB.get(`${back.pathname}${back.search}`);
  t.is(callback.headers.get('location'), '/done');
  const done = (await onB.get('/done')).body as { response: Record<string, unknown> };
  const accessToken = provider.issued.get(code);
  t.truthy(accessToken, 'node B exchanged the code with the verifier node A stored');
  t.is(done.response.access_token, accessToken);
  // Node A, back in the flow, reads what node B stored once B's change notification has
  // evicted A's cached copy (a few ms: without replicas there is no version fence).
  const deadline = Date.now() + 2_000;
  let onA = (await browser.get('/done')).body as typeof done;
  while (onA.response.access_token !== accessToken && Date.now() < deadline) {
    await new Promise((resolve) => setTimeout(resolve, 25));
    onA = (await browser.get('/done')).body as typeof done;
  }
  t.is(onA.response.access_token, accessToken);
});

test('a callback whose state does not match is refused, and its code is never exchanged', async (t) => {
  bounded(t);
  const browser = a.browser();
  const { location } = await connect(browser);
  const back = await authorize(location);
  const code = back.searchParams.get('code') ?? '';
  const callback = await browser.get(`/connect/stub/callback?code=${code}&state=${'0'.repeat(40)}`);
  t.is(callback.status, 302);
  t.is(callback.headers.get('location'), '/done');
  const done = (await browser.get('/done')).body as { response: unknown };
  t.deepEqual(done.response, { error: 'Grant: OAuth2 state mismatch' });
  t.false(provider.tokenRequests.some((form) => form.get('code') === code));
  t.false(provider.issued.has(code));
});

test('a callback without a prior /connect in this session is refused, and its code is never exchanged', async (t) => {
  bounded(t);
  // The attacker's own authorization, replayed into a victim's browser (login CSRF).
  const attacker = a.browser();
  const { location } = await connect(attacker);
  const back = await authorize(location);
  const code = back.searchParams.get('code') ?? '';
  const victim = a.browser();
  const callback = await victim.get(`${back.pathname}${back.search}`);
  t.is(callback.status, 302);
  t.regex(callback.headers.get('location') ?? '', /^\/\?error=Grant/);
  t.false(provider.tokenRequests.some((form) => form.get('code') === code));
});
