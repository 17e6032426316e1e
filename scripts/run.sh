#!/usr/bin/env bash
# Sets everything up, then runs supervisor-tui with the bundled example plugins. Extra arguments pass through.
set -euo pipefail
cd "$(dirname "$0")/.."
SUPERVISOR_TUI_SETUP_SYSTEM=0 source scripts/setup.sh
exec .venv/bin/supervisor-tui --headless "$@"
