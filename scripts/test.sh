#!/usr/bin/env bash
# Set up (venv, test packages, chromium) and run the whole test suite, offline.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh test
exec .venv/bin/python -m pytest -q "$@"
