"""Headless mode as operators run it: a real `supervisor-tui --headless` process, its JSON log lines, signals."""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest
from conftest import HeadlessProcess, open_supervisor, plugin_processes, spawns, wait_until
from fixtures.plugins.hostile_output import END, SHOWN

from supervisor_tui.config import Settings

pytestmark = pytest.mark.usefixtures("no_plugin_leftovers")

Headless = Callable[..., HeadlessProcess]


async def test_json_log_lines_carry_the_contract_fields(headless: Headless, make_plugin: Callable[..., Path]) -> None:
    make_plugin("alpha", "sleeper.py")
    proc = headless()
    running = await proc.wait_state("alpha", "RUNNING")
    assert running["from"] == "STARTING" and running["reason"] and running["pid"] and running["port"]
    proc.signal(signal.SIGTERM)
    assert await proc.wait() == 0
    assert proc.records and len(proc.records) == len([line for line in proc.lines if line.strip()])
    for record in proc.records:
        assert {"ts", "level", "source", "event", "message"} <= set(record), record
    changes = proc.find(lambda r: r.get("event") == "plugin_state")
    assert changes and all({"plugin", "from", "to", "reason"} <= set(r) for r in changes)
    assert proc.find(lambda r: r.get("event") == "output" and r.get("source") == "alpha")


async def test_human_log_format_is_the_default(headless: Headless, make_plugin: Callable[..., Path]) -> None:
    make_plugin("alpha", "sleeper.py")
    proc = headless("--log-format", "human")
    await wait_until(lambda: any("alpha: STARTING -> RUNNING" in line for line in proc.lines))
    proc.signal(signal.SIGINT)
    assert await proc.wait() == 0
    assert not proc.records  # nothing parses as JSON


async def test_human_log_lines_show_plugin_control_characters_escaped(
    headless: Headless, make_plugin: Callable[..., Path]
) -> None:
    make_plugin("hostile", "hostile_output.py")
    proc = headless("--log-format", "human")

    def hostile_lines() -> list[str]:
        return [line for line in proc.lines if END in line]

    await wait_until(lambda: len(hostile_lines()) == 2)  # its stdout line and its stderr line
    assert all(SHOWN in line for line in hostile_lines()), hostile_lines()
    assert not any("\x1b" in line or "\u202e" in line for line in proc.lines)
    proc.signal(signal.SIGINT)
    assert await proc.wait() == 0


async def test_sigterm_stops_plugins_in_reverse_dependency_order_and_exits_0(
    headless: Headless, make_plugin: Callable[..., Path], settings: Settings
) -> None:
    make_plugin("base", "sleeper.py")
    make_plugin("mid", "sleeper.py", depends_on=["base"])
    make_plugin("top", "ignore_term.py", depends_on=["mid"], stopwaitsecs=0.5)
    make_plugin("forker", "grandchild.py", env={"GRANDCHILD_PIDS": "pids"}, stopwaitsecs=0.5)
    proc = headless()
    for key in ("base", "mid", "top", "forker"):
        await proc.wait_state(key, "RUNNING")
    assert plugin_processes(settings.plugins_dir)
    proc.signal(signal.SIGTERM)
    assert await proc.wait() == 0
    order = [r["plugin"] for r in proc.find(lambda r: r.get("to") == "STOPPED")]
    assert order.index("top") < order.index("mid") < order.index("base")
    assert plugin_processes(settings.plugins_dir) == []


async def test_sighup_reloads_only_what_changed(
    headless: Headless, make_plugin: Callable[..., Path], settings: Settings
) -> None:
    make_plugin("same", "sleeper.py")
    make_plugin("edited", "sleeper.py")
    removed = make_plugin("removed", "sleeper.py")
    proc = headless()
    for key in ("same", "edited", "removed"):
        await proc.wait_state(key, "RUNNING")
    same_pid = next(p for p in psutil.Process(proc.pid).children() if "same" in p.cwd()).pid
    mark = len(proc.records)
    make_plugin("edited", "sleeper.py", env={"CHANGED": "1"})
    make_plugin("added", "sleeper.py")
    (removed / "manifest.json").unlink()
    proc.signal(signal.SIGHUP)
    reload = await proc.wait_for(lambda r: r.get("event") == "reload")
    assert reload["added"] == ["added"] and reload["removed"] == ["removed"]
    assert reload["changed"] == ["edited"] and reload["unchanged"] == ["same"]
    await proc.wait_state("added", "RUNNING", after=mark)
    await proc.wait_state("edited", "RUNNING", after=mark)
    await proc.wait_state("removed", "STOPPED", after=mark)
    assert not [r for r in proc.records[mark:] if r.get("plugin") == "same" and r.get("event") == "plugin_state"]
    assert psutil.Process(same_pid).is_running()
    assert plugin_processes(removed) == []


