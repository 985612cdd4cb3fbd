#!/usr/bin/env bash
# The test command: installs what the tests need, checks formatting and lints,
# then runs every test (unit and integration, against real PostgreSQL 15, SeaweedFS,
# moto's S3 server with signatures checked, Azurite for Azure Blob,
# and each major from 13 to 18 in tests/majors.rs).
set -euo pipefail
cd "$(dirname "$0")/.."

weed_dir=$(scripts/install-test-deps.sh | tail -n 1)
export PATH="$weed_dir:$PATH"

cargo fmt --all -- --check
# The terraform module's formatting; without terraform the step says so.
if command -v terraform >/dev/null; then
    terraform fmt -check -recursive -diff terraform examples/terraform
else
    echo "terraform is not installed: terraform fmt -check NOT run on terraform/" >&2
fi
cargo clippy --release --all-targets --quiet -- -D warnings
# Every test, the suites side by side on one shared build.
scripts/run-suites.sh
