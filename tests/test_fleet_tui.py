"""The TUI on a fleet node: the Fleet screen (key 4) lists the nodes seen on a real redis-server, and the header
says when Redis is down, in embedded (in-process) and attached (remote) mode."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import make_test_settings, wait_until, write_plugin
from fixtures.api.harness import running_api
from fixtures.fleet.redis_server import RedisServer, needs_redis
from test_tui import cell, screen_text, table, table_keys, until
from textual.widgets import DataTable

from supervisor_tui.config import Settings
from supervisor_tui.tui.app import SupervisorApp
from supervisor_tui.tui.client import SupervisorClient
from supervisor_tui.tui.client_local import InProcessClient
from supervisor_tui.tui.client_remote import RemoteClient
from supervisor_tui.tui.screens.fleet import FleetScreen

pytestmark = [needs_redis, pytest.mark.usefixtures("no_plugin_leftovers")]
SIZE = (120, 34)


def fleet_rows(app: SupervisorApp) -> list[list[str]]:
    table = app.screen.query_one("#fleet-table", DataTable)
    return [[str(c) for c in table.get_row_at(i)] for i in range(table.row_count)]


@pytest.mark.parametrize("mode", ["embedded", "attached"])
async def test_fleet_screen_and_redis_down_in_the_header(
    make_settings: Callable[..., Settings], tmp_path: Path, mode: str
) -> None:
    with RedisServer(tmp_path) as server:
        settings = make_settings(**{"redis.url": server.url, "fleet.node": "node-a"})
        async with running_api(settings) as api:
            fleet = api.runtime.fleet
            assert fleet is not None
            await wait_until(lambda: fleet.link.up, timeout=20)
            # Another node's presence, as its supervisor writes it.
            other = '{"node":"node-b","advertise_url":"http://10.0.0.6:4000","version":"0.1.0",'
            other += '"started_at":1,"last_seen":1,"plugins":{"RUNNING":3},"consoles":{}}'
            server.cli("SET", "fleet:node:node-b", other)
            client: SupervisorClient
            if mode == "embedded":
                client = InProcessClient(api.runtime.sup, api.url, fleet=fleet)
            else:
                client = RemoteClient(api.url, api.admin_token)
            app = SupervisorApp(client, handle_signals=False)
            async with app.run_test(size=SIZE) as pilot:
                await pilot.press("4")
                await until(pilot, lambda: isinstance(app.screen, FleetScreen) and len(fleet_rows(app)) == 2)
                rows = fleet_rows(app)
                assert rows[0][:2] == ["node-a (this node)", "up"]
                assert rows[1][0] == "node-b" and rows[1][1] == "lost" and rows[1][4] == "3 RUNNING"
                assert "Redis up; 1 of 2 nodes up" in screen_text(app)
                await until(pilot, lambda: "node" in table(app, "plugins").column_keys)  # two nodes known

                await pilot.press("escape")
                await until(pilot, lambda: not isinstance(app.screen, FleetScreen))
                assert "Redis down" not in screen_text(app)
                server.kill()
                await until(pilot, lambda: "Redis down" in screen_text(app), within=20)
            await client.close()


async def test_fleet_screen_without_redis_says_so(make_settings: Callable[..., Settings]) -> None:
    async with running_api(make_settings()) as api:
        app = SupervisorApp(InProcessClient(api.runtime.sup, api.url), handle_signals=False)
        async with app.run_test(size=SIZE) as pilot:
            await pilot.press("4")
            await until(pilot, lambda: isinstance(app.screen, FleetScreen))
            await until(pilot, lambda: "in no fleet: set redis.url" in screen_text(app))
            assert fleet_rows(app) == []
            assert "node" not in table(app, "plugins").column_keys


async def test_enter_on_a_node_attaches_to_it_and_back(tmp_path: Path) -> None:
    with RedisServer(tmp_path) as server:
        common = {"redis.url": server.url, "auth.admin_token": "fleet-admin-token", "redis.heartbeat_interval": 0.3}
        settings_a = make_test_settings(tmp_path / "a", **common, **{"fleet.node": "node-a"})
        settings_b = make_test_settings(tmp_path / "b", **common, **{"fleet.node": "node-b"})
        write_plugin(settings_a.plugins_dir, "alpha", "sleeper.py", autostart=False)
        write_plugin(settings_b.plugins_dir, "beta", "sleeper.py", autostart=False)
        async with running_api(settings_a) as a, running_api(settings_b) as b:
            for api in (a, b):
                fleet = api.runtime.fleet
                assert fleet is not None
                await wait_until(lambda fleet=fleet: fleet.link.up, timeout=20)
            home = InProcessClient(a.runtime.sup, a.url, fleet=a.runtime.fleet, admin_token="fleet-admin-token")
            app = SupervisorApp(home, handle_signals=False)
            async with app.run_test(size=SIZE) as pilot:
                await until(pilot, lambda: "alpha" in table_keys(app, "plugins"))
                # Two nodes: the plugins table says which node serves each plugin.
                await until(pilot, lambda: table(app, "plugins").column_keys[:2] == ["key", "node"], within=20)
                assert cell(app, "plugins", "alpha", "node") == "here"
                await pilot.press("4")
                await until(pilot, lambda: isinstance(app.screen, FleetScreen) and len(fleet_rows(app)) == 2)
                assert [r[0] for r in fleet_rows(app)] == ["node-a (this node)", "node-b"]
                await pilot.press("down", "enter")
                await until(pilot, lambda: app.attached_node == "node-b" and not isinstance(app.screen, FleetScreen))
                await until(pilot, lambda: table_keys(app, "plugins") == ["beta"])
                assert app.client is not home and app.client.info.api_url == b.url
                # And back: the home node is listed first, seen from node B too.
                await pilot.press("4")
                await until(pilot, lambda: isinstance(app.screen, FleetScreen) and len(fleet_rows(app)) == 2)
                assert fleet_rows(app)[0][0] == "node-b (this node)" and "attached to node-b" in screen_text(app)
                await pilot.press("down", "enter")
                await until(pilot, lambda: app.attached_node == "" and app.client is home)
                await until(pilot, lambda: table_keys(app, "plugins") == ["alpha"])
