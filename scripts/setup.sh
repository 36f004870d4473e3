#!/usr/bin/env bash
# Create .venv (once) and install the Python packages; `setup.sh test` adds test packages
# and Debian's chromium for the browser tests and redis-server for the redis backend tests.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
if [ "${1:-}" = "test" ]; then
  .venv/bin/pip install -q --disable-pip-version-check -r requirements-test.txt -r requirements-openvino.txt
  if ! command -v chromium >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ]; then
      (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null
    else
      echo "browser tests need Debian's chromium: sudo apt-get install -y chromium" >&2
    fi
  fi
  # The redis backend tests start their own redis-server (no system daemon is used).
  if ! command -v redis-server >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ]; then
      (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server) >/dev/null
    else
      echo "redis backend tests need Debian's redis-server: sudo apt-get install -y redis-server" >&2
    fi
  fi
else
  .venv/bin/pip install -q --disable-pip-version-check -r requirements.txt
fi
