#!/usr/bin/env bash
# Sets everything up, then runs supervisor-tui (the terminal UI with the supervisor embedded) on the bundled
# example plugins. Extra arguments pass through: ./scripts/run.sh --headless, ./scripts/run.sh --port 4100.
set -euo pipefail
cd "$(dirname "$0")/.."
SUPERVISOR_TUI_SETUP_SYSTEM=0 source scripts/setup.sh
exec .venv/bin/supervisor-tui "$@"
