#!/usr/bin/env bash
# npm run test:citus — the Citus suites (tests/citus/). They start and stop their own
# cluster (pg-sessions/testing's startCitusCluster) from Debian's PostgreSQL 15 with
# Citus, which is built first when it is not installed (npm run citus:build).
set -euo pipefail
cd "${BASH_SOURCE[0]%/*}/.."

if [ -z "${CITUS_BIN_DIR:-}" ]; then
  if [ ! -x /usr/lib/postgresql/15/bin/postgres ]; then
    echo "npm run test:citus needs Debian's PostgreSQL 15: apt-get install postgresql-15" >&2
    exit 1
  fi
  bash scripts/build-citus.sh
fi
exec npx ava --config ava.citus.config.js "$@"
