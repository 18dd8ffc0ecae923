// The load generator of `npm run bench:create` (bench/create.ts), in its own process:
// autocannon, with one of two request shapes.
//   create          GET /visit with no cookie at all: every request is a first visit, so
//                   every 2xx response should hand out a new session (Set-Cookie).
//   signin, write   POST /signin or /write, each request naming one of the sessions the
//                   runner created; a session is never in two requests at once (with as
//                   many sessions as connections, each connection in effect keeps one),
//                   and its cookies follow the responses' Set-Cookie headers as a
//                   browser's would: a sign-in rotates the token.
// bench/load.ts picks a session at random per request, which could put one session in
// two concurrent sign-ins, and keeps cookies on the way back; hence this one.
import autocannon from 'autocannon';
import { type Message, serveRunner } from './child.js';
import { applySetCookie, headerValues, parseCookieHeader } from './cookie-jar.js';

export type CreateKind = 'create' | 'signin' | 'write';

/** One measured (or warm-up) run. */
export interface CreateLoadRun extends Message {
  readonly type: 'run';
  readonly url: string;
  readonly kind: CreateKind;
  /** signin and write: one `Cookie` header value per session (as many as connections). */
  readonly cookies: readonly string[];
  readonly connections: number;
  readonly durationSeconds: number;
  /** A fixed number of requests instead of a duration (the smoke run). */
  readonly amount?: number;
}

export interface CreateLoadResult extends Message {
  readonly type: 'result';
  /** Responses received. */
  readonly requests: number;
  readonly ok: number;
  /** 2xx responses per second of the run. */
  readonly okPerSecond: number;
  readonly latencyMs: { readonly p50: number; readonly p99: number; readonly max: number };
  readonly non2xx: number;
  readonly errors: number;
  readonly timeouts: number;
  /**
   * 2xx responses without a Set-Cookie header: a first visit that got no session, or a
   * sign-in that handed out no new token. Zero for a data write, whatever it sets.
   */
  readonly okWithoutCookie: number;
  /** Requests sent with no free session to name (a broken run: a response was lost). */
  readonly starved: number;
  readonly seconds: number;
  /** CPU time the load generator used during the run, in microseconds. */
  readonly cpuMicros: number;
}

/** Per connection: the session its request in flight names. */
interface ConnectionContext {
  session?: number;
}

async function run(config: CreateLoadRun): Promise<CreateLoadResult> {
  const jars = config.cookies.map(parseCookieHeader);
  const headers = [...config.cookies];
  const free = headers.map((_, index) => index).reverse();
  let okWithoutCookie = 0;
  let starved = 0;
  const cpuBefore = process.cpuUsage();
  const request: autocannon.Request =
    config.kind === 'create'
      ? {
          method: 'GET',
          path: '/visit',
          onResponse: (status, _body, _context, responseHeaders) => {
            if (status < 300 && headerValues(responseHeaders, 'set-cookie').length === 0) {
              okWithoutCookie++;
            }
          },
        }
      : {
          setupRequest: (base, context) => {
            const index = free.pop();
            (context as ConnectionContext).session = index;
            if (index === undefined) starved++;
            return {
              ...base,
              method: 'POST',
              path: config.kind === 'signin' ? '/signin' : '/write',
              headers: {
                ...base.headers,
                cookie: index === undefined ? '' : (headers[index] ?? ''),
              },
            };
          },
          onResponse: (status, _body, context, responseHeaders) => {
            const index = (context as ConnectionContext).session;
            if (index === undefined) return;
            const setCookie = headerValues(responseHeaders, 'set-cookie');
            if (config.kind === 'signin' && status < 300 && setCookie.length === 0) {
              okWithoutCookie++;
            }
            const jar = jars[index];
            if (jar && setCookie.length > 0) {
              for (const line of setCookie) applySetCookie(jar, line);
              headers[index] = [...jar].map(([name, value]) => `${name}=${value}`).join('; ');
            }
            free.push(index);
          },
        };
  const result = await autocannon({
    url: config.url,
    connections: config.connections,
    // An amount-bound run ends at the next sample tick: tick often, so it ends soon after.
    ...(config.amount === undefined
      ? { duration: config.durationSeconds }
      : { amount: config.amount, sampleInt: 50 }),
    requests: [request],
  });
  const cpu = process.cpuUsage(cpuBefore);
  const seconds = Math.max(result.duration, 0.01);
  return {
    type: 'result',
    requests: result.requests.total,
    ok: result['2xx'],
    okPerSecond: result['2xx'] / seconds,
    latencyMs: { p50: result.latency.p50, p99: result.latency.p99, max: result.latency.max },
    non2xx: result.non2xx,
    errors: result.errors,
    timeouts: result.timeouts,
    okWithoutCookie,
    starved,
    seconds,
    cpuMicros: cpu.user + cpu.system,
  };
}

serveRunner(
  (message) => (message.type === 'run' ? run(message as CreateLoadRun) : undefined),
  async () => {},
);
process.send?.({ type: 'ready' });
