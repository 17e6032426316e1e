"""tests/fixtures/ports.py: the pytest processes of one run (xdist workers, test_pins.sh's two runs) pick their test
ports from disjoint slices below the kernel's ephemeral range, so none hands out a port another one uses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from fixtures.ports import free_port, free_port_block

TESTS = Path(__file__).parent

PICK = """
import json
from fixtures.ports import free_port, free_port_block
print(json.dumps({"ports": [free_port() for _ in range(900)], "blocks": [free_port_block() for _ in range(20)]}))
"""


def run_picker(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """PICK in a fresh process whose environment is this one's without slot variables, plus ``env``."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_XDIST_", "SUPERVISOR_TUI_TEST_"))}
    return subprocess.run(
        [sys.executable, "-c", PICK], env={**clean, "PYTHONPATH": str(TESTS), **env}, capture_output=True, text=True
    )


def picks(**env: str) -> dict[str, list[int]]:
    """What a fresh process with ``env`` picks: 900 ports and 20 blocks (four
    such processes without slices of their own would all but surely overlap: 3768 ports, 90 blocks)."""
    done = run_picker(env)
    assert done.returncode == 0, done.stderr
    found: dict[str, list[int]] = json.loads(done.stdout)
    return found


def test_workers_and_outer_slots_pick_from_disjoint_slices_below_the_ephemeral_range() -> None:
    runs = [
        picks(
            PYTEST_XDIST_WORKER=f"gw{worker}", PYTEST_XDIST_WORKER_COUNT="2", SUPERVISOR_TUI_TEST_PORT_SLOT=f"{slot}/2"
        )
        for slot in range(2)
        for worker in range(2)
    ]
    for i, run in enumerate(runs):
        assert all(29000 <= port < 32768 for port in run["ports"]), run["ports"]
        assert all(20000 <= block and block + 100 <= 29000 for block in run["blocks"]), run["blocks"]
        # One process hands out no port (or block) twice in a row.
        assert len(set(run["ports"])) == 900 and len(set(run["blocks"])) == 20
        for other in runs[i + 1 :]:
            assert not set(run["ports"]) & set(other["ports"])
            assert not set(run["blocks"]) & set(other["blocks"])


def test_a_single_process_owns_the_whole_range() -> None:
    run = picks()
    assert len({port % 2 for port in run["ports"]}) == 2  # not only every other port


def test_a_slot_outside_its_count_is_refused() -> None:
    done = run_picker({"SUPERVISOR_TUI_TEST_PORT_SLOT": "2/2"})
    assert done.returncode != 0 and "bad SUPERVISOR_TUI_TEST_PORT_SLOT" in done.stderr


def test_a_worker_xdist_starts_in_place_of_a_crashed_one_gets_a_slice_too() -> None:
    replacement = picks(PYTEST_XDIST_WORKER="gw5", PYTEST_XDIST_WORKER_COUNT="2")
    assert all(29000 <= port < 32768 and port % 2 == 1 for port in replacement["ports"])


def test_a_port_handed_out_binds() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", free_port()))
    assert free_port_block() % 100 == 0
