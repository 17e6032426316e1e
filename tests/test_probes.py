"""Health probe types and readiness with real processes: tcp, exec (pass, fail, timeout), a ready line printed
late, a liveness restart, and no probe left running once its plugin is stopped (process-compose #488)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from conftest import plugin_processes, spawns, wait_until

from supervisor_tui.core.supervisor import PluginActionError, Supervisor

pytestmark = pytest.mark.usefixtures("no_plugin_leftovers")
NO_RETRY = {"startretries": 0}  # a start that is not ready fails at once

# Prints a first line, then its ready line only once the file "go" exists in its folder, then sleeps.
LATE_READY = """\
import os, sys, time
with open("spawns.log", "a") as f:
    f.write(f"{os.getpid()}\\n")
print("warming up", flush=True)
while not os.path.exists("go"):
    time.sleep(0.02)
print("READY: accepting work", file=sys.stderr, flush=True)
while True:
    time.sleep(3600)
"""


def logged(supervisor: Supervisor, key: str, text: str) -> bool:
    return any(text in r.message for r in supervisor.logs.tail(key, 200))


async def test_tcp_probe_gates_running_on_the_port_accepting(
    supervisor: Supervisor, add_plugin: Callable[..., Any]
) -> None:
    await add_plugin("web", "http_server.py", health={"type": "tcp", "interval_s": 0.2})
    snap = await supervisor.start("web")
    assert snap.state == "RUNNING" and snap.healthy is True
    assert snap.health_detail.startswith(f"probe: port {snap.port} accepted a connection")
    # a process that never listens is never ready
    await add_plugin("deaf", "sleeper.py", health={"type": "tcp", "start_timeout_s": 0.5}, **NO_RETRY)
    with pytest.raises(PluginActionError, match="FATAL"):
        await supervisor.start("deaf")
    assert "not healthy within 0.8s (last probe: connect to port" in supervisor.plugin("deaf").last_error


async def test_exec_probe_passes_in_the_plugin_folder_with_its_environment(
    supervisor: Supervisor, add_plugin: Callable[..., Any]
) -> None:
    check = 'import os, sys; print("port", os.environ["PORT"]); sys.exit(0 if os.path.exists("manifest.json") else 1)'
    await add_plugin("checked", "sleeper.py", health={"type": "exec", "command": ["python", "-c", check]})
    snap = await supervisor.start("checked")
    assert snap.state == "RUNNING" and snap.healthy is True
    assert snap.health_detail.startswith("probe: command exited 0 in ")
    assert snap.health_detail.endswith(f": port {snap.port}")


async def test_exec_probe_failure_and_timeout_fail_the_start(
    supervisor: Supervisor, add_plugin: Callable[..., Any]
) -> None:
    await add_plugin(
        "failing", "sleeper.py", health={"command": "echo not yet; exit 3", "start_timeout_s": 0.3}, **NO_RETRY
    )
    with pytest.raises(PluginActionError, match="FATAL"):
        await supervisor.start("failing")
    assert "(last probe: command exited with code 3: not yet)" in supervisor.plugin("failing").last_error
    folder = await add_plugin(
        "hanging",
        "sleeper.py",
        health={"type": "exec", "command": "sleep 30", "timeout_s": 0.2, "start_timeout_s": 0.3},
        **NO_RETRY,
    )
    with pytest.raises(PluginActionError, match="FATAL"):
        await supervisor.start("hanging")
    assert "(last probe: command still running after 0.2s (killed))" in supervisor.plugin("hanging").last_error
    assert [p.name() for p in plugin_processes(folder)] == []  # each timed-out probe was killed


async def test_a_plugin_printing_its_ready_line_late_stays_starting_until_then(
    supervisor: Supervisor, add_plugin: Callable[..., Any]
) -> None:
    folder = await add_plugin("late", LATE_READY, startsecs=0.1, ready_log_line=r"^READY: ")
    await supervisor.start("late", wait=False)
    await wait_until(lambda: logged(supervisor, "late", "warming up"))
    await asyncio.sleep(0.5)  # an observation window: well past startsecs, and still not ready
    assert supervisor.plugin("late").state == "STARTING"
    (folder / "go").touch()
    await wait_until(lambda: supervisor.plugin("late").state == "RUNNING")
    assert logged(supervisor, "late", "READY: accepting work")
    assert len(spawns(folder)) == 1


async def test_a_ready_line_that_never_comes_is_a_failed_start(
    supervisor: Supervisor, add_plugin: Callable[..., Any]
) -> None:
    await add_plugin(
        "silent",
        "sleeper.py",
        ready_log_line="never printed",
        health={"type": "tcp", "start_timeout_s": 0.5},
        **NO_RETRY,
    )
    with pytest.raises(PluginActionError, match="FATAL"):
        await supervisor.start("silent")
    assert "no output line matched ready_log_line 'never printed'" in supervisor.plugin("silent").last_error


async def test_liveness_failures_restart_the_plugin(supervisor: Supervisor, add_plugin: Callable[..., Any]) -> None:
    folder = await add_plugin(
        "sick",
        "sleeper.py",
        health={"command": "test ! -e sick", "interval_s": 0.1, "failures": 2, "restart": True},
    )
    await supervisor.start("sick")
    (folder / "sick").touch()
    await wait_until(lambda: len(spawns(folder)) == 2)
    (folder / "sick").unlink()
    snap = await wait_until(lambda: supervisor.plugin("sick").state == "RUNNING" and supervisor.plugin("sick"))
    assert snap.restarts == 1 and snap.last_error == "unhealthy: probe: command exited with code 1"


async def test_a_stop_ends_the_probe_in_flight_and_no_probe_runs_after_it(
    supervisor: Supervisor, add_plugin: Callable[..., Any]
) -> None:
    # env -i: the probe's sleep does not carry the plugin's environment marker, so only the probe's own
    # cancellation (not the stop's sweep of the plugin's processes) can end it
    probe = "echo probe >> probes.log; if [ -e slow ]; then exec env -i sleep 30; fi"
    folder = await add_plugin("probed", "sleeper.py", health={"command": probe, "interval_s": 0.1, "timeout_s": 60})
    await supervisor.start("probed")
    (folder / "slow").touch()
    await wait_until(lambda: any(p.name() == "sleep" for p in plugin_processes(folder)))  # a probe in flight
    await supervisor.stop("probed")
    assert plugin_processes(folder) == []
    assert [t for t in asyncio.all_tasks() if t.get_name() == "health:probed" and not t.done()] == []
    count = (folder / "probes.log").read_text().count("probe")
    (folder / "slow").unlink()  # a probe that ran now would return at once and log a line
    await asyncio.sleep(1.0)  # an observation window of 10 intervals: no probe may run
    assert (folder / "probes.log").read_text().count("probe") == count
    assert supervisor.plugin("probed").state == "STOPPED"


async def test_an_exec_probes_output_is_bounded_and_escaped_in_its_detail(
    supervisor: Supervisor, add_plugin: Callable[..., Any]
) -> None:
    check = "import sys; sys.stdout.write('\\x1b[31mred\\x1b[0m ' + 'x' * 10_000_000)"
    await add_plugin("noisy", "sleeper.py", health={"command": ["python", "-c", check]})
    snap = await supervisor.start("noisy")
    assert snap.state == "RUNNING"
    said = snap.health_detail.split(": ", 2)[2]
    assert "\x1b" not in said and said.startswith("\\x1b[31mred\\x1b[0m xxx")
    assert len(said) < 300  # 10 MB of output, a short detail
