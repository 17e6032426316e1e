"""Supervised processes with real subprocesses: states, retries, backoff, readiness, stop escalation, orphans."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest
from conftest import plugin_processes, spawns, wait_until

from supervisor_tui.config import Settings
from supervisor_tui.core.events import PluginHealthChanged, PluginStateChanged
from supervisor_tui.core.supervisor import PluginActionError, Supervisor

pytestmark = pytest.mark.usefixtures("no_plugin_leftovers")

ENV_DUMP = """\
import json, os, sys
data = {k: os.environ.get(k) for k in ("PORT", "PLUGIN_KEY", "SUPERVISOR_URL", "EXTRA")}
data["stdin"] = sys.stdin.read()
data["sid"] = os.getsid(0) == os.getpid()
data["pgid"] = os.getpgid(0) == os.getpid()
data["cwd"] = os.getcwd()
with open("env.json.tmp", "w") as f:
    json.dump(data, f)
os.replace("env.json.tmp", "env.json")
import time
while True:
    time.sleep(3600)
"""


def states(events: list[object], key: str) -> list[str]:
    return [e.to_state for e in events if isinstance(e, PluginStateChanged) and e.key == key]


async def test_spawn_environment_session_and_stdin(supervisor: Supervisor, add_plugin: Callable[..., Any]) -> None:
    folder = await add_plugin("envy", ENV_DUMP, env={"EXTRA": "yes"})
    snap = await supervisor.start("envy")
    assert snap.state == "RUNNING" and snap.pid and snap.port
    assert snap.upstream == f"http://127.0.0.1:{snap.port}"
    data = await wait_until(lambda: (folder / "env.json").exists() and json.loads((folder / "env.json").read_text()))
    assert data["PORT"] == str(snap.port) and data["PLUGIN_KEY"] == "envy" and data["EXTRA"] == "yes"
    assert data["SUPERVISOR_URL"].startswith("http://127.0.0.1:")
    assert data["stdin"] == ""  # stdin is /dev/null
    assert data["sid"] and data["pgid"]  # own session and process group
    assert Path(data["cwd"]) == folder.resolve()


async def test_an_exit_noticed_late_because_the_loop_was_busy_is_still_a_failed_start(
    supervisor: Supervisor, add_plugin: Callable[..., Any]
) -> None:
    # The child exits long before startsecs (0.3 s) while the event loop is blocked past it: when the loop wakes,
    # the exit and the startsecs timer are due together, and the start must count as failed, not as RUNNING.
    folder = await add_plugin("crashy", "crash_at_start.py", startretries=0)

    async def block_the_loop_once_it_spawned() -> None:
        await wait_until(lambda: spawns(folder), interval=0.005)
        time.sleep(0.8)  # noqa: ASYNC251 - blocking on purpose: the whole loop, not just this task

    blocker = asyncio.create_task(block_the_loop_once_it_spawned())
    with supervisor.bus.subscribe(["plugin.state"]) as sub:
        with pytest.raises(PluginActionError, match="FATAL"):
            await supervisor.start("crashy")
        seen = states(sub.get_nowait(), "crashy")
    await blocker
    assert "RUNNING" not in seen and seen[-1] == "FATAL"
    assert len(spawns(folder)) == 1


async def test_exactly_one_plus_startretries_spawns_then_fatal(
    supervisor: Supervisor, add_plugin: Callable[..., Any]
) -> None:
    folder = await add_plugin("crashy", "crash_at_start.py", startretries=2)
    with supervisor.bus.subscribe(["plugin.state"]) as sub:
        with pytest.raises(PluginActionError, match="FATAL"):
            await supervisor.start("crashy")
        seen = states(sub.get_nowait(), "crashy")
    assert len(spawns(folder)) == 3
    assert seen == ["STARTING", "BACKOFF", "STARTING", "BACKOFF", "STARTING", "FATAL"]
    snap = supervisor.plugin("crashy")
    assert snap.state == "FATAL" and "exited with code 1" in snap.last_error and snap.pid is None
    # FATAL stays FATAL: nothing restarts it by itself, a stop does not change it, an operator start does.
    await supervisor.stop("crashy")
    assert supervisor.plugin("crashy").state == "FATAL"
    with pytest.raises(PluginActionError):
        await supervisor.start("crashy")
    assert len(spawns(folder)) == 6


async def test_crash_while_running_restarts_and_backs_off(
    supervisor: Supervisor, add_plugin: Callable[..., Any]
) -> None:
    folder = await add_plugin("flaky", "crash_after.py", env={"CRASH_AFTER": "0.6"}, backoff_max_s=0.3)
    with supervisor.bus.subscribe(["plugin.state"]) as sub:
        await supervisor.start("flaky")
        seen: list[str] = []

        async def restarted_twice() -> bool:
            seen.extend(states(sub.get_nowait(), "flaky"))
            return seen.count("EXITED") >= 2 and seen[-1] == "RUNNING"

        await wait_until(restarted_twice, timeout=30)
    # First crash: straight back to STARTING; second crash in a row: BACKOFF first.
    first = seen.index("EXITED")
    assert seen[first + 1] == "STARTING"
    second = seen.index("EXITED", first + 1)
    assert seen[second + 1] == "BACKOFF"
    assert supervisor.plugin("flaky").restarts >= 2
    assert len(spawns(folder)) >= 3


@pytest.mark.parametrize(("policy", "code"), [("never", "1"), ("on-failure", "0")])
async def test_restart_policy_leaves_it_exited(
    supervisor: Supervisor, add_plugin: Callable[..., Any], policy: str, code: str
) -> None:
    folder = await add_plugin("once", "crash_after.py", restart=policy, env={"CRASH_AFTER": "0.5", "CRASH_CODE": code})
    await supervisor.start("once")
    runner = supervisor.registry["once"]
    await wait_until(lambda: supervisor.plugin("once").state == "EXITED" and not runner.active)  # type: ignore[attr-defined]
    assert len(spawns(folder)) == 1


async def test_stop_escalates_to_sigkill_for_a_plugin_ignoring_sigterm(
    supervisor: Supervisor, add_plugin: Callable[..., Any]
) -> None:
    await add_plugin("stubborn", "ignore_term.py", stopwaitsecs=0.5)
    snap = await supervisor.start("stubborn")
    proc = psutil.Process(snap.pid)
    stopped = await supervisor.stop("stubborn")
    assert stopped.state == "STOPPED" and stopped.pid is None
    assert not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
    assert any("SIGKILL" in r.message for r in supervisor.logs.tail("supervisor", 50))


async def test_stop_kills_grandchildren_even_escaped_ones(
    supervisor: Supervisor, add_plugin: Callable[..., Any], settings: Settings
) -> None:
    folder = await add_plugin("forker", "grandchild.py", stopwaitsecs=0.5, env={"GRANDCHILD_PIDS": "pids"})
    await supervisor.start("forker")
    pids_file = folder / "pids"
    await wait_until(pids_file.exists)
    grandchildren = [psutil.Process(int(p)) for p in pids_file.read_text().split()]
    assert all(p.is_running() for p in grandchildren)
    await supervisor.stop("forker")
    assert plugin_processes(folder) == []


async def test_crash_kills_what_the_plugin_left_behind(supervisor: Supervisor, add_plugin: Callable[..., Any]) -> None:
    folder = await add_plugin("leaver", "grandchild.py", restart="never", env={"GRANDCHILD_PIDS": "pids"})
    snap = await supervisor.start("leaver")
    await wait_until((folder / "pids").exists)
    os.kill(snap.pid or 0, signal.SIGKILL)
    await wait_until(lambda: supervisor.plugin("leaver").state == "EXITED")
    await wait_until(lambda: plugin_processes(folder) == [], timeout=10)


async def test_readiness_waits_for_a_successful_health_probe(
    supervisor: Supervisor, add_plugin: Callable[..., Any]
) -> None:
    await add_plugin("slow", "http_server.py", startsecs=0.2, env={"HEALTH_DELAY": "1.5"}, health={"path": "/health"})
    with supervisor.bus.subscribe(["plugin"]) as sub:
        await supervisor.start("slow", wait=False)
        await wait_until(lambda: supervisor.plugin("slow").health_detail == "HTTP 503")
        assert supervisor.plugin("slow").state == "STARTING"  # up for startsecs, but not healthy yet
        await wait_until(lambda: supervisor.plugin("slow").state == "RUNNING")
        events = sub.get_nowait()
    snap = supervisor.plugin("slow")
    assert snap.healthy is True
    assert any(isinstance(e, PluginHealthChanged) and e.healthy for e in events)


async def test_never_healthy_counts_as_a_failed_start(supervisor: Supervisor, add_plugin: Callable[..., Any]) -> None:
    folder = await add_plugin(
        "sick",
        "http_server.py",
        startsecs=0.1,
        startretries=1,
        env={"HEALTH_DELAY": "3600"},
        health={"path": "/health", "start_timeout_s": 0.5, "timeout_s": 0.5},
    )
    with pytest.raises(PluginActionError, match="not healthy"):
        await supervisor.start("sick")
    assert supervisor.plugin("sick").state == "FATAL"
    assert len(spawns(folder)) == 2
    assert plugin_processes(folder) == []


async def test_unhealthy_while_running_is_reported_and_can_restart(
    supervisor: Supervisor, add_plugin: Callable[..., Any], tmp_path: Path
) -> None:
    fail_file = tmp_path / "fail-now"
    folder = await add_plugin(
        "wobbly",
        "http_server.py",
        env={"HEALTH_FAIL_FILE": str(fail_file)},
        health={"path": "/health", "interval_s": 0.1, "failures": 2, "restart": True},
    )
    first = await supervisor.start("wobbly")
    with supervisor.bus.subscribe(["plugin"]) as sub:
        fail_file.write_text("x")
        health = await wait_until(
            lambda: next((e for e in sub.get_nowait() if isinstance(e, PluginHealthChanged)), None), timeout=30
        )
        assert health.healthy is False and health.key == "wobbly"
        fail_file.unlink()
        await wait_until(lambda: len(spawns(folder)) == 2 and supervisor.plugin("wobbly").state == "RUNNING")
    again = supervisor.plugin("wobbly")
    assert again.pid != first.pid and again.healthy is True
    assert any("UNHEALTHY" in r.message for r in supervisor.logs.tail("supervisor", 100))


async def test_passive_health_from_the_gateway(supervisor: Supervisor, add_plugin: Callable[..., Any]) -> None:
    await add_plugin("passive", "sleeper.py")
    await supervisor.start("passive")
    with supervisor.bus.subscribe(["plugin.health"]) as sub:
        for _ in range(3):
            supervisor.report_upstream("passive", False)
        assert supervisor.plugin("passive").healthy is False
        supervisor.report_upstream("passive", True)
        assert supervisor.plugin("passive").healthy is True
        flips = [e.healthy for e in sub.get_nowait() if isinstance(e, PluginHealthChanged)]
    assert flips == [False, True]
    supervisor.report_upstream("no-such-plugin", False)  # ignored


async def test_taken_fixed_port_makes_only_that_plugin_fatal(
    supervisor: Supervisor, add_plugin: Callable[..., Any]
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        await add_plugin("fixed", "sleeper.py", port=port)
        await add_plugin("free", "sleeper.py")
        with pytest.raises(PluginActionError, match="in use"):
            await supervisor.start("fixed")
        snap = supervisor.plugin("fixed")
        assert snap.state == "FATAL" and str(port) in snap.detail
        assert (await supervisor.start("free")).state == "RUNNING"


async def test_ports_come_from_the_range_skipping_bound_ones(
    supervisor: Supervisor, add_plugin: Callable[..., Any], settings: Settings
) -> None:
    start, end = settings.port_range
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", start))
        squatter.listen()
        for key in ("p1", "p2"):
            await add_plugin(key, "sleeper.py")
        ports = [(await supervisor.start(k)).port for k in ("p1", "p2")]
    assert len(set(ports)) == 2
    assert all(p is not None and start < p <= end for p in ports)


async def test_output_is_captured_per_plugin_into_ring_and_file(
    supervisor: Supervisor, add_plugin: Callable[..., Any], settings: Settings
) -> None:
    await add_plugin(
        "talker", "import sys, time\nprint('to out')\nprint('to err', file=sys.stderr)\ntime.sleep(3600)\n"
    )
    await supervisor.start("talker")
    await wait_until(lambda: len(supervisor.logs.tail("talker", 10)) >= 2)
    records = {(r.stream, r.message) for r in supervisor.logs.tail("talker", 10)}
    assert records == {("stdout", "to out"), ("stderr", "to err")}
    text = (settings.logs_dir / "talker.log").read_text()
    assert "stdout to out" in text and "stderr to err" in text


async def test_metrics_sample_the_whole_process_tree(supervisor: Supervisor, add_plugin: Callable[..., Any]) -> None:
    folder = await add_plugin("tree", "grandchild.py", env={"GRANDCHILD_PIDS": "pids"})
    await supervisor.start("tree")
    await wait_until((folder / "pids").exists)
    samples = await wait_until(lambda: [s for s in supervisor.metrics("tree") if s.processes == 3], timeout=20)
    sample = samples[-1]
    assert sample.rss > 0 and sample.threads >= 3 and sample.fds > 0
    assert supervisor.plugin("tree").last_metrics is not None


async def test_stop_during_backoff_and_restart(supervisor: Supervisor, add_plugin: Callable[..., Any]) -> None:
    folder = await add_plugin("retry", "crash_at_start.py", startretries=50, backoff_max_s=1)
    await supervisor.start("retry", wait=False)
    await wait_until(lambda: supervisor.plugin("retry").state == "BACKOFF")
    stopped = await supervisor.stop("retry")
    assert stopped.state == "STOPPED" and stopped.desired == "stopped"
    count = len(spawns(folder))
    runner = supervisor.registry["retry"]
    assert not runner.active  # type: ignore[attr-defined]
    assert len(spawns(folder)) == count

    ok = await add_plugin("ok", "sleeper.py")
    first = await supervisor.start("ok")
    again = await supervisor.restart("ok")
    assert again.state == "RUNNING" and again.pid != first.pid and len(spawns(ok)) == 2


async def test_missing_program_goes_fatal_with_a_clear_reason(
    supervisor: Supervisor, make_plugin: Callable[..., Path]
) -> None:
    make_plugin("ghost", "sleeper.py", autostart=False, command=["./no-such-program", "--flag"], startretries=1)
    await supervisor.reload()
    with pytest.raises(PluginActionError):
        await supervisor.start("ghost")
    snap = supervisor.plugin("ghost")
    assert snap.state == "FATAL" and "./no-such-program" in snap.last_error and "No such file" in snap.last_error


async def test_crash_backoff_starts_over_after_stable_running(
    supervisor: Supervisor, add_plugin: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from supervisor_tui.plugins import process

    monkeypatch.setattr(process, "STABLE_AFTER", 0.5)  # 60 s in production; the rule, not the number, is tested
    await add_plugin("steady", "crash_after.py", env={"CRASH_AFTER": "1.2"}, backoff_max_s=0.3)
    with supervisor.bus.subscribe(["plugin.state"]) as sub:
        await supervisor.start("steady")
        seen: list[str] = []

        async def exited_three_times() -> bool:
            seen.extend(states(sub.get_nowait(), "steady"))
            return seen.count("EXITED") >= 3 and seen[-1] == "RUNNING"

        await wait_until(exited_three_times, timeout=40)
    assert "BACKOFF" not in seen  # each run was stable long enough: every crash restarts at once


def test_port_allocator_rules(settings: Settings) -> None:
    from supervisor_tui.plugins.ports import PortAllocator, PortUnavailable

    start, _ = settings.port_range
    ports = PortAllocator(start, start + 2, reserved=(start + 1,))
    ports.declare_fixed("fixed", start + 2)
    assert ports.acquire("a") == start  # the first bindable port
    with pytest.raises(PortUnavailable, match="range"):
        ports.acquire("b")  # start+1 is the API's, start+2 is promised to "fixed"
    assert ports.acquire("fixed", start + 2) == start + 2
    with pytest.raises(PortUnavailable, match="already used by plugin 'a'"):
        ports.acquire("c", start)
    ports.release("a")
    assert ports.acquire("b") == start
    assert ports.acquire("b", prefer=start) == start  # a plugin keeps its port across restarts
