"""One-shot tasks and depends_on conditions, with real processes: COMPLETED, FAILED, retries, runs again on start,
never routed, and dependents that start on each condition or refuse naming the dependency."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import open_supervisor, spawns, wait_until
from fixtures.api.harness import running_api
from inprocess_support import write_inprocess

from supervisor_tui.config import Settings
from supervisor_tui.core.events import PluginStateChanged
from supervisor_tui.core.supervisor import Supervisor
from supervisor_tui.server.routes_sync import route_for

pytestmark = pytest.mark.usefixtures("no_plugin_leftovers")

# A task that waits for the file "go" in its folder (so a test sees it RUNNING), then exits with $CODE.
TASK = """\
import os, sys, time
with open("spawns.log", "a") as f:
    f.write(f"{os.getpid()}\\n")
print("task: working", flush=True)
while os.environ.get("WAIT_FOR_GO") and not os.path.exists("go"):
    time.sleep(0.02)
sys.exit(int(os.environ.get("CODE", "0")))
"""


def task(make_plugin: Callable[..., Path], key: str, code: int = 0, wait: bool = False, **fields: Any) -> Path:
    env = {"CODE": str(code), **({"WAIT_FOR_GO": "1"} if wait else {})}
    return make_plugin(key, TASK, oneshot=True, env=env, **fields)


def transitions(events: list[object]) -> list[tuple[str, str]]:
    return [(e.key, e.to_state) for e in events if isinstance(e, PluginStateChanged)]


async def settled(sup: Supervisor, key: str, states: set[str]) -> Any:
    return await wait_until(lambda: sup.plugin(key).state in states and sup.plugin(key))


async def test_a_task_is_running_unrouted_then_completed_on_exit_0(
    settings: Settings, make_plugin: Callable[..., Path]
) -> None:
    folder = task(make_plugin, "migrate", wait=True, autostart=False, endpoints=[{"method": "GET", "path": "/x"}])
    async with open_supervisor(settings) as sup:
        with sup.bus.subscribe(["plugin.state"]) as sub:
            snap = await sup.start("migrate")
            assert snap.state == "RUNNING" and snap.port is not None
            assert snap.upstream is None and not route_for(snap).available  # a task is never routed
            (folder / "go").touch()
            done = await settled(sup, "migrate", {"COMPLETED"})
            seen = [s for k, s in transitions(sub.get_nowait()) if k == "migrate"]
    assert seen == ["STARTING", "RUNNING", "COMPLETED"]
    assert done.detail == "exited with code 0" and done.pid is None and done.port is None
    assert len(spawns(folder)) == 1


async def test_a_failing_task_is_failed_and_not_run_again(settings: Settings, make_plugin: Callable[..., Path]) -> None:
    folder = task(make_plugin, "seed", code=3, autostart=False)
    async with open_supervisor(settings) as sup:
        await sup.start("seed", wait=False)
        failed = await settled(sup, "seed", {"FAILED"})
        assert failed.detail == "exited with code 3" and failed.last_error == "exited with code 3"
        runner = sup.registry["seed"]
        await wait_until(lambda: not runner.active)  # type: ignore[attr-defined]
        assert len(spawns(folder)) == 1 and sup.plugin("seed").state == "FAILED"


async def test_restart_on_failure_retries_a_task_then_gives_up(
    settings: Settings, make_plugin: Callable[..., Path]
) -> None:
    folder = task(make_plugin, "build", code=1, autostart=False, restart="on-failure", startretries=2)
    async with open_supervisor(settings) as sup:
        await sup.start("build", wait=False)
        failed = await settled(sup, "build", {"FAILED"})
    assert len(spawns(folder)) == 3
    assert failed.detail == "exited with code 1; gave up after 3 attempts"


async def test_start_and_restart_run_a_completed_task_again(
    settings: Settings, make_plugin: Callable[..., Path]
) -> None:
    folder = task(make_plugin, "once", autostart=True)
    async with open_supervisor(settings) as sup:
        await sup.start_all()
        await settled(sup, "once", {"COMPLETED"})
        assert len(spawns(folder)) == 1
        await sup.start("once")
        await wait_until(lambda: len(spawns(folder)) == 2)
        await settled(sup, "once", {"COMPLETED"})
        await sup.restart("once")
        await wait_until(lambda: len(spawns(folder)) == 3)
        await settled(sup, "once", {"COMPLETED"})


@pytest.mark.parametrize(
    ("code", "condition", "starts"),
    [
        (0, "completed_successfully", True),
        (0, "completed", True),
        (3, "completed", True),
        (3, "completed_successfully", False),
    ],
)
async def test_a_dependent_waits_for_its_tasks_condition(
    settings: Settings, make_plugin: Callable[..., Path], code: int, condition: str, starts: bool
) -> None:
    migrate = task(make_plugin, "migrate", code=code, wait=True)
    app = make_plugin("app", "sleeper.py", depends_on=[{"key": "migrate", "condition": condition}])
    async with open_supervisor(settings) as sup:
        with sup.bus.subscribe(["plugin.state"]) as sub:
            startup = asyncio.create_task(sup.start_all())
            await settled(sup, "migrate", {"RUNNING"})
            assert sup.plugin("app").state == "STOPPED" and spawns(app) == []  # waits while the task runs
            (migrate / "go").touch()
            await startup
            seen = transitions(sub.get_nowait())
            ended = ("migrate", "COMPLETED" if code == 0 else "FAILED")
            assert ended in seen
            if starts:
                assert sup.plugin("app").state == "RUNNING"
                assert seen.index(ended) < seen.index(("app", "STARTING"))
            else:
                snap = sup.plugin("app")
                assert snap.state == "STOPPED" and spawns(app) == []
                assert snap.detail == (
                    f"not started: dependency 'migrate' is FAILED (exited with code 3): {condition} cannot be met"
                )
                assert sup.launched()
        assert len(spawns(migrate)) == 1  # the dependent did not run its task again


async def test_started_does_not_wait_for_the_dependency_to_be_ready(
    settings: Settings, make_plugin: Callable[..., Path]
) -> None:
    make_plugin("slow", "sleeper.py", startsecs=2)
    make_plugin("eager", "sleeper.py", depends_on=[{"key": "slow", "condition": "started"}])
    make_plugin("patient", "sleeper.py", depends_on=["slow"])
    async with open_supervisor(settings) as sup:
        with sup.bus.subscribe(["plugin.state"]) as sub:
            await sup.start_all()
            seen = transitions(sub.get_nowait())
    assert seen.index(("eager", "STARTING")) < seen.index(("slow", "RUNNING"))
    assert seen.index(("slow", "RUNNING")) < seen.index(("patient", "STARTING"))


async def test_a_fatal_dependency_refuses_its_dependents_naming_it(
    settings: Settings, make_plugin: Callable[..., Path]
) -> None:
    # startsecs far longer than the crash takes, even on a loaded machine: every spawn is a failed start
    make_plugin("broken", "crash_at_start.py", startretries=0, startsecs=10)
    make_plugin("needs-up", "sleeper.py", depends_on=[{"key": "broken", "condition": "started"}])
    make_plugin("needs-ready", "sleeper.py", depends_on=["broken"])
    async with open_supervisor(settings) as sup:
        await sup.start_all()
        assert sup.plugin("broken").state == "FATAL"
        # started: it did start (and then gave up), so its dependent runs
        assert sup.plugin("needs-up").state == "RUNNING"
        refused = sup.plugin("needs-ready")
        assert refused.state == "STOPPED"
        assert refused.detail.startswith("not started: dependency 'broken' is FATAL (")
        assert refused.detail.endswith("): healthy cannot be met")


async def test_a_completed_task_is_not_run_again_for_a_dependent_started_later(
    settings: Settings, make_plugin: Callable[..., Path]
) -> None:
    migrate = task(make_plugin, "migrate")
    make_plugin("late", "sleeper.py", autostart=False, depends_on=[{"key": "migrate", "condition": "completed"}])
    async with open_supervisor(settings) as sup:
        await sup.start_all()
        await settled(sup, "migrate", {"COMPLETED"})
        snap = await sup.start("late")
        assert snap.state == "RUNNING" and len(spawns(migrate)) == 1


async def test_the_api_and_metrics_show_a_task_and_an_api_start_runs_it_again(
    settings: Settings, make_plugin: Callable[..., Path]
) -> None:
    folder = task(make_plugin, "migrate", endpoints=[{"method": "GET", "path": "/x"}])
    async with running_api(settings) as api:
        await wait_until(lambda: api.runtime.sup.plugin("migrate").state == "COMPLETED")
        body = (await api.client.get("/api/v1/plugins/migrate")).json()
        assert body["state"] == "COMPLETED" and body["detail"] == "exited with code 0"
        metrics = (await api.client.get("/metrics")).text
        assert 'supervisor_plugin_state{plugin="migrate",state="COMPLETED"} 1.0' in metrics
        assert 'supervisor_plugin_state{plugin="migrate",state="FAILED"} 0.0' in metrics
        assert (await api.client.get("/api/plugins/migrate/x")).status_code == 503  # a task is never routed
        r = await api.client.post("/api/v1/plugins/migrate/start")
        assert r.status_code == 200, r.text
        await wait_until(lambda: len(spawns(folder)) == 2 and api.runtime.sup.plugin("migrate").state == "COMPLETED")


@pytest.mark.parametrize("condition", ["started", "completed"])
async def test_a_dependency_that_never_ran_refuses_started_and_completed(
    settings: Settings, make_plugin: Callable[..., Path], condition: str
) -> None:
    with socket.socket() as taken:  # another program holds the task's fixed port: it goes FATAL without running
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        migrate = task(make_plugin, "migrate", port=port)
        app = make_plugin("app", "sleeper.py", depends_on=[{"key": "migrate", "condition": condition}])
        async with open_supervisor(settings) as sup:
            await sup.start_all()
            assert sup.plugin("migrate").state == "FATAL" and spawns(migrate) == []
            snap = sup.plugin("app")
            assert snap.state == "STOPPED" and spawns(app) == []
            assert snap.detail == (
                f"not started: dependency 'migrate' is FATAL (port {port} on 127.0.0.1 is already in use by another "
                f"program): {condition} cannot be met"
            )


async def test_an_in_process_dependent_refused_says_why(settings: Settings, make_plugin: Callable[..., Path]) -> None:
    task(make_plugin, "migrate", code=2)
    source = "from supervisor_tui.plugins.inprocess import PluginInterface\nclass Plugin(PluginInterface):\n    pass\n"
    write_inprocess(
        settings.plugins_dir, "reports", source, depends_on=[{"key": "migrate", "condition": "completed_successfully"}]
    )
    async with open_supervisor(settings) as sup:
        await sup.start_all()
        snap = sup.plugin("reports")
        assert snap.kind == "inprocess" and snap.state == "STOPPED"
        assert snap.detail == (
            "not started: dependency 'migrate' is FAILED (exited with code 2): completed_successfully cannot be met"
        )
