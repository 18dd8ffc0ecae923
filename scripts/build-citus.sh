#!/usr/bin/env bash
# npm run citus:build — builds Citus 13.2 from its vendored source and installs it into
# Debian's PostgreSQL 15, unless it is installed already. Citus is not packaged for
# Debian 12; its source tarball and the one-hunk patch for PostgreSQL 15's current minor
# release are kept outside this repository (CITUS_SOURCE, default ../shared/vendor/citus:
# citus-13.2.2.tar.gz and pg15-have-createdb-privilege.patch). About 90 s on 2 cores.
set -euo pipefail
cd "${BASH_SOURCE[0]%/*}/.."

pg_config_bin="${PG_CONFIG:-/usr/lib/postgresql/15/bin/pg_config}"
if [ ! -x "$pg_config_bin" ]; then
  echo "citus:build needs Debian's PostgreSQL 15: apt-get install postgresql-15 postgresql-server-dev-15" >&2
  exit 1
fi
extension_dir="$("$pg_config_bin" --sharedir)/extension"
if [ -f "$extension_dir/citus.control" ] && [ -f "$("$pg_config_bin" --pkglibdir)/citus.so" ]; then
  echo "Citus is installed for $("$pg_config_bin" --version) ($extension_dir/citus.control)"
  exit 0
fi

source_dir="${CITUS_SOURCE:-../shared/vendor/citus}"
tarball="$source_dir/citus-13.2.2.tar.gz"
patch_file="$source_dir/pg15-have-createdb-privilege.patch"
if [ ! -f "$tarball" ] || [ ! -f "$patch_file" ]; then
  echo "citus:build needs Citus' source: $tarball and $patch_file (set CITUS_SOURCE to their folder)" >&2
  exit 1
fi
source_dir="$(cd "$source_dir" && pwd)"

packages=()
for package in postgresql-server-dev-15 libcurl4-openssl-dev liblz4-dev libzstd-dev libkrb5-dev make gcc; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'install ok installed' || packages+=("$package")
done
if [ "${#packages[@]}" -gt 0 ]; then
  echo "== apt-get install ${packages[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${packages[@]}"
fi

build="$(mktemp -d)"
trap 'rm -rf "$build"' EXIT
tar xzf "$source_dir/citus-13.2.2.tar.gz" -C "$build"
cd "$build/citus-13.2.2"
patch -p1 --quiet < "$source_dir/pg15-have-createdb-privilege.patch"
echo "== building Citus 13.2.2 for $("$pg_config_bin" --version) (about 90 s on 2 cores)"
./configure --quiet PG_CONFIG="$pg_config_bin" > "$build/configure.log" 2>&1 || {
  tail -20 "$build/configure.log" >&2
  exit 1
}
make -s -j"$(nproc)" > "$build/make.log" 2>&1 || {
  tail -30 "$build/make.log" >&2
  exit 1
}
make -s install > "$build/install.log" 2>&1 || {
  tail -20 "$build/install.log" >&2
  exit 1
}
echo "Citus installed: $extension_dir/citus.control"
