"""The TUI's header says when the console store is down: a real PostgreSQL store whose server stops, then starts
again, in embedded (in-process) and attached (remote) mode."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from fixtures.api.harness import running_api
from test_tui import screen_text, until

from supervisor_tui.config import Settings
from supervisor_tui.tui.app import SupervisorApp
from supervisor_tui.tui.client import SupervisorClient
from supervisor_tui.tui.client_local import InProcessClient
from supervisor_tui.tui.client_remote import RemoteClient

pytestmark = pytest.mark.usefixtures("no_plugin_leftovers")
SIZE = (120, 34)
DOWN = "console store down"


@pytest.mark.parametrize("mode", ["embedded", "attached"])
async def test_the_header_says_when_the_console_store_is_down_and_when_it_is_back(
    make_settings: Callable[..., Settings], pg_cluster: Any, mode: str
) -> None:
    settings = make_settings(**{"consoles.store": pg_cluster.new_database()})
    async with running_api(settings) as api:
        client: SupervisorClient
        if mode == "embedded":
            client = InProcessClient(api.runtime.sup, api.url)
        else:
            client = RemoteClient(api.url, api.admin_token)
        app = SupervisorApp(client, handle_signals=False)
        async with app.run_test(size=SIZE) as pilot:
            await until(pilot, lambda: "consoles" in screen_text(app).lower())
            assert DOWN not in screen_text(app)
            pg_cluster.stop()
            try:
                await until(pilot, lambda: DOWN in screen_text(app), within=30)
            finally:
                pg_cluster.start()
            # The pool and the change feed reconnect by themselves (the feed backing off): the warning goes.
            await until(pilot, lambda: DOWN not in screen_text(app), within=60)
        await client.close()
