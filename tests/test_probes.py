"""Health probe types, readiness and liveness with real processes: tcp, exec (pass, fail, timeout), a ready line
printed late, a plugin live but not ready (leaves the route, not restarted), one ready but not live (restarted),
and no probe left running once its plugin is stopped (process-compose #488)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from conftest import plugin_processes, spawns, wait_until
from test_replicas import gateway_of

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


async def answered(client: httpx.AsyncClient, path: str, status: int) -> httpx.Response:
    """The first answer to GET ``path`` with ``status`` (the route follows the plugin's events)."""

    async def get() -> httpx.Response | None:
        resp = await client.get(path)
        return resp if resp.status_code == status else None

    response: httpx.Response = await wait_until(get)
    return response


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


async def test_a_plugin_live_but_not_ready_leaves_the_route_and_comes_back_without_a_restart(
    supervisor: Supervisor, add_plugin: Callable[..., Any], tmp_path: Any
) -> None:
    unready = tmp_path / "unready"
    folder = await add_plugin(
        "web",
        "http_server.py",
        env={"HEALTH_FAIL_FILE": str(unready)},
        endpoints=[{"method": "GET", "path": "/hello"}],
        health={"path": "/health", "interval_s": 0.1, "failures": 2},
        liveness={"type": "tcp", "interval_s": 0.1, "failures": 2},
    )
    async with gateway_of(supervisor) as client:
        await supervisor.start("web")
        assert (await client.get("/api/plugins/web/hello")).status_code == 200
        unready.touch()
        snap = await wait_until(
            lambda: supervisor.plugin("web").detail.startswith("not ready: ") and supervisor.plugin("web")
        )
        assert snap.state == "RUNNING" and snap.upstream is None and snap.healthy is False
        assert snap.detail == "not ready: probe: HTTP 500"
        resp = await answered(client, "/api/plugins/web/hello", 503)
        assert "not ready: probe: HTTP 500" in resp.text
        unready.unlink()
        snap = await wait_until(lambda: supervisor.plugin("web").upstream is not None and supervisor.plugin("web"))
        assert snap.detail.startswith("ready again: probe: HTTP 200") and snap.healthy is True
        resp = await answered(client, "/api/plugins/web/hello", 200)
        assert resp.text == "hello from web"
    snap = supervisor.plugin("web")
    assert snap.restarts == 0 and len(spawns(folder)) == 1  # live all along: never restarted


async def test_a_ready_plugin_that_stops_being_live_is_restarted(
    supervisor: Supervisor, add_plugin: Callable[..., Any]
) -> None:
    folder = await add_plugin(
        "stuck",
        "http_server.py",
        restart="never",  # a liveness restart is asked for by the probe, whatever the restart policy
        health={"path": "/health", "interval_s": 0.1},
        liveness={"command": "test ! -e stuck", "interval_s": 0.1, "failures": 2},
    )
    with supervisor.bus.subscribe(["plugin.state"]) as sub:
        snap = await supervisor.start("stuck")
        assert snap.state == "RUNNING" and snap.healthy is True
        (folder / "stuck").touch()
        await wait_until(lambda: len(spawns(folder)) == 2)
        (folder / "stuck").unlink()
        snap = await wait_until(lambda: supervisor.plugin("stuck").state == "RUNNING" and supervisor.plugin("stuck"))
        details = [(e.to_state, e.reason) for e in sub.get_nowait() if getattr(e, "key", "") == "stuck"]
    assert snap.restarts == 1 and snap.last_error == "not live: probe: command exited with code 1"
    exited = [reason for state, reason in details if state == "EXITED"]
    assert exited == ["restarted: not live (probe: command exited with code 1) (killed by SIGTERM)"]
    assert logged(supervisor, "supervisor", "stuck: not live after 2 failed probes (probe: command exited with code 1)")


async def test_a_stop_ends_the_liveness_probe_in_flight_and_no_probe_runs_after_it(
    supervisor: Supervisor, add_plugin: Callable[..., Any]
) -> None:
    # env -i: as above, only the probe's own cancellation can end the sleep
    probe = "echo l >> live.log; if [ -e slow ]; then exec env -i sleep 30; fi"
    folder = await add_plugin(
        "probed",
        "sleeper.py",
        health={"command": "echo r >> ready.log", "interval_s": 0.1},
        liveness={"command": probe, "interval_s": 0.1, "timeout_s": 60},
    )
    await supervisor.start("probed")
    (folder / "slow").touch()
    await wait_until(lambda: any(p.name() == "sleep" for p in plugin_processes(folder)))  # a liveness probe in flight
    assert {"health:probed", "liveness:probed"} <= {t.get_name() for t in asyncio.all_tasks() if not t.done()}
    await supervisor.stop("probed")
    assert plugin_processes(folder) == []
    assert [
        t for t in asyncio.all_tasks() if t.get_name() in ("health:probed", "liveness:probed") and not t.done()
    ] == []
    (folder / "slow").unlink()  # a probe that ran now would return at once and log a line
    counts = [(folder / name).read_text().count("\n") for name in ("ready.log", "live.log")]
    await asyncio.sleep(1.0)  # an observation window of 10 intervals: neither probe may run
    assert [(folder / name).read_text().count("\n") for name in ("ready.log", "live.log")] == counts
    assert supervisor.plugin("probed").state == "STOPPED"


# Accepts on $PORT and answers one line that is not HTTP, then closes.
NOT_HTTP = """\
import os, socket
server = socket.create_server(("127.0.0.1", int(os.environ["PORT"])))
while True:
    conn, _ = server.accept()
    conn.sendall(b"up\\n")
    conn.close()
"""


async def test_an_http_probe_on_a_port_that_does_not_speak_http_is_never_ready(
    supervisor: Supervisor, add_plugin: Callable[..., Any]
) -> None:
    await add_plugin("raw", NOT_HTTP, health={"path": "/health", "start_timeout_s": 0.5}, **NO_RETRY)
    with pytest.raises(PluginActionError, match="FATAL"):
        await supervisor.start("raw")
    assert "(last probe: not an HTTP answer (port " in supervisor.plugin("raw").last_error
