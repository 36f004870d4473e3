#!/usr/bin/env bash
# Set up (first run only installs) and start the server on HOST:PORT (default 127.0.0.1:5000).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/python app.py "$@"
