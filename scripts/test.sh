#!/usr/bin/env bash
# Sets everything up, then runs the whole check: ruff (lint + format), mypy, import-linter, and the tests.
# Extra arguments go to pytest (e.g. scripts/test.sh -k gateway).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
echo "== ruff";          .venv/bin/ruff check . && .venv/bin/ruff format --check .
echo "== mypy";          .venv/bin/mypy
echo "== import-linter"; .venv/bin/lint-imports
echo "== pytest";        .venv/bin/pytest "$@"
