import Koa from 'koa';
import Router from 'koa-router';
import { type SessionMiddleware, type SessionOptions, sessions } from '../src/index.js';

/**
 * The demo: login, logout, a counter, a cart and a "your devices" page that lists
 * and revokes sessions. Users are whatever name you type (authentication is the
 * application's job, not the session library's).
 */
export function createDemoApp(options: SessionOptions): {
  app: Koa;
  middleware: SessionMiddleware;
} {
  const app = new Koa();
  app.keys = [process.env.SESSION_SECRET ?? 'demo secret: set SESSION_SECRET in production'];
  const middleware = sessions({ maxSessionsPerUser: 5, ...options });

  app.use(async (ctx, next) => {
    try {
      await next();
    } catch (error) {
      const failure = error as {
        status?: number;
        code?: string;
        message?: string;
        expose?: boolean;
      };
      ctx.status = failure.status ?? 500;
      ctx.body = page(
        'Error',
        `<p>${escapeHtml(failure.expose ? (failure.message ?? '') : 'Something went wrong')} (${failure.code ?? 'INTERNAL'})</p>`,
      );
    }
  });
  app.use(middleware);

  const router = new Router();
  router.get('/', (ctx) => {
    const session = ctx.session!;
    const user = ctx.sessions.userId;
    const cart = (session.cart as string[] | undefined) ?? [];
    ctx.body = page(
      'pg-sessions demo',
      `<p>${user ? `Signed in as <b>${escapeHtml(user)}</b>` : 'Not signed in'} · session ${ctx.sessions.id ?? '(not saved yet)'}</p>
       <form method="post" action="/counter"><button>Count: ${Number(session.count ?? 0)}</button></form>
       <h2>Cart</h2><ul>${cart.map((item) => `<li>${escapeHtml(item)}</li>`).join('')}</ul>
       <form method="post" action="/cart"><input name="item" placeholder="item"><button>Add</button></form>
       ${
         user
           ? `<p><a href="/devices">Your devices</a></p><form method="post" action="/logout"><button>Log out</button></form>`
           : `<form method="post" action="/login"><input name="user" placeholder="user name"><button>Log in</button></form>`
       }`,
    );
  });
  router.post('/counter', (ctx) => {
    ctx.session!.count = Number(ctx.session!.count ?? 0) + 1;
    ctx.redirect('/');
  });
  router.post('/cart', async (ctx) => {
    const item = (await form(ctx)).get('item')?.trim();
    if (item) ctx.session!.cart = [...((ctx.session!.cart as string[] | undefined) ?? []), item];
    ctx.redirect('/');
  });
  router.post('/login', async (ctx) => {
    const user = (await form(ctx)).get('user')?.trim();
    if (!user) ctx.throw(400, 'a user name is required');
    ctx.sessions.bindUser(user!); // also issues a new token: no session fixation
    ctx.redirect('/');
  });
  router.post('/logout', (ctx) => {
    ctx.session = null;
    ctx.redirect('/');
  });
  router.get('/devices', async (ctx) => {
    const devices = await ctx.sessions.listForUser();
    ctx.body = page(
      'Your devices',
      `<table><tr><th>Session</th><th>Created</th><th>Last seen</th><th>IP</th><th>Browser</th><th></th></tr>
       ${devices
         .map(
           (device) => `<tr><td>${device.id}${device.current ? ' (this one)' : ''}</td>
             <td>${device.createdAt.toISOString()}</td><td>${device.lastSeenAt.toISOString()}</td>
             <td>${escapeHtml(device.ip ?? '')}</td><td>${escapeHtml(device.userAgent ?? '')}</td>
             <td><form method="post" action="/devices/${device.id}/revoke"><button>Revoke</button></form></td></tr>`,
         )
         .join('')}</table>
       <form method="post" action="/devices/revoke-others"><button>Log out everywhere else</button></form>
       <p><a href="/">Back</a></p>`,
    );
  });
  router.post('/devices/revoke-others', async (ctx) => {
    const user = ctx.sessions.userId;
    if (user)
      await ctx.sessions.revokeUser(user, { exceptCurrent: true, reason: 'user_logout_others' });
    ctx.redirect('/devices');
  });
  router.post('/devices/:id/revoke', async (ctx) => {
    const mine = (await ctx.sessions.listForUser()).some((device) => device.id === ctx.params.id);
    if (!mine) ctx.throw(404, 'no such session of yours');
    await ctx.sessions.revoke(ctx.params.id!, 'user_revoked_device');
    ctx.redirect('/devices');
  });
  app.use(router.routes()).use(router.allowedMethods());
  return { app, middleware };
}

async function form(ctx: Koa.Context): Promise<URLSearchParams> {
  const chunks: Buffer[] = [];
  for await (const chunk of ctx.req) chunks.push(chunk as Buffer);
  return new URLSearchParams(Buffer.concat(chunks).toString('utf8'));
}

function escapeHtml(text: string): string {
  return text.replace(/[&<>"']/g, (char) => `&#${char.charCodeAt(0)};`);
}

function page(title: string, body: string): string {
  return `<!doctype html><meta charset="utf-8"><title>${title}</title>
<style>body{font-family:system-ui;max-width:52rem;margin:2rem auto}td,th{padding:.2rem .5rem;text-align:left}</style>
<h1>${title}</h1>${body}`;
}
