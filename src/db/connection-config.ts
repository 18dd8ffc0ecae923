import { readFile } from 'node:fs/promises';
import { connect as connectTcp } from 'node:net';
import { type ConnectionOptions, connect as connectTls } from 'node:tls';
import { debuglog } from 'node:util';
import pg from 'pg';

const trace = debuglog('pg-sessions:tls');

/**
 * libpq's `sslmode` values, with libpq's meaning (not node-postgres', which treats
 * `prefer` and `require` as `verify-full` and warns about it):
 *
 * - `disable`: no TLS.
 * - `allow`, `prefer` (the default): TLS when the server offers it, plain otherwise.
 * - `require`: TLS, the certificate is not checked (unless `sslrootcert` is given: then
 *   its chain is, as libpq does).
 * - `verify-ca`: TLS, the chain is checked against `sslrootcert`, not the host name.
 * - `verify-full`: TLS, chain and host name are checked.
 */
export type SslMode = 'disable' | 'allow' | 'prefer' | 'require' | 'verify-ca' | 'verify-full';

const SSL_MODES: readonly SslMode[] = [
  'disable',
  'allow',
  'prefer',
  'require',
  'verify-ca',
  'verify-full',
];

/** URL parameters that are ours to interpret: node-postgres never sees them. */
const TLS_PARAMETERS = ['sslmode', 'sslrootcert', 'sslcert', 'sslkey'] as const;

/** What a URL (or the environment) asks for, before the server is asked anything. */
export interface TlsRequest {
  readonly mode: SslMode;
  /** File of trusted CA certificates; `system` means Node's built-in list. */
  readonly rootCert?: string;
  /** Client certificate and its key (files), for servers that check client certificates. */
  readonly cert?: string;
  readonly key?: string;
}

/**
 * A connection source taken apart: the node-postgres config without the TLS
 * parameters, and what they asked for. `tls` is undefined when the caller set
 * node-postgres' own `ssl` option (or `?ssl=` in the URL): theirs is used as given.
 */
export interface ConnectionTarget {
  readonly config: pg.ClientConfig;
  readonly tls: TlsRequest | undefined;
  /** host:port for TCP servers; undefined for a Unix socket (never TLS). */
  readonly endpoint: { readonly host: string; readonly port: number } | undefined;
}

/**
 * Splits a URL or config into node-postgres' part and the TLS request. Precedence:
 * an explicit `ssl` option, then the URL's parameters, then `PGSSLMODE`,
 * `PGSSLROOTCERT`, `PGSSLCERT`, `PGSSLKEY`, then libpq's default (`prefer`).
 * Throws a RangeError naming the value when `sslmode` is not one of libpq's.
 */
export function connectionTarget(source: string | pg.ClientConfig): ConnectionTarget {
  const input: pg.ClientConfig = typeof source === 'string' ? { connectionString: source } : source;
  const fromUrl: Partial<Record<(typeof TLS_PARAMETERS)[number], string>> = {};
  let config: pg.ClientConfig = { ...input };
  let urlHost: string | undefined;
  let urlPort: string | undefined;
  let urlSetsSsl = false;
  if (input.connectionString?.startsWith('/')) {
    // node-postgres' "/socket/folder database" form: a Unix socket, never TLS.
    urlHost = input.connectionString.split(' ')[0];
  } else if (input.connectionString) {
    const url = parseUrl(input.connectionString);
    if (url) {
      for (const name of TLS_PARAMETERS) {
        const value = url.searchParams.get(name);
        if (value !== null) fromUrl[name] = value;
        url.searchParams.delete(name);
      }
      urlSetsSsl = url.searchParams.has('ssl');
      urlHost =
        url.searchParams.get('host') ??
        (decodeURIComponent(url.hostname).replace(/^\[(.+)\]$/, '$1') || undefined);
      urlPort = url.searchParams.get('port') ?? (url.port || undefined);
      if (url.protocol === 'socket:') urlHost = decodeURI(url.pathname);
      config = { ...config, connectionString: url.toString() };
    }
  }
  const host = urlHost ?? input.host ?? process.env.PGHOST ?? 'localhost';
  const port = Number(urlPort ?? input.port ?? process.env.PGPORT ?? 5432);
  const endpoint = host.startsWith('/') ? undefined : { host, port };
  if (input.ssl !== undefined || urlSetsSsl) return { config, tls: undefined, endpoint };
  const tls: TlsRequest = {
    mode: sslMode(fromUrl.sslmode ?? process.env.PGSSLMODE ?? 'prefer'),
    rootCert: fromUrl.sslrootcert ?? (process.env.PGSSLROOTCERT || undefined),
    cert: fromUrl.sslcert ?? (process.env.PGSSLCERT || undefined),
    key: fromUrl.sslkey ?? (process.env.PGSSLKEY || undefined),
  };
  return { config, tls, endpoint };
}

