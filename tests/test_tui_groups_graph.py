"""Groups, the graph screen and the logs pane's regex filter in the real TUI (Pilot) on a real supervisor."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import open_supervisor
from test_tui import cell, screen_text, select_plugin, table_keys, until

from supervisor_tui.config import Settings
from supervisor_tui.core.supervisor import Supervisor
from supervisor_tui.tui.app import MainScreen, SupervisorApp
from supervisor_tui.tui.client_local import InProcessClient
from supervisor_tui.tui.screens.graph import GraphScreen
from supervisor_tui.tui.screens.group_action import GroupActionScreen
from supervisor_tui.tui.widgets.log_view import LogView

pytestmark = pytest.mark.usefixtures("no_plugin_leftovers")

WIDE = (160, 48)
# Prints its lines (one long enough to make a backtracking pattern run for ever), then sleeps until stopped.
TALKER = """\
import os, time
for line in os.environ["LINES_TO_SAY"].split("|"):
    print(line, flush=True)
print("a" * 5000 + "!", flush=True)
time.sleep(3600)
"""


def shop(make_plugin: Callable[..., Path]) -> None:
    make_plugin("db", "sleeper.py", group="data", autostart=False)
    make_plugin("api", "sleeper.py", group="front", depends_on=["db"], autostart=False)
    make_plugin("web", "sleeper.py", group="front", depends_on=["api"], autostart=False)
    make_plugin("tools", "sleeper.py", autostart=False)


@contextlib.asynccontextmanager
async def shop_tui(
    settings: Settings, make_plugin: Callable[..., Path]
) -> AsyncIterator[tuple[Supervisor, SupervisorApp, Any]]:
    """The shop's plugins under a real supervisor, the TUI on it (wide), once the plugins table shows them."""
    shop(make_plugin)
    async with open_supervisor(settings) as sup:
        app = app_on(sup)
        async with app.run_test(size=WIDE) as pilot:
            await until(pilot, lambda: "web" in table_keys(app, "plugins"))
            yield sup, app, pilot


def app_on(sup: Supervisor) -> SupervisorApp:
    return SupervisorApp(InProcessClient(sup, "http://127.0.0.1:4000"), handle_signals=False)


async def set_filter(pilot: Any, app: SupervisorApp, pane: str, text: str) -> None:
    """Open the pane's filter field and put ``text`` in it (what typing it ends with)."""
    app.main.show_pane(pane)
    await pilot.press("slash")
    field = app.main.pane_box(pane).filter_field
    await until(pilot, lambda: app.focused is field)
    field.value = text
    await pilot.pause()


async def test_group_column_filter_and_the_group_dialog_on_real_processes(
    settings: Settings, make_plugin: Callable[..., Path]
) -> None:
    async with shop_tui(settings, make_plugin) as (sup, app, pilot):
        assert cell(app, "plugins", "web", "group") == "front"
        assert cell(app, "plugins", "tools", "group") == "-"

        await set_filter(pilot, app, "plugins", "group:front")
        await until(pilot, lambda: table_keys(app, "plugins") == ["api", "web"])
        await pilot.press("escape")
        await until(pilot, lambda: len(table_keys(app, "plugins")) == 4)

        await select_plugin(pilot, app, "web")
        await pilot.press("G")
        await until(pilot, lambda: isinstance(app.screen, GroupActionScreen))
        assert "2 plugins: api, web" in screen_text(app)
        await pilot.press("s")
        await until(pilot, lambda: sup.plugin("web").state == "RUNNING", within=20)
        assert sup.plugin("api").state == "RUNNING" and sup.plugin("db").state == "RUNNING"
        assert sup.plugin("tools").state == "STOPPED"
        await until(pilot, lambda: cell(app, "plugins", "api", "state") == "RUNNING")

        await pilot.press("G")
        await until(pilot, lambda: isinstance(app.screen, GroupActionScreen))
        await pilot.press("escape")  # cancelled: nothing changes
        await until(pilot, lambda: isinstance(app.screen, MainScreen))
        await pilot.pause(0.3)
        assert sup.plugin("web").state == "RUNNING"

        await pilot.press("G")
        await until(pilot, lambda: isinstance(app.screen, GroupActionScreen))
        await pilot.press("x")
        await until(pilot, lambda: sup.plugin("api").state == "STOPPED", within=20)
        assert sup.plugin("web").state == "STOPPED" and sup.plugin("db").state == "RUNNING"

        await select_plugin(pilot, app, "tools")
        await pilot.press("G")
        await until(pilot, lambda: any("tools is in no group" in n.message for n in app.notices))
        assert isinstance(app.screen, MainScreen)


