#!/usr/bin/env bash
# The S3 server the tests use beside SeaweedFS: moto's S3 server (PyPI moto[server],
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
