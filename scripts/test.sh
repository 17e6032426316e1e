#!/usr/bin/env bash
# Sets everything up, then runs the whole check: ruff (lint + format), mypy, import-linter, the tests, then the
# tests of the modules that use uvicorn's, httptools' and Textual's internals again at both ends of their pins
# (scripts/test_pins.sh). Extra arguments go to the main pytest only (e.g. scripts/test.sh -k gateway; -n 0 runs it
# in one process).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
echo "== ruff";          .venv/bin/ruff check . && .venv/bin/ruff format --check .
echo "== mypy";          .venv/bin/mypy
echo "== import-linter"; .venv/bin/lint-imports
# Two pytest-xdist workers: the tests mostly wait on processes and sockets, so two share 2 cores well; a file's
# tests stay on one worker, in order, with its module fixtures made once. Ports: tests/fixtures/ports.py.
echo "== pytest";        .venv/bin/pytest -n 2 --dist loadfile "$@"
echo "== pins";          scripts/test_pins.sh
