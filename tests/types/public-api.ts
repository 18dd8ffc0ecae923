// Compile-time tests of the public types, checked by `tsc` (npm run typecheck).
// Each @ts-expect-error line must fail to compile, or tsc reports the directive unused.
import Koa from 'koa';
import {
  type ConcurrencyMode,
  type DeviceSession,
  SessionConflictError,
  type SessionError,
  type SessionMiddleware,
  sessions,
} from '../../src/index.js';
import { createTestDatabase, type TestDatabase } from '../../src/testing/index.js';

const middleware: SessionMiddleware = sessions({ database: 'postgres://localhost/app' });
const app = new Koa();
app.use(middleware);
app.use(async (ctx) => {
  const views: unknown = ctx.session?.views;
  const isNew: boolean | undefined = ctx.session?.isNew;
  ctx.session = { views };
  const id: string | null = ctx.sessions.id;
  ctx.sessions.regenerate();
  ctx.sessions.bindUser('user-1');
  const devices: (DeviceSession & { current: boolean })[] = await ctx.sessions.listForUser();
  const revoked: boolean = await ctx.sessions.revoke('00000000-0000-0000-0000-000000000000');
  const count: number = await ctx.sessions.revokeUser('user-1', { exceptCurrent: true });
  // @ts-expect-error the session can only be replaced by an object or null
  ctx.session = 'text';
  // @ts-expect-error isNew is read-only
  ctx.session!.isNew = true;
  // @ts-expect-error bindUser takes a string or null
  ctx.sessions.bindUser(42);
  ctx.session = null;
  void [isNew, id, devices, revoked, count];
});

// koa-session's two argument orders, the app checked at once.
sessions({ database: 'postgres://localhost/app' }, app);
sessions(app, { database: 'postgres://localhost/app' });
// @ts-expect-error the second argument is the Koa application
sessions({ database: 'postgres://localhost/app' }, { database: 'postgres://localhost/other' });
// @ts-expect-error database is a URL, a pg.PoolConfig, a pg.Pool or a SessionDatabase
sessions({ database: 42 });

// @ts-expect-error mode is one of merge, strict, lock
sessions({ database: 'postgres://localhost/app', mode: 'optimistic' });
const mode: ConcurrencyMode = 'strict';
sessions({
  database: 'postgres://localhost/app',
  mode: (ctx) => (ctx.path === '/checkout' ? 'lock' : mode),
});

const conflict: SessionError = new SessionConflictError(['cart']);
const status: number = conflict.status;
const code: string = conflict.code;
void [status, code];

async function fixture(): Promise<TestDatabase> {
  return createTestDatabase();
}
void fixture;
