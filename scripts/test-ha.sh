#!/usr/bin/env bash
# npm run test:ha — the Patroni and PgBouncer suites (tests/ha/). They start and stop
# every server they need, from Debian's packages; without them, one line says what to install.
set -euo pipefail
cd "${BASH_SOURCE[0]%/*}/.."

missing=()
for tool in patroni patronictl etcd pgbouncer; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
packages="patroni etcd-server pgbouncer"
if [ -z "${PG_BIN_DIR:-}" ] && ! compgen -G '/usr/lib/postgresql/*/bin/pg_rewind' >/dev/null; then
  missing+=(postgresql)
  packages="${packages} postgresql"
fi
if [ "${#missing[@]}" -gt 0 ]; then
  echo "npm run test:ha needs ${missing[*]}: apt-get install ${packages}" >&2
  exit 1
fi
exec npx ava --config ava.ha.config.js "$@"
