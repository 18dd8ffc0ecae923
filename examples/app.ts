import Koa from 'koa';
import Router from 'koa-router';
import {
  SessionDataError,
  type SessionMiddleware,
  type SessionOptions,
  SessionReauthenticationRequiredError,
  sessions,
} from '../src/index.js';
import { type Notice, notices, REVOKED_DEVICE, REVOKED_OTHERS } from './notices.js';
import {
  confirmIdentityPage,
  devicesPage,
  errorPage,
  FAVICON_SVG,
  homePage,
  MAX_USER_NAME,
  type Visitor,
} from './pages.js';
import { describeUserAgent, deviceTitle } from './user-agent.js';

/** How recent a sign-in "Log out everywhere else" needs (step-up), ms. */
export const STEP_UP_MAX_AGE = 5 * 60_000;

/** How the demo itself is deployed (the session options are separate). */
export interface DemoOptions {
  /**
   * Behind a TLS-terminating proxy: trust `X-Forwarded-Proto` and `X-Forwarded-For`
   * (Koa's `app.proxy`), so cookies are Secure and devices show the client's address.
   * @default false
   */
  readonly proxy?: boolean;
}

/**
 * The demo: login, logout, a counter, a cart and a "your devices" page that lists
 * and signs out sessions, telling a device that was signed out why. Users are whatever
 * name you type (authentication is the application's job, not the session library's).
 */
export function createDemoApp(
  options: SessionOptions,
  demo: DemoOptions = {},
): { app: Koa; middleware: SessionMiddleware } {
  const app = new Koa();
  app.keys = [process.env.SESSION_SECRET ?? 'demo secret: set SESSION_SECRET in production'];
  app.proxy = demo.proxy ?? false;
  // Every form carries a token of its session (README, "CSRF tokens bound to the session").
  const middleware = sessions({ maxSessionsPerUser: 5, csrf: { formLimit: 16_384 }, ...options });

  app.use(errorPages);
  app.use(middleware);
  app.use(notices);

  const router = new Router();
  router.get(['/favicon.svg', '/favicon.ico'], (ctx) => {
    ctx.type = 'image/svg+xml';
    ctx.set('cache-control', 'public, max-age=86400');
    ctx.body = FAVICON_SVG;
  });
  router.get('/', async (ctx) => {
    ctx.body = homePage(await visitor(ctx), cartAndCount(ctx));
  });
  router.post('/counter', (ctx) => {
    ctx.session!.count = Number(ctx.session!.count ?? 0) + 1;
    ctx.redirect('/');
  });
  router.post('/cart', async (ctx) => {
    const item = (await form(ctx)).get('item')?.trim().slice(0, 100);
    if (item) ctx.session!.cart = [...((ctx.session!.cart as string[] | undefined) ?? []), item];
    ctx.redirect('/');
  });
  router.post('/login', async (ctx) => {
    const fields = await form(ctx);
    const user = fields.get('user')?.trim() ?? '';
    const error = !user
      ? 'Enter a user name to sign in.'
      : user.length > MAX_USER_NAME
        ? `A user name has at most ${MAX_USER_NAME} characters.`
        : undefined;
    if (error) {
      // The form again, with the reason beside the field and the real status.
      ctx.status = 400;
      ctx.body = homePage(await visitor(ctx), cartAndCount(ctx), { error, value: user });
      return;
    }
    ctx.sessions.bindUser(user); // also issues a new token: no session fixation
    ctx.redirect(fields.get('return') === '/devices' ? '/devices' : '/');
  });
  router.post('/logout', (ctx) => {
    if (ctx.sessions.userId) ctx.state.notice = { code: 'signed-out' } satisfies Notice;
    ctx.session = null;
    ctx.redirect('/');
  });
  router.get('/devices', async (ctx) => {
    ctx.body = devicesPage(await visitor(ctx), await ctx.sessions.listForUser());
  });
  router.post('/devices/revoke-others', async (ctx) => {
    const user = ctx.sessions.userId;
    if (user) {
      // Ending every other device needs a recent sign-in: else the name again (step-up).
      const confirmed = (await form(ctx)).get('user')?.trim();
      if (confirmed !== undefined) {
        if (confirmed !== user) {
          ctx.status = 400;
          ctx.body = confirmIdentityPage(
            await visitor(ctx),
            STEP_UP_MAX_AGE / 60_000,
            'That is not the name you signed in with.',
          );
          return;
        }
        await ctx.sessions.reauthenticated();
      }
      try {
        await ctx.sessions.requireFresh(STEP_UP_MAX_AGE);
      } catch (error) {
        if (!(error instanceof SessionReauthenticationRequiredError)) throw error;
        ctx.status = 401;
        ctx.body = confirmIdentityPage(await visitor(ctx), STEP_UP_MAX_AGE / 60_000);
        return;
      }
      const count = await ctx.sessions.revokeUser(user, {
        exceptCurrent: true,
        reason: REVOKED_OTHERS,
      });
      ctx.state.notice = { code: 'others-signed-out', count } satisfies Notice;
    }
    ctx.redirect('/devices');
  });
  router.post('/devices/:id/rename', async (ctx) => {
    if (!ctx.sessions.userId) return ctx.redirect('/devices');
    const name = (await form(ctx)).get('name')?.trim() ?? '';
    if ([...name].length > 100) return ctx.throw(400, 'A device name has at most 100 characters.');
    try {
      // An empty field clears the name: the browser's description shows again.
      const renamed = await ctx.sessions.rename(ctx.params.id ?? '', name === '' ? null : name);
      if (!renamed)
        return ctx.throw(404, 'That device is not signed in to your account (any more).');
    } catch (error) {
      if (error instanceof SessionDataError) return ctx.throw(400, 'That name cannot be stored.');
      throw error;
    }
    ctx.redirect('/devices');
  });
  router.post('/devices/:id/revoke', async (ctx) => {
    // Signed out meanwhile: the devices page says why.
    if (!ctx.sessions.userId) return ctx.redirect('/devices');
    const device = (await ctx.sessions.listForUser()).find(({ id }) => id === ctx.params.id);
    if (!device) return ctx.throw(404, 'That device is not signed in to your account (any more).');
    await ctx.sessions.revoke(device.id, REVOKED_DEVICE);
    ctx.state.notice = device.current
      ? ({ code: 'signed-out-here' } satisfies Notice)
      : ({
          code: 'device-signed-out',
          device: deviceTitle(describeUserAgent(device.userAgent)),
        } satisfies Notice);
    ctx.redirect(device.current ? '/' : '/devices');
  });
  app.use(router.routes()).use(router.allowedMethods());
  return { app, middleware };
}

