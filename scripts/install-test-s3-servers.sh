#!/usr/bin/env bash
# The object stores the tests use beside SeaweedFS (and Azurite, below). moto's S3 server (PyPI moto[server],
# pinned), in its own virtual environment $TEST_PG_CACHE/moto (default
# /var/tmp/walvault-test-cache), so that its Python dependencies never meet the
# host's. tests/servers/moto_signed.py starts it with request signatures checked.
set -euo pipefail

cache="${TEST_PG_CACHE:-/var/tmp/walvault-test-cache}"
moto_version=5.2.5
venv="$cache/moto"
if [ "$(cat "$venv/VERSION" 2>/dev/null)" != "$moto_version" ] || ! "$venv/bin/python" -c 'import moto.server, boto3' 2>/dev/null; then
  echo "installing moto[server]==$moto_version into $venv ..." >&2
  mkdir -p "$cache"
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "moto[server]==$moto_version" >&2
  echo "$moto_version" > "$venv/VERSION"
fi
"$venv/bin/python" -c 'import moto; print("moto", moto.__version__)' >&2

# Azurite, Azure Storage's emulator (npm azurite, pinned), for the Azure Blob
# backend's tests: $TEST_PG_CACHE/azurite/node_modules/.bin/azurite-blob.
azurite_version=3.37.0
adir="$cache/azurite"
if [ "$(cat "$adir/VERSION" 2>/dev/null)" != "$azurite_version" ] || [ ! -x "$adir/node_modules/.bin/azurite-blob" ]; then
  command -v npm >/dev/null || { echo "npm is needed to install Azurite (the Azure Blob emulator the tests use)" >&2; exit 1; }
  echo "installing azurite@$azurite_version into $adir ..." >&2
  rm -rf "$adir"
  mkdir -p "$adir"
  (cd "$adir" && npm install --silent --no-audit --no-fund --no-save "azurite@$azurite_version" >&2)
  echo "$azurite_version" > "$adir/VERSION"
fi
echo "azurite $("$adir/node_modules/.bin/azurite-blob" --version)" >&2
