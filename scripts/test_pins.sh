#!/usr/bin/env bash
# Runs the tests of the modules that reach into other packages' internals (server/fast_http.py and uvicorn,
# server/gateway_upstream.py and httptools, tui/widgets/keyed_table.py and Textual) against the lowest and the
# highest release that pyproject.toml's pins allow (scripts/pins.py), so a release inside a range cannot break them
# silently. Each end has its own virtualenv, .venv-pins-low and .venv-pins-high: the project (editable) and the test
# tools, the fenced packages forced to that end's versions; made once, then redone only when those versions or
# pyproject.toml change. The two runs go side by side (the tests mostly wait on sockets and processes); their output
# is printed after, one block per virtualenv. Any failure, and a run that collects no test (pytest's exit code 5),
# fails the script. Called by test.sh after the main pytest; runs alone too. Extra arguments go to both pytest runs.
set -euo pipefail
cd "$(dirname "$0")/.."
SUPERVISOR_TUI_SETUP_SYSTEM=0 source scripts/setup.sh  # .venv, whose pip asks the package index

# The fenced modules' own tests, plus the TUI tests that drive KeyedTable (tables, reconcile, rendered cells)
# and those of tui/key_order.py (it relies on Textual's key routing).
TESTS=(
  tests/test_fast_http.py
  tests/test_gateway.py tests/test_gateway_routes_sync.py tests/test_gateway_serve.py tests/test_gateway_streaming.py
  tests/test_security_gateway.py tests/test_security_http.py
  tests/test_tui.py tests/test_tui_snapshots.py tests/test_tui_key_order.py
)
for file in "${TESTS[@]}"; do
  [ -f "$file" ] || { echo "test_pins: $file is gone; update TESTS in scripts/test_pins.sh" >&2; exit 1; }
done

prepare() {
  # Makes .venv-pins-$1 hold the requirements `pins.py $1` prints, unless it already does.
  local venv=.venv-pins-$1 wanted
  local stamp=$venv/.installed
  if ! wanted=$(.venv/bin/python scripts/pins.py "$1"); then
    [ -f "$stamp" ] || return 1
    echo "test_pins: using the versions $venv was made with" >&2
    wanted=$(cat "$stamp")
  fi
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$wanted" ] && [ ! pyproject.toml -nt "$stamp" ]; then return 0; fi
  echo "test_pins: installing into $venv: ${wanted//$'\n'/ } (log: $venv/install.log)" >&2
  [ -x "$venv/bin/python" ] || .venv/bin/python -m venv "$venv"
  local requirements
  mapfile -t requirements <<<"$wanted"
  if ! { "$venv/bin/python" -m pip install -q --upgrade pip \
      && "$venv/bin/python" -m pip install -q -e . "${requirements[@]}"; } \
      >"$venv/install.log" 2>&1; then
    cat "$venv/install.log" >&2
    echo "test_pins: installing into $venv failed (see above)" >&2
    return 1
  fi
  echo "$wanted" >"$stamp"
}

versions() {
  "$1/bin/python" -c 'import importlib.metadata as m; print(", ".join(f"{n} {m.version(n)}" for n in ("uvicorn", "httptools", "textual")))'
}

# Installs one after the other (both write the checkout's egg-info), tests side by side.
ends=(low high)
for end in "${ends[@]}"; do prepare "$end"; done
logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT
declare -A pids
slot=0
for end in "${ends[@]}"; do
  # No cache provider: the two runs would write the same .pytest_cache. Each run picks its test ports from a slice
  # of its own (tests/fixtures/ports.py), so the two never hand out the same one.
  SUPERVISOR_TUI_TEST_PORT_SLOT="$slot/${#ends[@]}" \
    ".venv-pins-$end/bin/pytest" -q -p no:cacheprovider "${TESTS[@]}" "$@" >"$logs/$end" 2>&1 &
  pids[$end]=$!
  slot=$((slot + 1))
done
failed=()
for end in "${ends[@]}"; do
  status=0
  wait "${pids[$end]}" || status=$?
  echo "== pytest, pins $end: $(versions ".venv-pins-$end") (.venv-pins-$end)"
  cat "$logs/$end"
  # Exit code 5 (no test collected) is a failure too: the fenced code went untested.
  [ "$status" = 0 ] || { echo "test_pins: pins $end: pytest exit code $status" >&2; failed+=("$end"); }
done
[ "${#failed[@]}" = 0 ] || { echo "test_pins: the tests failed with the pins at: ${failed[*]}" >&2; exit 1; }
