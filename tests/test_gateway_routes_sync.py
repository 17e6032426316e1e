"""RouteSync keeps the gateway's routes in step with the supervisor's plugins and events."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import wait_until
from fixtures.gateway.harness import fixture_process, serve, served_gateway

from supervisor_tui.core.events import EventBus, EventsDropped, PluginStateChanged, PluginUnregistered
from supervisor_tui.core.supervisor import Supervisor
from supervisor_tui.server.gateway import Gateway, RouteTable
from supervisor_tui.server.routes_sync import RouteSync, route_for


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str
    description: str = ""


@dataclass(frozen=True)
class Snapshot:
    """The PluginSnapshot fields the gateway reads (docs/architecture.md)."""

    key: str
    state: str
    upstream: str | None
    endpoints: tuple[Endpoint, ...] = (Endpoint("GET", "/hello"), Endpoint("get", "/items/{item_id}"))
    kind: str = "process"
    detail: str = ""
    timeout: float = 30.0
    max_body: int = 10 * 1024**2
    replicas: tuple[Any, ...] = ()
    upstreams: tuple[tuple[str, str, bool, bool], ...] = ()


class NotFound(KeyError):
    pass


@dataclass
class PluginSource:
    """A minimal supervisor: snapshots by key and a real EventBus."""

    snapshots: dict[str, Snapshot] = field(default_factory=dict)
    bus: EventBus = field(default_factory=EventBus)

    def plugins(self) -> list[Snapshot]:
        return list(self.snapshots.values())

    def plugin(self, key: str) -> Snapshot:
        try:
            return self.snapshots[key]
        except KeyError:
            raise NotFound(key) from None

    def asgi_app(self, key: str) -> None:
        return None  # no in-process plugins here


@pytest.fixture(scope="module")
def upstream() -> Iterator[str]:
    with fixture_process("upstream.py") as (_, port):
        yield f"http://127.0.0.1:{port}"


async def wait_status(client: httpx.AsyncClient, path: str, status: int) -> httpx.Response:
    async def answered() -> httpx.Response | None:
        resp = await client.get(path)
        return resp if resp.status_code == status else None

    return await wait_until(answered, 5, 0, failure=f"{path} never answered {status}")


def test_route_for_maps_states_and_limits() -> None:
    running = route_for(Snapshot("a", "RUNNING", "http://127.0.0.1:4001", timeout=5.0, max_body=1234))
    assert running.available and running.endpoints == (("GET", "/hello"), ("GET", "/items/{item_id}"))
    assert (running.timeout, running.max_body) == (5.0, 1234)
    lost = route_for(Snapshot("b", "LOST", "http://10.0.0.2:80", kind="external", detail="no heartbeat for 60 s"))
    assert not lost.available and "LOST" in lost.unavailable_reason and "heartbeat" in lost.unavailable_reason
    assert not route_for(Snapshot("c", "BACKOFF", None)).available
    assert not route_for(Snapshot("d", "RUNNING", None)).available


async def test_routes_follow_plugin_events(upstream: str) -> None:
    sup = PluginSource({"demo": Snapshot("demo", "RUNNING", upstream)})
    table = RouteTable()
    sync = RouteSync(sup, table)
    await sync.start()
    try:
        async with served_gateway(table) as base, httpx.AsyncClient(base_url=base, timeout=10) as client:
            assert (await client.get("/api/plugins/demo/hello")).text == "hello"

            sup.snapshots["demo"] = replace(sup.snapshots["demo"], state="STOPPED", upstream=None)
            sup.bus.publish(PluginStateChanged("demo", "RUNNING", "STOPPED", "stopped by operator"))
            resp = await wait_status(client, "/api/plugins/demo/hello", 503)
            assert "STOPPED" in resp.json()["error"]["message"]

            sup.snapshots["demo"] = Snapshot("demo", "RUNNING", upstream)
            sup.snapshots["ext"] = Snapshot("ext", "RUNNING", upstream, kind="external")
            sup.bus.publish(PluginStateChanged("demo", "STARTING", "RUNNING", "healthy"))
            sup.bus.publish(PluginStateChanged("ext", "STOPPED", "RUNNING", "registered"))
            await wait_status(client, "/api/plugins/demo/hello", 200)
            await wait_status(client, "/api/plugins/ext/items/1", 200)

            sup.snapshots["ext"] = replace(sup.snapshots["ext"], state="LOST")
            sup.bus.publish(PluginStateChanged("ext", "RUNNING", "LOST", "heartbeats stopped"))
            await wait_status(client, "/api/plugins/ext/hello", 503)

            del sup.snapshots["ext"]
            sup.bus.publish(PluginUnregistered("ext", "unregistered"))
            await wait_status(client, "/api/plugins/ext/hello", 404)
    finally:
        await sync.stop()
    assert table.keys() == ["demo"]


async def test_lost_events_rebuild_everything(upstream: str) -> None:
    sup = PluginSource({"a": Snapshot("a", "RUNNING", upstream), "b": Snapshot("b", "RUNNING", upstream)})
    table = RouteTable()
    sync = RouteSync(sup, table)
    sync.rebuild_all()
    assert sorted(table.keys()) == ["a", "b"]
    del sup.snapshots["a"]
    sup.snapshots["c"] = Snapshot("c", "STARTING", None)
    sync.apply([EventsDropped(count=7)])
    assert sorted(table.keys()) == ["b", "c"]
    route = table.get("c")
    assert route is not None and not route.available


async def test_unusable_upstream_keeps_the_key_unavailable() -> None:
    sup = PluginSource({"odd": Snapshot("odd", "RUNNING", "ftp://somewhere")})
    table = RouteTable()
    RouteSync(sup, table).rebuild_all()
    route = table.get("odd")
    assert route is not None and not route.available and "ftp://" in route.unavailable_reason


async def test_routes_follow_a_real_supervisor(supervisor: Supervisor, make_plugin: Callable[..., Path]) -> None:
    """The real Supervisor: routes appear when the plugin runs, answer 503 once it is stopped, and the
    gateway's upstream failures reach its passive health."""
    make_plugin(
        "web",
        "http_server.py",
        endpoints=[{"method": "GET", "path": "/greet/{name}"}, {"method": "GET", "path": "/health"}],
        health={"path": "/health"},
    )
    await supervisor.reload()
    table = RouteTable()
    sync = RouteSync(supervisor, table)
    await sync.start()
    try:
        async with (
            served_gateway(table, supervisor.report_upstream) as base,
            httpx.AsyncClient(base_url=base, timeout=10) as client,
        ):
            await supervisor.start("web")
            resp = await wait_status(client, "/api/plugins/web/greet/ana", 200)
            assert resp.text == "hello from web"
            assert (await client.get("/api/plugins/web/other")).status_code == 404
            await supervisor.stop("web")
            resp = await wait_status(client, "/api/plugins/web/greet/ana", 503)
            assert "STOPPED" in resp.json()["error"]["message"]
    finally:
        await sync.stop()


async def test_request_counts_survive_rebuilds_of_a_key_and_go_with_it(upstream: str) -> None:
    sup = PluginSource({"demo": Snapshot("demo", "RUNNING", upstream)})
    table = RouteTable()
    sync = RouteSync(sup, table)
    sync.rebuild_all()
    gateway = Gateway(table)
    async with serve(gateway) as base, httpx.AsyncClient(base_url=base, timeout=10) as client:
        for _ in range(3):
            assert (await client.get("/api/plugins/demo/hello")).status_code == 200
        sup.snapshots["demo"] = replace(sup.snapshots["demo"], endpoints=(Endpoint("GET", "/hello"),))
        sync.rebuild("demo")
        assert table.request_counts() == {"demo": 3}
        assert gateway.stats().requests_by_plugin() == {"demo": 3}
        del sup.snapshots["demo"]
        sync.rebuild("demo")
        assert table.request_counts() == {} and gateway.stats().requests_by_plugin() == {}
