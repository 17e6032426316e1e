"""Replicas behind one route, with real processes: each replica its own process group, port, PLUGIN_REPLICA and
log source; the gateway spreads requests over the RUNNING ones; killing one under a GET load costs no failed GET;
scaling up starts new ones and scaling down stops the highest ones, with everything they forked."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import psutil
import pytest
from conftest import open_supervisor, wait_until, write_plugin
from fixtures.gateway.harness import served_gateway

from supervisor_tui.config import Settings
from supervisor_tui.core.supervisor import PluginActionError, Supervisor
from supervisor_tui.server.gateway import RouteTable
from supervisor_tui.server.routes_sync import RouteSync

pytestmark = pytest.mark.usefixtures("no_plugin_leftovers")

ENDPOINTS = [{"method": "GET", "path": "/whoami"}]


def replica_plugin(make_plugin: Callable[..., Path], replicas: int, **fields: object) -> Path:
    folder = make_plugin("web", "replica_server.py", replicas=replicas, endpoints=ENDPOINTS, **fields)
    return folder


def child_pids(folder: Path) -> dict[int, tuple[int, int]]:
    """(main pid, child pid) by replica index, as the replicas wrote them."""
    out = {}
    for path in (folder / "children").glob("[0-9]*"):
        if path.name.isdigit():
            main, child = path.read_text().split()
            out[int(path.name)] = (int(main), int(child))
    return out


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@contextlib.asynccontextmanager
async def gateway_of(sup: Supervisor) -> AsyncIterator[httpx.AsyncClient]:
    """The real gateway following ``sup``'s routes; yields a client on it."""
    table = RouteTable()
    sync = RouteSync(sup, table)
    await sync.start()
    try:
        async with served_gateway(table) as base, httpx.AsyncClient(base_url=base, timeout=20) as client:
            yield client
    finally:
        await sync.stop()


def running(sup: Supervisor) -> int:
    return sum(r.state == "RUNNING" for r in sup.plugin("web").replicas)


async def test_each_replica_is_its_own_process_on_its_own_port_and_the_gateway_spreads_requests(
    supervisor: Supervisor, make_plugin: Callable[..., Path]
) -> None:
    folder = replica_plugin(make_plugin, 3, env={"CHILD_PIDS": "children"})
    await supervisor.reload()
    snap = await supervisor.start("web")
    assert snap.state == "RUNNING" and snap.detail.startswith("3/3 replicas RUNNING")
    replicas = snap.replicas
    assert [r.index for r in replicas] == [0, 1, 2] and all(r.state == "RUNNING" for r in replicas)
    assert len({r.port for r in replicas}) == 3 and len({r.pid for r in replicas}) == 3
    for r in replicas:
        assert r.pid is not None and os.getpgid(r.pid) == r.pid  # its own process group
    assert snap.to_dict()["replicas"][2]["port"] == replicas[2].port
    # Its own log source: replica N's output is under "web#N" (replica 0 keeps the key). The plugin has no
    # readiness check, so RUNNING only means up for startsecs: wait until each replica says it listens, or a
    # request to one still starting is refused and the gateway rightly retries it on the next one.
    sources = {0: "web", 1: "web#1", 2: "web#2"}
    await wait_until(
        lambda: all(
            any(f"replica {i} listening" in r.message for r in supervisor.logs.tail(source, 20))
            for i, source in sources.items()
        )
    )
    assert not any("replica 2" in r.message for r in supervisor.logs.tail("web", 50))
    async with gateway_of(supervisor) as client:
        seen = [(await client.get("/api/plugins/web/whoami")).json()["replica"] for _ in range(30)]
    assert Counter(seen) == {0: 10, 1: 10, 2: 10}
    assert await wait_until(lambda: len(child_pids(folder)) == 3)


async def test_killing_one_replica_under_a_get_load_costs_no_failed_get(
    supervisor: Supervisor, make_plugin: Callable[..., Path]
) -> None:
    replica_plugin(make_plugin, 2, restart="always")
    await supervisor.reload()
    snap = await supervisor.start("web")
    victim = snap.replicas[1]
    statuses: Counter[int] = Counter()
    spread: Counter[int] = Counter()
    async with gateway_of(supervisor) as client:
        killed = asyncio.Event()
        warmed_up = asyncio.Event()

        async def load() -> None:
            after = 0
            while after < 100:  # well past the kill, the restart and the return of the replica
                resp = await client.get("/api/plugins/web/whoami")
                statuses[resp.status_code] += 1
                if resp.status_code == 200:
                    spread[resp.json()["replica"]] += 1
                if sum(spread.values()) >= 100:
                    warmed_up.set()
                if killed.is_set():
                    after += 1

        workers = [asyncio.create_task(load()) for _ in range(6)]
        await warmed_up.wait()
        assert victim.pid is not None
        os.kill(victim.pid, signal.SIGKILL)
        killed.set()
        await asyncio.gather(*workers)
    assert set(statuses) == {200}, statuses
    assert spread[0] > 0 and spread[1] > 0
    await wait_until(lambda: running(supervisor) == 2 and supervisor.plugin("web").replicas[1].pid != victim.pid)


