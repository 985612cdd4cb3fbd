#!/usr/bin/env bash
# The first five minutes: on a throwaway PostgreSQL cluster archiving into a
# local-directory repository, take a base backup, write orders, note the time,
# delete them by mistake, recover a copy to the noted time and show them back.
# Everything lives in a temporary directory, removed at the end (servers stopped by pid).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-test-deps.sh --postgres-only >/dev/null
echo "== building walvault"
cargo build --release --quiet

# The server's programs: Debian's PostgreSQL 15, or another major's directory
# (e.g. DEMO_PG_BIN_DIR=/var/tmp/walvault-test-cache/postgresql/18/bin after
# scripts/install-test-deps.sh). recover and drill take the same through
# postgres.bin_dir and check its version. Clients are 15's: they serve every major.
PGBIN=${DEMO_PG_BIN_DIR:-/usr/lib/postgresql/15/bin}
CLIENTS=/usr/lib/postgresql/15/bin
work=$(mktemp -d /tmp/walvault-demo-XXXXXX)
chmod 755 "$work"
as_pg() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- env "$@"; else env "$@"; fi; }
pids=()
cleanup() {
  for pid in "${pids[@]}"; do
    kill -INT "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  done
  rm -rf "$work"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

mkdir -p "$work/bin" "$work/repo" "$work/sock"
cp target/release/walvault "$work/bin/"
[ "$(id -u)" -eq 0 ] && chown -R postgres:postgres "$work"
W="$work/bin/walvault"
ENV=(WALVAULT_CONFIG=/dev/null "WALVAULT_REPO=file://$work/repo" "WALVAULT_POSTGRES_BIN_DIR=$PGBIN" PATH=/usr/bin:/bin)
port=$(free_port)
psql_a() { as_pg "${ENV[@]}" "$CLIENTS/psql" -X -q -At -h "$work/sock" -p "$port" -U postgres -d postgres -c "$1"; }

echo "== a throwaway $("$PGBIN/postgres" --version | sed 's/^postgres (PostgreSQL)/PostgreSQL/') cluster archiving with walvault (port $port)"
as_pg "${ENV[@]}" "$PGBIN/initdb" -A trust -U postgres --no-sync -D "$work/db" >/dev/null
cat >> "$work/db/postgresql.conf" <<CONF
listen_addresses = ''
unix_socket_directories = '$work/sock'
port = $port
wal_level = replica
archive_mode = on
archive_command = '$W wal-push %p'
archive_timeout = 60
CONF
as_pg "${ENV[@]}" "$PGBIN/pg_ctl" -D "$work/db" -l "$work/db.log" -w start >/dev/null
pids+=("$(head -1 "$work/db/postmaster.pid")")

psql_a "create table orders(id int primary key, customer text, lot text, placed timestamptz default now())"
psql_a "insert into orders(id, customer, lot) select g, 'customer-' || g, 'LOT-' || (1000 + g) from generate_series(1, 500) g"
echo "== base backup"
as_pg "${ENV[@]}" PGHOST="$work/sock" PGPORT="$port" PGUSER=postgres PGDATA="$work/db" "$W" backup-push --fast 2>"$work/backup.err" || { cat "$work/backup.err" >&2; exit 1; }
psql_a "insert into orders(id, customer, lot) select g, 'customer-' || g, 'LOT-' || (1000 + g) from generate_series(501, 800) g"
sleep 1
noted=$(psql_a "select to_char(clock_timestamp() at time zone 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || '+00'")
echo "   800 orders at $noted (noted)"
sleep 1
psql_a "delete from orders"
echo "== accident: DELETE FROM orders -> $(psql_a 'select count(*) from orders') orders left"
seg=$(psql_a "select pg_walfile_name(pg_switch_wal())")
for _ in $(seq 1 100); do
  last=$(psql_a "select coalesce(last_archived_wal, '') from pg_stat_archiver")
  [[ "$last" > "$seg" || "$last" == "$seg" ]] && break
  sleep 0.2
done
as_pg "${ENV[@]}" "$W" backup-list

port2=$(free_port)
echo "== recover a copy to $noted (port $port2)"
as_pg "${ENV[@]}" "$W" recover --pgdata "$work/restored" --target-time "$noted" --start --port "$port2" --socket-dir "$work/sock"
pids+=("$(head -1 "$work/restored/postmaster.pid")")
echo "== the orders are back:"
as_pg "${ENV[@]}" "$CLIENTS/psql" -X -h "$work/sock" -p "$port2" -U postgres -d postgres \
  -c "select count(*) as orders, min(id), max(id), max(placed) as last_placed from orders"
echo "== prove it: a restore drill to the same time, with a check of our own"
cat > "$work/checks.sql" <<'SQL'
-- check: all 800 orders are there
select count(*) = 800 from orders;
SQL
mkdir -p "$work/drills" "$work/scratch"
[ "$(id -u)" -eq 0 ] && chown -R postgres:postgres "$work/checks.sql" "$work/drills" "$work/scratch"
as_pg "${ENV[@]}" "$W" drill --target-time "$noted" --checks "$work/checks.sql" \
  --scratch-dir "$work/scratch" --report-dir "$work/drills" --operator demo 2>/dev/null
sed -n '/^## Timings/,/^## Checks/p' "$work"/drills/walvault-drill-*.md | grep -E '^\| (Download|Recovery|\*\*RTO)'
grep -E '^\| all 800' "$work"/drills/walvault-drill-*.md
echo "== done; stopping both servers and removing $work"