/** Unknown paths, wrong methods and thrown errors as pages, with their real status. */
async function errorPages(ctx: Koa.Context, next: Koa.Next): Promise<void> {
  try {
    await next();
    if (ctx.body != null) return;
    if (ctx.status === 404) ctx.throw(404, `There is no page at ${ctx.path}.`);
    if (ctx.status === 405) {
      // koa-router has set Allow; the page says what to do instead.
      ctx.throw(405, `${ctx.path} only takes the form's POST; open the page it belongs to.`);
    }
  } catch (error) {
    const failure = error as { status?: number; expose?: boolean; message?: string };
    const status = failure.status && failure.status >= 400 ? failure.status : 500;
    if (status >= 500) ctx.app.emit('error', error, ctx);
    ctx.status = status;
    ctx.type = 'html';
    // The session middleware may not have run (a database outage): no user shown. A
    // signed-in user's page keeps its "Log out" form working (a token, when one can be had).
    const userId = ctx.sessions?.userId ?? null;
    const csrf = userId ? await ctx.sessions.csrfToken().catch(() => undefined) : undefined;
    ctx.body = errorPage(
      { userId, csrf },
      status,
      failure.expose && failure.message
        ? failure.message
        : 'Something went wrong on our side. Please try again in a moment.',
    );
  }
}

/** The visitor of a page with forms: its session is saved now if new, for the forms' token. */
async function visitor(ctx: Koa.Context): Promise<Visitor> {
  return {
    userId: ctx.sessions.userId,
    notice: ctx.state.notice as Notice | undefined,
    csrf: await ctx.sessions.csrfToken(),
  };
}

function cartAndCount(ctx: Koa.Context): { count: number; cart: string[] } {
  const session = ctx.session!;
  return {
    count: Number(session.count ?? 0),
    cart: (session.cart as string[] | undefined) ?? [],
  };
}

/** The posted form: parsed already by the CSRF check (urlencoded), else read here. */
async function form(ctx: Koa.Context): Promise<URLSearchParams> {
  const parsed = (ctx.request as { body?: unknown }).body;
  if (parsed && typeof parsed === 'object') {
    const fields = Object.entries(parsed).filter(
      (entry): entry is [string, string] => typeof entry[1] === 'string',
    );
    return new URLSearchParams(fields);
  }
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of ctx.req) {
    size += (chunk as Buffer).length;
    if (size > 16_384) ctx.throw(413, 'That form is too large.');
    chunks.push(chunk as Buffer);
  }
  return new URLSearchParams(Buffer.concat(chunks).toString('utf8'));
}