async def test_g_shows_the_dependency_graph_live_and_escape_returns(
    settings: Settings, make_plugin: Callable[..., Path]
) -> None:
    async with shop_tui(settings, make_plugin) as (sup, app, pilot):
        await pilot.press("g")
        await until(pilot, lambda: isinstance(app.screen, GraphScreen))
        await until(pilot, lambda: "level 0" in screen_text(app))
        lines = [line.strip() for line in screen_text(app).splitlines()]
        body = lines[lines.index("level 0 (needs nothing)") :]
        assert [line.strip() for line in body[:8]] == [
            "level 0 (needs nothing)",
            "db     STOPPED   group data",
            "tools  STOPPED",
            "level 1",
            "api    STOPPED   group front  needs db",
            "level 2",
            "web    STOPPED   group front  needs api",
            "",
        ]
        await sup.start("api")  # the screen follows the supervisor
        await until(pilot, lambda: "api    RUNNING   group front  needs db" in screen_text(app))
        await pilot.press("m")
        await until(pilot, lambda: "graph TD" in screen_text(app))
        assert '["web (STOPPED)"]' in screen_text(app)
        await pilot.press("escape")
        await until(pilot, lambda: isinstance(app.screen, MainScreen))


async def test_logs_pane_regex_filter_bad_and_slow_patterns(
    settings: Settings, make_plugin: Callable[..., Path]
) -> None:
    said = ["order 17 paid", "order 18 failed", "cart emptied"]
    folder = make_plugin("alpha", TALKER, env={"LINES_TO_SAY": "|".join(said)})
    make_plugin("beta", TALKER, env={"LINES_TO_SAY": "order 19 paid|beta ready"})
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["command"] == ["python", "plugin.py"]
    async with open_supervisor(settings) as sup:
        await sup.start_all()
        app = app_on(sup)
        async with app.run_test(size=WIDE) as pilot:
            view = app.main.query_one(LogView)

            def shown() -> list[str]:
                return [e.message for e in view.filtered_entries()]

            await until(pilot, lambda: "beta ready" in shown() and "cart emptied" in shown())
            await set_filter(pilot, app, "logs", r"re:order \d+ (paid|failed)")
            # the two plugins' lines arrive in either order
            await until(pilot, lambda: sorted(shown()) == ["order 17 paid", "order 18 failed", "order 19 paid"])
            assert "matching /order" in str(app.main.logs_pane.border_title)

            # source:NAME and re: together
            await set_filter(pilot, app, "logs", "source:beta re:paid$")
            await until(pilot, lambda: shown() == ["order 19 paid"])

            # not a valid pattern: nothing changes; enter says why
            await set_filter(pilot, app, "logs", "source:beta re:paid$ (")
            assert shown() == ["order 19 paid"]
            assert not any(n.title == "Log filter" for n in app.notices)  # not at every key of a pattern
            await pilot.press("enter")
            await until(pilot, lambda: any(n.title == "Log filter" for n in app.notices))
            notice = next(n for n in app.notices if n.title == "Log filter")
            assert notice.severity == "error" and "not a valid regular expression" in notice.message
            assert shown() == ["order 19 paid"] and view.pattern_filter is not None
            assert view.pattern_filter.text == "paid$"

            # a pattern that backtracks without end on the long line: refused at once, the filter stays
            await set_filter(pilot, app, "logs", "re:(a|aa)+$")
            await until(pilot, lambda: sum(n.title == "Log filter" for n in app.notices) == 2)
            assert "takes too long" in app.notices[-1].message or "took longer" in app.notices[-1].message
            assert shown() == ["order 19 paid"] and view.pattern_filter.text == "paid$"

            await pilot.press("escape")
            await until(pilot, lambda: view.pattern_filter is None and "cart emptied" in shown())
