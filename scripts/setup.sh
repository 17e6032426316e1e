#!/usr/bin/env bash
# Prepares a checkout: a virtualenv in .venv with the project and its dev tools, plus the system tools the
# tests use (tmux). Safe to run again: it only does what is missing. Sourced by run.sh and test.sh.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PYTHON=${PYTHON:-python3}
apt_install() {
  # Installs Debian packages when we may (root, or passwordless sudo); otherwise says what is missing.
  local sudo=""
  if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then sudo="sudo -n"; else
      echo "setup: please install these packages: $*" >&2; return 1; fi
  fi
  $sudo apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null
}

if [ ! -x .venv/bin/python ]; then
  if ! "$PYTHON" -m venv .venv 2>/dev/null; then
    rm -rf .venv
    apt_install python3-venv
    "$PYTHON" -m venv .venv
  fi
fi
stamp=.venv/.installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "setup: installing supervisor-tui and its tools into .venv (log: .venv/install.log)" >&2
  # Build backends print pages of warnings; they go to the log, shown only when the install fails.
  if ! { .venv/bin/python -m pip install -q --upgrade pip && .venv/bin/python -m pip install -q -e ".[dev]"; } \
      >.venv/install.log 2>&1; then
    cat .venv/install.log >&2
    echo "setup: installing into .venv failed (see above)" >&2
    exit 1
  fi
  touch "$stamp"
fi
if [ "${SUPERVISOR_TUI_SETUP_SYSTEM:-1}" = 1 ] && ! command -v tmux >/dev/null; then
  apt_install tmux || true
fi
# Caddy: the tests of the route export (routes.export = caddy) and bench/proxy.py run their own `caddy run`.
# Debian's package enables a caddy service; the tests never use it, so it is stopped where a service manager runs.
if [ "${SUPERVISOR_TUI_SETUP_SYSTEM:-1}" = 1 ] && ! command -v caddy >/dev/null; then
  if apt_install caddy; then
    if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
      systemctl disable --now caddy >/dev/null 2>&1 || true
    fi
  fi
fi
# The fleet tests start their own redis-server on free ports; the Debian package's own service is not wanted.
if [ "${SUPERVISOR_TUI_SETUP_SYSTEM:-1}" = 1 ] && ! command -v redis-server >/dev/null; then
  apt_install redis-server || true
  if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
    systemctl disable --now redis-server >/dev/null 2>&1 || true
  elif [ -x /etc/init.d/redis-server ]; then
    /etc/init.d/redis-server stop >/dev/null 2>&1 || true
  fi
fi
# PostgreSQL for the console store's tests and bench (consoles.store = postgresql://...): only the binaries.
# Tests start throwaway clusters of their own (initdb + pg_ctl in a temp dir); the cluster the package may
# create is stopped, so it holds no port or memory.
if [ "${SUPERVISOR_TUI_SETUP_SYSTEM:-1}" = 1 ] && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  apt_install postgresql postgresql-contrib || true
  if command -v pg_ctlcluster >/dev/null; then
    for cluster in /etc/postgresql/*/*; do
      [ -d "$cluster" ] || continue
      pg_ctlcluster "$(basename "$(dirname "$cluster")")" "$(basename "$cluster")" stop 2>/dev/null || true
    done
  fi
fi
