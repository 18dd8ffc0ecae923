// The load generator, in its own process (started by bench/http.ts and bench/replicas.ts):
// autocannon with a request set up per request, so that each names one of the live
// sessions at random and is a write with the mix's probability. Like a browser, it keeps
// each session's cookies up to date from the responses' Set-Cookie headers: koa-session's
// cookie store carries the data itself, and pg-sessions' version cookie is the fence
// that read-your-writes routing depends on.
import autocannon from 'autocannon';
import { type Message, serveRunner } from './child.js';
import { applySetCookie, headerValues, parseCookieHeader } from './cookie-jar.js';

/** One measured (or warm-up) run. */
export interface LoadRun extends Message {
  readonly type: 'run';
  readonly url: string;
  /** One `Cookie` header value per live session, as the login left it. */
  readonly cookies: readonly string[];
  /** Share of requests that change the session (POST /write); the rest only read it. */
  readonly writeShare: number;
  readonly connections: number;
  readonly durationSeconds: number;
  /** A fixed number of requests instead of a duration (the smoke run). */
  readonly amount?: number;
}

export interface LoadResult extends Message {
  readonly type: 'result';
  readonly requests: number;
  readonly requestsPerSecond: number;
  readonly latencyMs: { readonly p50: number; readonly p99: number; readonly max: number };
  readonly non2xx: number;
  readonly errors: number;
  readonly timeouts: number;
  readonly writes: number;
  /** How many different sessions the run's requests named. */
  readonly distinctSessions: number;
  /** CPU time the load generator itself used during the run, in microseconds. */
  readonly cpuMicros: number;
}

/** Per connection: the session its request in flight names. */
interface ConnectionContext {
  session?: number;
}

async function run(config: LoadRun): Promise<LoadResult> {
  const jars = config.cookies.map(parseCookieHeader);
  const headers = [...config.cookies];
  const used = new Uint8Array(config.cookies.length);
  let writes = 0;
  const cpuBefore = process.cpuUsage();
  const result = await autocannon({
    url: config.url,
    connections: config.connections,
    // An amount-bound run ends at the next sample tick: tick often, so it ends soon after.
    ...(config.amount === undefined
      ? { duration: config.durationSeconds }
      : { amount: config.amount, sampleInt: 50 }),
    requests: [
      {
        setupRequest: (request, context) => {
          const index = Math.floor(Math.random() * headers.length);
          (context as ConnectionContext).session = index;
          used[index] = 1;
          const write = Math.random() < config.writeShare;
          if (write) writes++;
          return {
            ...request,
            method: write ? 'POST' : 'GET',
            path: write ? '/write' : '/read',
            headers: { ...request.headers, cookie: headers[index] ?? '' },
          };
        },
        onResponse: (_status, _body, context, responseHeaders) => {
          const index = (context as ConnectionContext).session;
          const setCookie = headerValues(responseHeaders, 'set-cookie');
          const jar = index === undefined ? undefined : jars[index];
          if (!jar || index === undefined || setCookie.length === 0) return;
          for (const line of setCookie) applySetCookie(jar, line);
          headers[index] = [...jar].map(([name, value]) => `${name}=${value}`).join('; ');
        },
      },
    ],
  });
  const cpu = process.cpuUsage(cpuBefore);
  return {
    type: 'result',
    requests: result.requests.total,
    // autocannon's average is per sample tick, which an amount-bound run shortens.
    requestsPerSecond:
      config.amount === undefined
        ? result.requests.average
        : result.requests.total / Math.max(result.duration, 0.01),
    latencyMs: { p50: result.latency.p50, p99: result.latency.p99, max: result.latency.max },
    non2xx: result.non2xx,
    errors: result.errors,
    timeouts: result.timeouts,
    writes,
    distinctSessions: used.reduce((sum, flag) => sum + flag, 0),
    cpuMicros: cpu.user + cpu.system,
  };
}

serveRunner(
  (message) => (message.type === 'run' ? run(message as LoadRun) : undefined),
  async () => {},
);
process.send?.({ type: 'ready' });