async def test_scale_up_then_down_stops_the_highest_replicas_and_all_they_forked(
    supervisor: Supervisor, make_plugin: Callable[..., Path]
) -> None:
    folder = replica_plugin(make_plugin, 1, env={"CHILD_PIDS": "children"})
    await supervisor.reload()
    await supervisor.start("web")
    snap = await supervisor.scale("web", 3)
    assert len(snap.replicas) == 3
    await wait_until(lambda: running(supervisor) == 3)
    assert supervisor.plugin("web").detail.startswith("3/3 replicas RUNNING")
    pids = await wait_until(lambda: (p := child_pids(folder)) and len(p) == 3 and p)
    async with gateway_of(supervisor) as client:
        seen = {(await client.get("/api/plugins/web/whoami")).json()["replica"] for _ in range(9)}
        assert seen == {0, 1, 2}
        snap = await supervisor.scale("web", 1)
        assert [r.index for r in snap.replicas] == [0] and snap.state == "RUNNING"
        for index in (1, 2):
            assert gone(pids[index][0]) and gone(pids[index][1]), f"replica {index} left processes behind"
        assert not gone(pids[0][0]) and not gone(pids[0][1])
        seen = {(await client.get("/api/plugins/web/whoami")).json()["replica"] for _ in range(6)}
        assert seen == {0}


async def test_a_count_that_cannot_run_is_refused_and_changes_nothing(make_settings: Callable[..., Settings]) -> None:
    start = random.randrange(29000, 29900, 10)
    settings = make_settings(plugins_port_range_start=start, plugins_port_range_end=start + 3)  # 4 ports
    write_plugin(settings.plugins_dir, "web", "replica_server.py", replicas=2, endpoints=ENDPOINTS)
    write_plugin(settings.plugins_dir, "fixed", "replica_server.py", port=start + 9)
    async with open_supervisor(settings) as supervisor:
        for bad in (0, 65, -1, True, "2"):
            with pytest.raises(PluginActionError, match="replicas must be an integer from 1 to 64"):
                await supervisor.scale("web", bad)  # type: ignore[arg-type]
        with pytest.raises(PluginActionError, match="5 replicas need 5 ports, the port range has 4 free for them"):
            await supervisor.scale("web", 5)
        with pytest.raises(PluginActionError, match=f"fixed port {start + 9}"):
            await supervisor.scale("fixed", 2)
        assert len(supervisor.plugin("web").replicas) == 2 and supervisor.plugin("web").state == "STOPPED"
        assert await supervisor.plugin_state.load_replicas() == {}


async def test_plus_and_minus_in_the_plugins_pane_scale_the_real_plugin(
    supervisor: Supervisor, make_plugin: Callable[..., Path]
) -> None:
    from test_tui import cell, select_plugin, table_keys, until

    from supervisor_tui.tui.app import SupervisorApp
    from supervisor_tui.tui.client_local import InProcessClient
    from supervisor_tui.tui.keys import KEYS_BY_ID

    assert KEYS_BY_ID["scale_up"].keys == "plus" and KEYS_BY_ID["scale_down"].keys == "minus"
    assert KEYS_BY_ID["scale_up"].tooltip and KEYS_BY_ID["scale_down"].tooltip
    replica_plugin(make_plugin, 1)
    await supervisor.reload()
    await supervisor.start("web")
    app = SupervisorApp(InProcessClient(supervisor, "http://127.0.0.1:4000"), handle_signals=False)
    async with app.run_test(size=(100, 30)) as pilot:
        await select_plugin(pilot, app, "web")
        await pilot.press("plus")
        await until(pilot, lambda: len(supervisor.plugin("web").replicas) == 2, within=20)
        await until(pilot, lambda: running(supervisor) == 2, within=20)
        # One sub-row per replica under the plugin's row, with the replica's own state and port.
        await until(
            pilot, lambda: "web#1" in table_keys(app, "plugins") and cell(app, "plugins", "web#1", "state") == "RUNNING"
        )
        port = supervisor.plugin("web").replicas[1].port
        assert cell(app, "plugins", "web#1", "port") == str(port)
        await pilot.press("plus")
        await until(pilot, lambda: running(supervisor) == 3, within=20)
        await pilot.press("minus")
        await until(pilot, lambda: len(supervisor.plugin("web").replicas) == 2, within=20)
        await until(pilot, lambda: "web#2" not in table_keys(app, "plugins"))
        assert supervisor.plugin("web").state == "RUNNING"
    assert await supervisor.plugin_state.load_replicas() == {"web": 2}


async def test_a_reload_with_another_manifest_count_scales_unless_the_operator_scaled(
    supervisor: Supervisor, make_plugin: Callable[..., Path]
) -> None:
    folder = replica_plugin(make_plugin, 1)
    await supervisor.reload()
    await supervisor.start("web")
    manifest = folder / "manifest.json"
    manifest.write_text(manifest.read_text().replace('"replicas": 1', '"replicas": 3'))
    await supervisor.reload()
    await wait_until(lambda: running(supervisor) == 3 and len(supervisor.plugin("web").replicas) == 3)
    await supervisor.scale("web", 2)  # the operator's count wins over the manifest's from now on
    manifest.write_text(
        manifest.read_text().replace('"replicas": 3', '"replicas": 1').replace('"startsecs": 0.3', '"startsecs": 0.2')
    )
    await supervisor.reload()
    await wait_until(lambda: running(supervisor) == 2)
    assert len(supervisor.plugin("web").replicas) == 2
