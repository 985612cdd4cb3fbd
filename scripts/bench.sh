#!/usr/bin/env bash
# The benchmark (not part of the test run). Options: --only calls,profile,drain,replay,backups,incremental,summaries,catalog,files,logical,receive
# (default: all), --runs N (default 3), --segments N (default 64),
# --drain N (default 256), --replay-mb N (default 2200), --scale N (default 100),
# --files N (default 1000000, the many-files part).
set -euo pipefail
cd "$(dirname "$0")/.."
weed_dir=$(scripts/install-test-deps.sh | tail -n 1)
# GNU time measures each call's peak memory.
[ -x /usr/bin/time ] || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq time; } >&2
# The baseline: pgBackRest (Debian package), against the same S3 server over TLS.
command -v pgbackrest >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq pgbackrest; } >&2
# The profile part times each call's phases from its system calls.
command -v strace >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq strace; } >&2
command -v openssl >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssl; } >&2
export PATH="$weed_dir:$PATH"
cargo test --release --test bench -- "$@"
