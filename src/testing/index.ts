/**
 * Real PostgreSQL for tests and demos: `import { createTestDatabase } from 'pg-sessions/testing'`.
 * @module
 */
export { type PostgresBinaries, resolveBinaries } from './binaries.js';
export {
  CitusCluster,
  type CitusClusterOptions,
  startCitusCluster,
} from './citus-cluster.js';
export { Cluster, type ClusterOptions, type SynchronousMode, startCluster } from './cluster.js';
export { PostgresServer, type PostgresServerOptions } from './postgres-server.js';
export {
  createTestDatabase,
  type TestDatabase,
  type TestDatabaseOptions,
} from './test-database.js';
export { stopTestServer, type TestBackend, type TestServer, testServer } from './test-server.js';
