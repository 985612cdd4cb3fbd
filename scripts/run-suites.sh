#!/usr/bin/env bash
# Runs every test binary of one release build, several at a time: the suites
# mostly wait on PostgreSQL, SeaweedFS and the network, so two cores keep
# SUITE_LANES (default 3) of them busy. The longest start first, so the
# run ends when its longest suite does; a suite not named in the order below
# still runs (after them). Each suite's output is printed whole when it ends;
# the script fails if any suite fails, and names them.
set -euo pipefail
cd "$(dirname "$0")/.."

lanes=${SUITE_LANES:-3}
# Longest first, as measured on a 2-core machine; the unit tests last.
order=(ha soak patroni faults majors incremental throughput archive_loop retention pitr life
    cluster_shapes layouts tables dumps drill s3_second_server azure_store hostile isolation s3_store
    parsers_fuzz config_docs lib:walvault bin:walvault)

list=$(mktemp)
logs=$(mktemp -d)
trap 'rm -rf "$list" "$logs"' EXIT
# The build every suite shares, built once here (never by a lane); its test
# binaries listed from cargo's messages, its diagnostics on stderr.
cargo test --release --no-run --message-format=json-render-diagnostics | python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["profile"]["test"] and m.get("executable"):
        kind = m["target"]["kind"][0]
        name = m["target"]["name"] if kind == "test" else kind + ":" + m["target"]["name"]
        print(name, m["executable"])
' >"$list"
# Doctests are not a binary of their own: cargo runs them.
cargo test --release --doc --quiet

queue=()
for name in "${order[@]}"; do
    if grep -q "^$name " "$list"; then
        queue+=("$name")
    fi
done
while read -r name _; do
    if [[ " ${order[*]} " != *" $name "* ]]; then
        queue+=("$name")
    fi
done <"$list"
echo "running ${#queue[@]} test binaries, $lanes at a time: ${queue[*]}"

# One suite: its binary from the package root (as cargo runs it), its ports in
# its lane's range (tests/common free_port), its output to a log printed at the end.
run_one() {
    local name=$1 exe lane start rc
    exe=$(grep "^$name " "$RUN_LIST" | head -n 1 | cut -d' ' -f2-)
    lane=$((SUITE_SLOT + 1))
    start=$(date +%s)
    rc=0
    SUITE_LANE="$lane/$RUN_LANES" "$exe" >"$RUN_LOGS/$name.log" 2>&1 || rc=$?
    {
        echo "===== $name (lane $lane): exit $rc after $(($(date +%s) - start)) s"
        cat "$RUN_LOGS/$name.log"
    } | flock "$RUN_LOGS/.print" cat
    [[ $rc == 0 ]] || touch "$RUN_LOGS/$name.failed"
    return 0
}
export -f run_one
export RUN_LIST=$list RUN_LOGS=$logs RUN_LANES=$lanes

t0=$(date +%s)
printf '%s\n' "${queue[@]}" |
    xargs -P "$lanes" --process-slot-var=SUITE_SLOT -I{} bash -c 'run_one "$1"' _ {}
failed=""
for f in "$logs"/*.failed; do
    if [[ -e $f ]]; then
        failed+="$(basename "$f" .failed) "
    fi
done
echo "all suites ended after $(($(date +%s) - t0)) s"
if [[ -n $failed ]]; then
    echo "FAILED suites: $failed" >&2
    exit 1
fi
echo "every suite passed"