function parseUrl(text: string): URL | undefined {
  try {
    return new URL(text);
  } catch {
    // node-postgres accepts a few forms URL does not (an empty host): leave them to it.
    return undefined;
  }
}

function sslMode(value: string): SslMode {
  if ((SSL_MODES as readonly string[]).includes(value)) return value as SslMode;
  throw new RangeError(`sslmode "${value}" is not one of ${SSL_MODES.join(', ')}`);
}

/**
 * The TLS decision for a target: the libpq mode that applies once the server has
 * answered, as dbmate's driver (lib/pq) understands it. `allow`/`prefer` become
 * `require` when the server offers TLS and `disable` when it says it has none.
 * A target with node-postgres' own `ssl` option gives `undefined` (nothing to translate).
 */
export async function negotiatedSslMode(
  target: ConnectionTarget,
  timeoutMs?: number,
): Promise<Exclude<SslMode, 'allow' | 'prefer'> | undefined> {
  const tls = target.tls;
  if (!tls) return undefined;
  if (tls.mode !== 'allow' && tls.mode !== 'prefer') return tls.mode;
  if (!target.endpoint) return 'disable';
  const offered = await serverOffersTls(target.endpoint.host, target.endpoint.port, timeoutMs);
  return offered ? 'require' : 'disable';
}

/**
 * node-postgres' `ssl` option for a target: `false` for no TLS, else the options of
 * `tls.connect` that give the mode its libpq meaning (certificate files read here).
 * Asks the server (once per host:port, see {@link serverOffersTls}) for `allow`/`prefer`.
 */
export async function sslOption(
  target: ConnectionTarget,
  timeoutMs?: number,
): Promise<pg.ClientConfig['ssl']> {
  const tls = target.tls;
  if (!tls) return target.config.ssl;
  const mode = await negotiatedSslMode(target, timeoutMs);
  if (mode === 'disable' || mode === undefined) return false;
  const options: ConnectionOptions = {};
  if (tls.cert) options.cert = await readTlsFile('sslcert', tls.cert);
  if (tls.key) options.key = await readTlsFile('sslkey', tls.key);
  const rootCert = tls.rootCert === 'system' ? undefined : tls.rootCert;
  if (rootCert) options.ca = await readTlsFile('sslrootcert', rootCert);
  // libpq checks the chain whenever it has a root certificate, even for `require`.
  const checkChain = mode !== 'require' || tls.rootCert !== undefined;
  if (!checkChain) options.rejectUnauthorized = false;
  else if (mode !== 'verify-full') options.checkServerIdentity = () => undefined;
  return options;
}

async function readTlsFile(parameter: string, path: string): Promise<string> {
  try {
    return await readFile(path, 'utf8');
  } catch (error) {
    const reason = (error as { code?: string }).code ?? String(error);
    throw new Error(`cannot read ${parameter} ${path}: ${reason}`, { cause: error });
  }
}

/**
 * A config node-postgres can use as it is: TLS parameters stripped (so that
 * pg-connection-string never parses them, nor prints its warning) and `ssl` decided.
 *
 * @example
 * const client = new pg.Client(await resolveConnectionConfig(process.env.DATABASE_URL!));
 */
export async function resolveConnectionConfig<T extends pg.ClientConfig>(
  source: string | T,
): Promise<T> {
  const target = connectionTarget(source);
  const ssl = await sslOption(target, target.config.connectionTimeoutMillis || undefined);
  return { ...(target.config as T), ssl };
}

const probes = new Map<string, Promise<boolean>>();

/**
 * Whether the server at host:port offers TLS: libpq's SSLRequest, answered `S` or `N`.
 * Asked once per host:port and process; a failed probe is not remembered.
 */
export function serverOffersTls(host: string, port: number, timeoutMs = 10_000): Promise<boolean> {
  const key = `${host}:${port}`;
  let probe = probes.get(key);
  if (!probe) {
    probe = probeTls(host, port, timeoutMs).then(
      (offered) => {
        trace('%s offers TLS: %s', key, offered);
        return offered;
      },
      (error: unknown) => {
        probes.delete(key);
        throw error;
      },
    );
    probes.set(key, probe);
  }
  return probe;
}