async def test_exit_on_fatal(headless: Headless, make_plugin: Callable[..., Path], settings: Settings) -> None:
    make_plugin("fine", "sleeper.py")
    make_plugin("doomed", "crash_at_start.py", startretries=1)
    proc = headless("--exit-on-fatal")
    assert await proc.wait() == 3
    assert proc.find(lambda r: r.get("to") == "FATAL" and r.get("plugin") == "doomed")
    assert plugin_processes(settings.plugins_dir) == []


async def test_second_instance_on_the_same_data_dir_refuses(
    headless: Headless, make_plugin: Callable[..., Path]
) -> None:
    make_plugin("alpha", "sleeper.py")
    first = headless()
    await first.wait_state("alpha", "RUNNING")
    second = headless()
    assert await second.wait() == 1
    assert "already running on data dir" in second.stderr and "Traceback" not in second.stderr
    assert second.stderr.count("\n") == 1
    assert first.proc.poll() is None


async def test_orphans_of_a_killed_supervisor_are_cleaned_up_on_next_start(
    headless: Headless, make_plugin: Callable[..., Path], settings: Settings
) -> None:
    make_plugin("plain", "sleeper.py")
    forker = make_plugin("forker", "grandchild.py", env={"GRANDCHILD_PIDS": "pids"})
    proc = headless()
    await proc.wait_state("plain", "RUNNING")
    await proc.wait_state("forker", "RUNNING")
    await wait_until((forker / "pids").exists)
    before = plugin_processes(settings.plugins_dir)
    assert len(before) == 4  # plain, forker and its two grandchildren
    os.kill(proc.pid, signal.SIGKILL)
    await proc.wait()
    assert all(p.is_running() for p in before)  # orphans, for now
    async with open_supervisor(settings) as sup:
        assert plugin_processes(settings.plugins_dir) == []
        assert any(r.fields.get("event") == "orphans_killed" for r in sup.logs.tail("supervisor", 50))
        await sup.start_all()
        assert {p.state for p in sup.plugins()} == {"RUNNING"}
    assert len(spawns(forker)) == 2


def test_bad_config_exits_2_with_one_line(tmp_path: Path) -> None:
    env = {**os.environ, "SUPERVISOR_TUI_PLUGINS_PORT_RANGE_START": "eighty"}
    result = subprocess.run(
        [sys.executable, "-m", "supervisor_tui", "--headless", "--data-dir", str(tmp_path / "d")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "plugins.port_range_start" in lines[0] and "eighty" in lines[0]
    assert not (tmp_path / "d").exists()


async def test_sigterm_during_startup_still_stops_everything(
    headless: Headless, make_plugin: Callable[..., Path], settings: Settings
) -> None:
    make_plugin("base", "http_server.py", env={"HEALTH_DELAY": "3600"}, health={"path": "/health"})
    make_plugin("waiting", "sleeper.py", depends_on=["base"])
    proc = headless()
    await proc.wait_for(lambda r: r.get("event") == "plugin_spawned" and r.get("plugin") == "base")
    proc.signal(signal.SIGTERM)
    assert await proc.wait() == 0
    assert not proc.find(lambda r: r.get("plugin") == "waiting" and r.get("to") == "STARTING")
    assert plugin_processes(settings.plugins_dir) == []


def test_unusable_database_is_one_line_and_exit_1(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "supervisor.db").write_bytes(b"this is not a database, " * 100)
    result = subprocess.run(
        [sys.executable, "-m", "supervisor_tui", "--headless", "--port", "0", "--data-dir", str(data)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "not a database" in result.stderr


async def test_what_is_alive_once_started_is_kept_out_of_the_collectors_full_passes(tmp_path: Path) -> None:
    # Every console's entry in memory would otherwise be scanned by each full collection (120-200 ms over
    # 100,000 consoles, every request stalled meanwhile).
    from supervisor_tui.config import load_settings
    from supervisor_tui.core.supervisor import Supervisor
    from supervisor_tui.headless import serve

    (tmp_path / "plugins").mkdir()
    settings = load_settings(
        env={},
        overrides={"data.dir": str(tmp_path / "data"), "plugins.dir": str(tmp_path / "plugins"), "server.port": 0},
        base_dir=tmp_path,
    )
    frozen: list[int] = []

    async def probe(sup: Supervisor) -> None:
        frozen.append(gc.get_freeze_count())
        os.kill(os.getpid(), signal.SIGTERM)  # serve's own handler: a clean stop

    gc.unfreeze()  # what an earlier test's TUI may have frozen in this process
    try:
        assert await serve(settings, services=[probe]) == 0
    finally:
        gc.unfreeze()  # the rest of the test session collects as before
    assert frozen and frozen[0] > 1000, frozen
