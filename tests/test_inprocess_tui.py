"""The TUI over a real supervisor with in-process plugins: a failed one shows FATAL with its reason, and s/x act on
them like on any plugin (start = initialize, stop = shutdown), recorded as coming from the TUI."""

from __future__ import annotations

import pytest
from conftest import open_supervisor
from inprocess_support import inprocess_table
from test_tui import cell, screen_text, select_plugin, until

from supervisor_tui.config import Settings
from supervisor_tui.core.events import OperatorAction
from supervisor_tui.core.inprocess_host import InProcessHost
from supervisor_tui.tui.app import MainScreen, SupervisorApp
from supervisor_tui.tui.client_local import InProcessClient
from supervisor_tui.tui.screens.confirm import ConfirmScreen
from supervisor_tui.tui.screens.plugin_detail import PluginDetailScreen

pytestmark = pytest.mark.usefixtures("no_plugin_leftovers")


async def test_failed_and_running_in_process_plugins_in_the_plugins_pane(settings: Settings) -> None:
    settings.tables["inprocess"] = {
        "picky": inprocess_table("inprocess_support:Picky", level="medium"),
        "fine": inprocess_table("inprocess_support:Picky", level="low"),
    }
    async with open_supervisor(settings) as sup:
        host = InProcessHost(sup)
        try:
            await host.load()
            actions = sup.bus.subscribe(["operator"])
            app = SupervisorApp(InProcessClient(sup, "http://127.0.0.1:4000"), handle_signals=False)
            async with app.run_test(size=(120, 34)) as pilot:
                await select_plugin(pilot, app, "picky")
                await until(pilot, lambda: cell(app, "plugins", "picky", "state").startswith("FATAL"))
                await pilot.press("enter")
                await until(pilot, lambda: isinstance(app.screen, PluginDetailScreen))
                await until(pilot, lambda: "level must be low or high" in screen_text(app))
                await pilot.press("escape")
                await until(pilot, lambda: isinstance(app.screen, MainScreen))

                await select_plugin(pilot, app, "fine")
                await until(pilot, lambda: cell(app, "plugins", "fine", "state").startswith("RUNNING"))
                await pilot.press("x")
                await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
                await pilot.press("y")
                await until(pilot, lambda: sup.plugin("fine").state == "STOPPED")
                await until(pilot, lambda: cell(app, "plugins", "fine", "state").startswith("STOPPED"))
                await pilot.press("s")
                await until(pilot, lambda: sup.plugin("fine").state == "RUNNING")
            seen = [(e.action, e.key, e.origin, e.ok) for e in actions.get_nowait() if isinstance(e, OperatorAction)]
            assert seen == [("stop", "fine", "tui", True), ("start", "fine", "tui", True)]
        finally:
            await host.close()
