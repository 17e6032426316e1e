#!/usr/bin/env bash
# Sets everything up, then runs the whole check: ruff (lint + format), mypy, import-linter, the tests, then the
# tests of the modules that use uvicorn's, httptools' and Textual's internals again at both ends of their pins
# (scripts/test_pins.sh). Extra arguments go to the main pytest only (e.g. scripts/test.sh -k gateway;
# scripts/test.sh -n 2 --dist loadfile runs it on two pytest-xdist workers, not yet the default: see the README).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
echo "== ruff";          .venv/bin/ruff check . && .venv/bin/ruff format --check .
echo "== mypy";          .venv/bin/mypy
echo "== import-linter"; .venv/bin/lint-imports
echo "== pytest";        .venv/bin/pytest "$@"
echo "== pins";          scripts/test_pins.sh