/** The SSLRequest message: length 8, code 80877103. */
const SSL_REQUEST = Buffer.from([0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]);

function probeTls(host: string, port: number, timeoutMs: number): Promise<boolean> {
  return new Promise((resolve, reject) => {
    const socket = connectTcp({ host, port });
    const timer = setTimeout(() => {
      socket.destroy();
      // Worded like node-postgres' own timeout, which callers already classify.
      reject(new Error('Connection terminated due to connection timeout'));
    }, timeoutMs);
    const finish = (error: Error | undefined, offered?: boolean) => {
      clearTimeout(timer);
      if (error) reject(error);
      else resolve(offered === true);
    };
    socket.once('error', (error) => finish(error));
    socket.once('close', () => finish(new Error('Connection terminated unexpectedly')));
    socket.once('connect', () => socket.write(SSL_REQUEST));
    socket.once('data', (answer) => {
      socket.removeAllListeners('close');
      socket.removeAllListeners('error');
      socket.on('error', () => {});
      const code = String.fromCharCode(answer[0] ?? 0);
      if (code === 'N') {
        socket.destroy();
        finish(undefined, false);
      } else if (code === 'S') {
        // Complete the handshake before leaving: a server left mid-handshake logs
        // "could not accept SSL connection", one that sees a clean close logs nothing.
        const secure = connectTls({ socket, rejectUnauthorized: false });
        const done = () => {
          secure.destroy();
          socket.destroy();
        };
        secure.once('secureConnect', done);
        secure.once('error', done);
        finish(undefined, true);
      } else {
        socket.destroy();
        finish(new Error('There was an error establishing an SSL connection'));
      }
    });
  });
}

type ConnectCallback = (
  error: Error | undefined,
  client: pg.PoolClient | undefined,
  done: (release?: unknown) => void,
) => void;

/**
 * A pool whose connections follow libpq's sslmode: the TLS decision (a probe of the
 * server for `prefer`, certificate files read) is made before its first connection
 * and kept; nothing changes for callers, who may use it at once.
 *
 * @example
 * const pool = createPool({ connectionString: 'postgres://app@db/app', max: 10 });
 */
export function createPool(source: string | pg.PoolConfig): pg.Pool {
  const target = connectionTarget(source);
  let decided: { readonly ssl: pg.ClientConfig['ssl'] } | undefined;
  let deciding: Promise<void> | undefined;
  const decide = (): Promise<void> | undefined => {
    if (decided) return undefined;
    deciding ??= sslOption(target, target.config.connectionTimeoutMillis || undefined).then(
      (ssl) => {
        decided = { ssl };
      },
      (error: unknown) => {
        deciding = undefined;
        throw error;
      },
    );
    return deciding;
  };
  // pg-pool builds each client from its options with this class: the decision is made by then.
  class NegotiatedClient extends pg.Client {
    constructor(config?: pg.ClientConfig) {
      super({ ...config, ssl: decided?.ssl });
    }
  }
  return new NegotiatedPool({ ...target.config, Client: NegotiatedClient }, decide);
}

class NegotiatedPool extends pg.Pool {
  constructor(
    config: pg.PoolConfig,
    private readonly decide: () => Promise<void> | undefined,
  ) {
    super(config);
  }

  // pool.query() connects through connect() too.
  override connect(): Promise<pg.PoolClient>;
  override connect(callback: ConnectCallback): void;
  override connect(callback?: ConnectCallback): Promise<pg.PoolClient> | undefined {
    const pending = this.decide();
    if (!callback) {
      return pending ? pending.then(() => super.connect()) : super.connect();
    }
    if (!pending) {
      super.connect(callback);
      return undefined;
    }
    pending.then(
      () => super.connect(callback),
      (error: Error) => callback(error, undefined, () => {}),
    );
    return undefined;
  }
}

/** The limits pg-sessions gives the pools it creates (options poolSize, connectTimeout, statementTimeout). */
export interface PoolLimits {
  readonly poolSize: number;
  readonly connectTimeout: number;
  readonly statementTimeout: number;
}

/**
 * A pool's configuration: pg-sessions' limits, then the caller's own settings, which
 * win. A query the server never answers (a dead host) is given up a little after the
 * server would have cancelled it.
 */
export function poolConfig(limits: PoolLimits, base: pg.PoolConfig): pg.PoolConfig {
  return {
    max: limits.poolSize,
    connectionTimeoutMillis: limits.connectTimeout,
    statement_timeout: limits.statementTimeout,
    query_timeout: limits.statementTimeout + limits.connectTimeout,
    ...base,
  };
}
