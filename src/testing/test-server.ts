import pg from 'pg';
import { resolveConnectionConfig } from '../db/connection-config.js';
import { resolveBinaries } from './binaries.js';
import { PostgresServer } from './postgres-server.js';

/** Where the tests' PostgreSQL comes from. */
export type TestBackend = 'embedded' | 'PG_BIN_DIR' | 'url' | 'testcontainers';

/** A PostgreSQL server the tests may create and drop databases on. */
export interface TestServer {
  readonly backend: TestBackend;
  /** A superuser URL on the server's maintenance database. */
  readonly adminUrl: string;
  /** `server_version_num` / 10000. */
  readonly majorVersion: number;
  /** The local server process, for the embedded and PG_BIN_DIR backends. */
  readonly process?: PostgresServer;
  /** Stops what this process started; an existing server (PG_TEST_URL) is left running. */
  stop(): Promise<void>;
}

let current: Promise<TestServer> | undefined;

/**
 * The test server of this process, started on first use (one per process at most):
 * - `PG_TEST_URL` set: that existing server;
 * - `PG_TEST_BACKEND=testcontainers`: a Docker container (needs a Docker engine);
 * - else a server from `PG_BIN_DIR`'s binaries or, by default, the embedded ones.
 */
export function testServer(): Promise<TestServer> {
  current ??= startTestServer().catch((error: unknown) => {
    current = undefined;
    throw error;
  });
  return current;
}

/** Stops this process's test server, if one was started. */
export async function stopTestServer(): Promise<void> {
  const server = current;
  current = undefined;
  if (server) await (await server).stop();
}

async function startTestServer(): Promise<TestServer> {
  const url = process.env.PG_TEST_URL;
  if (url) {
    return {
      backend: 'url',
      adminUrl: url,
      majorVersion: await majorVersion(url),
      stop: async () => {},
    };
  }
  if (process.env.PG_TEST_BACKEND === 'testcontainers') return startContainer();
  if (process.env.PG_TEST_BACKEND && process.env.PG_TEST_BACKEND !== 'embedded') {
    throw new Error(
      `PG_TEST_BACKEND=${process.env.PG_TEST_BACKEND} is not one of embedded, testcontainers`,
    );
  }
  const binaries = await resolveBinaries();
  const server = await PostgresServer.start({ binaries });
  return {
    backend: binaries.source === 'PG_BIN_DIR' ? 'PG_BIN_DIR' : 'embedded',
    adminUrl: server.url('postgres'),
    majorVersion: await majorVersion(server.url('postgres')),
    process: server,
    stop: () => server.destroy(),
  };
}

async function startContainer(): Promise<TestServer> {
  // Imported lazily: only this backend needs testcontainers (and a Docker engine).
  const { PostgreSqlContainer } = await import('@testcontainers/postgresql');
  const image = process.env.PG_TEST_IMAGE ?? 'postgres:18-alpine';
  const container = await new PostgreSqlContainer(image)
    .withUsername('postgres')
    .withPassword('postgres')
    .withDatabase('postgres')
    .start();
  const adminUrl = container.getConnectionUri();
  return {
    backend: 'testcontainers',
    adminUrl,
    majorVersion: await majorVersion(adminUrl),
    stop: async () => {
      await container.stop();
    },
  };
}

async function majorVersion(url: string): Promise<number> {
  const client = new pg.Client(
    await resolveConnectionConfig({ connectionString: url, connectionTimeoutMillis: 10_000 }),
  );
  await client.connect();
  try {
    const result = await client.query<{ v: string }>(
      `SELECT current_setting('server_version_num') AS v`,
    );
    return Math.floor(Number(result.rows[0]?.v) / 10_000);
  } finally {
    await client.end();
  }
}
