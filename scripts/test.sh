#!/usr/bin/env bash
# Set up (venv, test packages, chromium) and run the whole test suite, offline.
# Two processes (pytest-xdist), each taking whole test files (--dist loadfile: a module's
# fixtures, such as its browser, redis-server or workers, start once): many tests wait on
# servers, browsers and subprocesses, so two share the 2 cores well. `-n 0` runs it in one.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh test
exec .venv/bin/python -m pytest -q -n 2 --dist loadfile "$@"
