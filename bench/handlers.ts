// The benchmark's handlers, the same behind every session layer, over HTTP
// (bench/app-server.ts) and without sockets (bench/request-path.ts):
//   POST /login  creates the session (user and a visit counter): the setup step
//   GET  /read   reads two keys of the session
//   POST /write  changes one of four keys of the session
// A request whose session was not found answers 401, so a benchmark that silently
// lost its sessions shows up as non-2xx responses instead of flattering numbers.
import type { Context } from 'koa';
import { BUSY_MICROS, hasSessions, type Variant } from './variants.js';

/** Keeps this thread busy for `micros` µs (the bare-busy calibration). */
function busy(micros: number): void {
  const until = performance.now() + micros / 1000;
  while (performance.now() < until) {
    // spin: CPU work of a known length, with no allocation and no I/O
  }
}

/** The handler for one app of `variant`, with its own login and write counters. */
export function benchHandler(variant: Variant): (ctx: Context) => void {
  /** Bare Koa has no sessions: its handlers use one object shared by every request. */
  const shared: Record<string, unknown> = { user: 'everyone', visits: 0 };
  let logins = 0;
  let writes = 0;
  return (ctx) => {
    if (variant === 'bare-busy') busy(BUSY_MICROS);
    const session = (hasSessions(variant) ? ctx.session : shared) as Record<string, unknown> | null;
    if (!session) throw new Error('no session object');
    const route = `${ctx.method} ${ctx.path}`;
    if (route === 'POST /login') {
      session.user = `user-${++logins}`;
      session.visits = 0;
      ctx.body = 'ok';
      return;
    }
    if (typeof session.user !== 'string') {
      ctx.status = 401;
      return;
    }
    if (route === 'GET /read') {
      ctx.body = { user: session.user, visits: session.visits };
    } else if (route === 'POST /write') {
      writes++;
      session[`k${writes % 4}`] = writes;
      ctx.body = 'ok';
    } else {
      ctx.status = 404;
    }
  };
}
