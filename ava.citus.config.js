// npm run test:citus: the suites against a Citus cluster: a coordinator and two workers
// of Debian's PostgreSQL 15 with Citus built from its vendored source.
// - tests/citus/: the cluster and the platform's limits; they start their own cluster.
// - with PG_SESSIONS_TEST_CITUS=1: suites written for one server, whose
//   createTestDatabase() then gives a database on a cluster of their process's own,
//   migrated and distributed (src/testing/citus-test-database.ts).
// One file at a time: a cluster is three servers on two cores.
import base from './ava.config.js';

/** The single-server suites that also run on Citus (scripts/test-citus.sh). */
const SUITES_ON_CITUS = [
  'tests/koa-session/**/*.test.ts',
  'tests/concurrency.test.ts',
  'tests/lock-mode.test.ts',
  'tests/token-theft.test.ts',
];

export default {
  ...base,
  files:
    process.env.PG_SESSIONS_TEST_CITUS === '1' ? SUITES_ON_CITUS : ['tests/citus/**/*.test.ts'],
  concurrency: 1,
  timeout: '5m',
};
