// npm run test:ha: the suites against Debian's Patroni, etcd and PgBouncer (tests/ha/).
// One file at a time: a Patroni cluster is three servers and etcd on two cores.
import base from './ava.config.js';

export default {
  ...base,
  files: ['tests/ha/**/*.test.ts'],
  concurrency: 1,
  timeout: '5m',
};
