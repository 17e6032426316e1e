"""One model per concept for the supervisor as a whole: every field of core/status.py's Structs (the status, the route
export, the route table, the fleet's nodes) is in /openapi.json, in the admin API's answers, and in what the attached
TUI's client returns, decoded into the same Structs with no parser in between. Against a real headless supervisor
in a fleet on a real redis-server, exporting its routes to a Caddy admin address where nothing listens."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from conftest import HeadlessProcess, wait_until
from fixtures.api.harness import bearer
from fixtures.fleet.redis_server import RedisServer, needs_redis
from fixtures.ports import free_port
from test_ctl import ctl
from test_plugin_wire import JsonServer, field_names, schema_of

from supervisor_tui.config import Settings
from supervisor_tui.core.status import (
    ConsoleStoreStatus,
    FleetStatus,
    NodeList,
    NodeStatus,
    RouteExportStatus,
    RouteList,
    RouteRow,
    StateCounts,
    SupervisorStatus,
)
from supervisor_tui.tui.client import ClientError
from supervisor_tui.tui.client_remote import RemoteClient

pytestmark = [needs_redis, pytest.mark.usefixtures("no_plugin_leftovers")]

ENDPOINTS = [{"method": "GET", "path": "/hello", "description": "says hello"}]


def answer_schema(spec: dict[str, Any], path: str) -> Any:
    return spec["paths"][path]["get"]["responses"]["200"]["content"]["application/json"]["schema"]


def plain(value: msgspec.Struct) -> Any:
    return msgspec.json.decode(msgspec.json.encode(value))


async def test_every_status_route_and_node_field_is_documented_sent_and_decoded_by_the_attached_tui(
    tmp_path: Path, headless: Callable[..., HeadlessProcess], settings: Settings, make_plugin: Callable[..., Path]
) -> None:
    make_plugin("web", "sleeper.py", endpoints=ENDPOINTS)
    nobody = free_port()  # no Caddy there: the export fails, and the status says how
    with RedisServer(tmp_path) as redis:
        config = settings.base_dir / "supervisor.toml"
        config.write_text(
            f'[routes]\nexport = "caddy"\ncaddy_admin = "http://127.0.0.1:{nobody}"\n'
            f'caddy_listen = "127.0.0.1:{free_port()}"\n'
            f'[redis]\nurl = "{redis.url}"\nheartbeat_interval = "0.3s"\n[fleet]\nnode = "node-a"\n',
            encoding="utf-8",
        )
        proc = headless("--config", str(config))
        url = str((await proc.wait_for(lambda r: r.get("event") == "api_listening"))["url"])
        await proc.wait_for(lambda r: r.get("event") == "route_export_failed")
        await proc.wait_state("web", "RUNNING")
        token = (settings.data_dir / "admin.token").read_text().strip()
        async with httpx.AsyncClient(base_url=url, headers=bearer(token), timeout=30) as http:

            async def fleet_up() -> dict[str, Any] | None:
                body: dict[str, Any] = (await http.get("/api/v1/status")).json()
                return body if body["fleet"]["redis"] == "up" and body["route_export"]["ok"] is False else None

            status = await wait_until(fleet_up, timeout=30)
            spec = (await http.get("/openapi.json")).json()
            routes = (await http.get("/api/v1/routes")).json()
            nodes = (await http.get("/api/v1/fleet/nodes")).json()

        # Documented: each answer's schema is its Struct's, field for field (nested Structs too).
        assert answer_schema(spec, "/api/v1/status") == {"$ref": "#/components/schemas/SupervisorStatus"}
        assert answer_schema(spec, "/api/v1/routes") == {"$ref": "#/components/schemas/RouteList"}
        assert answer_schema(spec, "/api/v1/fleet/nodes") == {"$ref": "#/components/schemas/NodeList"}
        assert schema_of(spec, "SupervisorStatus") == field_names(SupervisorStatus) == set(status)
        assert schema_of(spec, "RouteExportStatus") == field_names(RouteExportStatus) == set(status["route_export"])
        assert schema_of(spec, "FleetStatus") == field_names(FleetStatus) == set(status["fleet"])
        assert schema_of(spec, "StateCounts") == field_names(StateCounts) == set(status["plugins"])
        assert schema_of(spec, "ConsoleStoreStatus") == field_names(ConsoleStoreStatus) == set(status["console_store"])
        assert schema_of(spec, "RouteList") == field_names(RouteList) == set(routes)
        assert schema_of(spec, "RouteRow") == field_names(RouteRow) == set(routes["routes"][0])
        assert schema_of(spec, "NodeList") == field_names(NodeList) == set(nodes)
        assert schema_of(spec, "NodeStatus") == field_names(NodeStatus) == set(nodes["nodes"][0])
        for name in ("RouteExportOut", "NodeOut", "StatusOut", "RoutesOut"):  # the pydantic copies are gone
            assert name not in spec["components"]["schemas"]
        export = status["route_export"]
        assert (export["target"], export["ok"], export["reachable"]) == ("caddy", False, False)
        assert export["admin"] == f"http://127.0.0.1:{nobody}" and export["last_error"]
        assert routes["export"]["target"] == "caddy" and routes["routes"][0]["gateway_path"] == "/api/plugins/web/hello"
        node = nodes["nodes"][0]
        assert (node["node"], node["status"], node["this_node"]) == ("node-a", "up", True)
        assert node["plugins"] == {"RUNNING": 1}

        fleet = ctl("--url", url, "--token", token, "fleet", cwd=settings.base_dir)  # the CLI reads the same Struct
        assert fleet.returncode == 0, fleet.stderr
        row = fleet.stdout.split("\n")[1]
        assert row.split()[:3] == ["node-a", "*", "up"] and "s ago" in row and "1 RUNNING" in row

        client = RemoteClient(url, token)
        try:
            await client.connect()
            seen_export = await client.route_export()
            seen_nodes = await client.fleet_nodes()
            redis_status = await client.redis_status()
        finally:
            await client.close()
        proc.terminate()
    # Decoded into the same Structs, every field as the API sent it: nothing guessed, nothing dropped.
    assert type(seen_export) is RouteExportStatus and seen_export.problem == "caddy unreachable"
    assert set(plain(seen_export)) == set(export) and seen_export.admin == export["admin"]
    assert [type(n) for n in seen_nodes] == [NodeStatus]
    moving = ("last_seen",)
    assert {k: v for k, v in plain(seen_nodes[0]).items() if k not in moving} == {
        k: v for k, v in node.items() if k not in moving
    }
    assert redis_status == "up"


async def test_a_status_of_another_shape_is_a_clear_error_not_a_guess() -> None:
    with JsonServer(b'{"version": "1", "plugins": "many"}') as remote:
        client = RemoteClient(remote.url, "token")
        try:
            with pytest.raises(ClientError, match="does not look like a supervisor-tui API"):
                await client.connect()
            with pytest.raises(ClientError, match=r"unexpected body: Expected `object`, got `str`"):
                await client.route_export()
        finally:
            await client.close()
    # A remote's export target reaches the header as a plain word only (it is shown as markup).
    export = RouteExportStatus(target="[b]x[/b]", ok=False, reachable=True)
    assert export.problem == "route export failing"
    assert RouteExportStatus(target="caddy", ok=True).problem == "" and RouteExportStatus().problem == ""
