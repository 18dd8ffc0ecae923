// npm run test:citus: the suites against a Citus cluster (tests/citus/): a coordinator and
// two workers of Debian's PostgreSQL 15 with Citus built from its vendored source.
// One file at a time: a cluster is three servers on two cores.
import base from './ava.config.js';

export default {
  ...base,
  files: ['tests/citus/**/*.test.ts'],
  concurrency: 1,
  timeout: '5m',
};
