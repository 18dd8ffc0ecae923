// Each test file runs in its own child process (not a worker thread) so that the
// PostgreSQL harness can reap its server when the process ends, however it ends.
export default {
  // tests/ha/ needs Debian's Patroni, etcd and PgBouncer: npm run test:ha (ava.ha.config.js);
  // tests/citus/ a Citus cluster: npm run test:citus (ava.citus.config.js).
  files: ['tests/**/*.test.ts', '!tests/ha/**', '!tests/citus/**'],
  extensions: { ts: 'module' },
  nodeArguments: ['--import=tsx'],
  workerThreads: false,
  // Two cores: more parallel files only queue on the CPU and each starts its own server.
  concurrency: 2,
  timeout: '2m',
};
