// ctx.sessions.ended: why the session a request presented has ended (revoked, with the
// stored reason, or expired), read in the load's one statement and never served as live.
import test from 'ava';
import type pg from 'pg';
import type { SessionOptions } from '../src/index.js';
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

interface Seen {
  id: string | null;
  userId: string | null;
  ended: { reason: string; revokedReason?: string; endedAt: string; id: string } | null;
}

/** An app whose routes report ctx.sessions.ended, and the events it emitted. */
async function endedApp(options: Partial<SessionOptions> = {}) {
  const events: { name: string; payload: Record<string, unknown> }[] = [];
  const app = await startApp(
    { database: db.appUrl, touchInterval: 60_000, gc: false, ...options },
    (router) => {
      router.post('/login', (ctx) => {
        ctx.sessions.bindUser(String(ctx.query.user));
        ctx.body = { id: ctx.sessions.id };
      });
      router.get('/me', (ctx) => {
        ctx.body = {
          id: ctx.sessions.id,
          userId: ctx.sessions.userId,
          ended: ctx.sessions.ended ?? null,
        };
      });
      router.post('/revoke', async (ctx) => {
        ctx.body = await ctx.sessions.revoke(String(ctx.query.id), String(ctx.query.reason));
      });
      router.post('/revoke-others', async (ctx) => {
        ctx.body = await ctx.sessions.revokeUser(ctx.sessions.userId!, {
          exceptCurrent: true,
          reason: 'user_logout_others',
        });
      });
      router.post('/logout', (ctx) => {
        ctx.session = null;
        ctx.body = 'bye';
      });
    },
    (koa) => {
      for (const name of ['session:missed', 'session:expired', 'session:invalid']) {
        koa.on(name, ({ ctx: _ctx, ...payload }: Record<string, unknown>) => {
          events.push({ name, payload });
        });
      }
    },
  );
  await app.middleware.start();
  return { app, events };
}

async function me(browser: Browser): Promise<Seen> {
  return (await browser.get('/me')).body as Seen;
}

async function login(app: TestApp, user: string): Promise<{ browser: Browser; id: string }> {
  const browser = new Browser(app.url);
  await browser.post(`/login?user=${user}`);
  return { browser, id: (await me(browser)).id! };
}

/** The round trips one request costs. */
async function roundTripsOf<T>(app: TestApp, request: () => Promise<T>) {
  const before = app.middleware.metrics.snapshot().roundTrips;
  const result = await request();
  return { result, roundTrips: app.middleware.metrics.snapshot().roundTrips - before };
}

const nextTick = () => new Promise((resolve) => setImmediate(resolve));

test('a device revoked from another says revoked with the reason, in the one load statement', async (t) => {
  const { app, events } = await endedApp();
  t.teardown(() => app.close());
  const laptop = await login(app, 'ada');
  const phone = await login(app, 'ada');
  t.is((await me(phone.browser)).ended, null, 'a live session has nothing ended');
  await laptop.browser.post(`/revoke?id=${phone.id}&reason=user_revoked_device`);

  const stale = phone.browser.clone();
  const { result, roundTrips } = await roundTripsOf(app, () => me(phone.browser));
  t.is(roundTrips, 1, 'the cause comes with the load: no extra round trip');
  t.is(result.id, null, 'a fresh session, not the revoked one');
  t.is(result.userId, null);
  t.like(result.ended, { reason: 'revoked', revokedReason: 'user_revoked_device', id: phone.id });
  t.true(Math.abs(Date.parse(result.ended!.endedAt) - Date.now()) < 60_000);
  t.is(phone.browser.cookies.size, 0, 'the dead cookie is cleared');

  // Presented again, it is still ended: the revoked row never reached the cache as live.
  const again = await roundTripsOf(app, () => me(stale));
  t.is(again.roundTrips, 1);
  t.like(again.result.ended, { reason: 'revoked', revokedReason: 'user_revoked_device' });
  t.is(again.result.userId, null);

  await nextTick();
  const missed = events.filter((event) => event.name === 'session:missed');
  t.is(missed.length, 2);
  t.like(missed[0]!.payload, {
    via: 'cookie',
    ended: { reason: 'revoked', revokedReason: 'user_revoked_device', id: phone.id },
  });
  t.regex(String(missed[0]!.payload.key), /^[0-9a-f]{64}$/, 'keyed by the token hash, as before');
});

test('a device that was served from the cache and then revoked says why on its next request', async (t) => {
  const { app } = await endedApp();
  t.teardown(() => app.close());
  const laptop = await login(app, 'grace');
  const phone = await login(app, 'grace');
  await me(phone.browser);
  const cached = await roundTripsOf(app, () => me(phone.browser));
  t.is(cached.roundTrips, 0, 'a cache hit costs nothing');
  await laptop.browser.post('/revoke-others');
  const { result, roundTrips } = await roundTripsOf(app, () => me(phone.browser));
  t.is(roundTrips, 1);
  t.like(result.ended, { reason: 'revoked', revokedReason: 'user_logout_others', id: phone.id });
  t.like(await me(laptop.browser), { userId: 'grace', ended: null });
});

test('the session cap says max_sessions on the device it signed out', async (t) => {
  const { app } = await endedApp({ maxSessionsPerUser: 1 });
  t.teardown(() => app.close());
  const first = await login(app, 'linus');
  await login(app, 'linus');
  t.like((await me(first.browser)).ended, {
    reason: 'revoked',
    revokedReason: 'max_sessions',
    id: first.id,
  });
});

test('an expired session says expired, with its expiry time, and session:expired carries it', async (t) => {
  const { app, events } = await endedApp();
  t.teardown(() => app.close());
  const { browser, id } = await login(app, 'barbara');
  const expiry = await admin.query<{ at: Date }>(
    `UPDATE sessions.session
        SET idle_expires_at = now() - interval '1 minute', absolute_expires_at = now() - interval '1 minute'
      WHERE id = $1 RETURNING expires_at AS at`,
    [id],
  );
  // Another process changed the row: this node's cache learns it from the notification
  // (an absolute expiry is content; a sliding one alone is not announced).
  await new Promise((resolve) => setTimeout(resolve, 200));
  const seen = await me(browser);
  t.deepEqual(seen.ended, {
    reason: 'expired',
    endedAt: expiry.rows[0]!.at.toISOString(),
    id,
  });
  await nextTick();
  const expired = events.find((event) => event.name === 'session:expired');
  t.like(expired?.payload, { key: id, ended: { reason: 'expired', id } });
});

test('nothing ended is reported for an unknown, tampered or logged-out token', async (t) => {
  const { app } = await endedApp();
  t.teardown(() => app.close());
  const { browser } = await login(app, 'edsger');
  const tampered = browser.clone();
  for (const [name, value] of tampered.cookies) {
    tampered.cookies.set(name, `${value.slice(0, -2)}${value.endsWith('AA') ? 'BB' : 'AA'}`);
  }
  t.is((await me(tampered)).ended, null, 'tampered');
  const unknown = new Browser(app.url);
  unknown.cookies.set('sid', 'A'.repeat(43));
  t.is((await me(unknown)).ended, null, 'unsigned');
  const before = browser.clone();
  await browser.post('/logout');
  t.is((await me(before)).ended, null, 'destroyed: the row is gone');
});
