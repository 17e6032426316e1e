"""Keys that arrive together (one read from a slow terminal link) reach the widget the first of them focused.

Each test posts its keys to the app at once, as the terminal driver does with the bytes of one read, without
waiting between them the way ``pilot.press`` does; then it checks where every key went. tests/test_tui_terminal.py
sends the same through a real terminal.
"""

from __future__ import annotations

from typing import Any

from conftest import wait_until
from test_tui import NARROW, WIDE, select_plugin, table_keys, until
from textual import events
from textual.command import CommandPalette
from textual.widgets import Input

from supervisor_tui.tui.app import SupervisorApp
from supervisor_tui.tui.demo import DemoClient
from supervisor_tui.tui.key_order import KeyOrderApp
from supervisor_tui.tui.screens.confirm import ConfirmScreen
from supervisor_tui.tui.screens.main import MainScreen

KEY_NAMES = {"/": "slash", " ": "space", "-": "minus", "+": "plus", "?": "question_mark"}


def type_at_once(app: KeyOrderApp[Any], text: str, *named: str) -> None:
    """Post the keys of ``named`` (key names: "ctrl+p", "tab") then of ``text`` to the app, all before any runs."""
    for key in named:
        app.post_message(events.Key(key, None))
    for char in text:
        app.post_message(events.Key(KEY_NAMES.get(char, char), char))


def filter_value(app: SupervisorApp, pane: str) -> str:
    return app.main.pane_box(pane).filter_field.value


async def settled(pilot: Any, app: SupervisorApp) -> None:
    """Long enough for every key posted to have been handled, whichever widget it went to."""
    await pilot.pause(0.3)
    await wait_until(lambda: not app._held_keys, 5, 0.01, pause=pilot.pause)


async def test_slash_then_text_types_the_text_into_the_filter_and_starts_nothing() -> None:
    client = DemoClient()
    app = SupervisorApp(client)
    async with app.run_test(size=NARROW) as pilot:
        await select_plugin(pilot, app, "search")  # stopped: "s" on the table would start it
        type_at_once(app, "/s1")
        await until(pilot, lambda: filter_value(app, "plugins") == "s1")
        await settled(pilot, app)
        assert filter_value(app, "plugins") == "s1"
        assert isinstance(app.focused, Input) and app.focused.id == "plugins-filter"
        assert app.main.active_pane == "plugins"  # "1" was typed into the field, not taken as a pane switch
        assert client.actions == []
        assert (await client.plugin("search")).state == "STOPPED"


async def test_a_fast_filter_reads_every_key_in_order() -> None:
    app = SupervisorApp(DemoClient())
    async with app.run_test(size=NARROW) as pilot:
        await until(pilot, lambda: len(table_keys(app, "plugins")) == 6)
        type_at_once(app, "/thumb")
        await until(pilot, lambda: table_keys(app, "plugins") == ["thumbnailer"])
        await settled(pilot, app)
        assert filter_value(app, "plugins") == "thumb"


async def test_a_pane_switch_then_a_filter_lands_in_that_panes_field() -> None:
    app = SupervisorApp(DemoClient(consoles=60))
    async with app.run_test(size=NARROW) as pilot:
        await until(pilot, lambda: len(table_keys(app, "plugins")) == 6)
        type_at_once(app, "3/abc")
        await until(pilot, lambda: filter_value(app, "logs") == "abc")
        await settled(pilot, app)
        assert app.main.active_pane == "logs"
        assert filter_value(app, "logs") == "abc" and filter_value(app, "plugins") == ""


# The next two pass without KeyOrderApp too (a screen's own bindings are looked up when a key bubbles back to the
# app, on the screen on top by then); they check that holding keys back does not break dialogs and the palette.
async def test_keys_after_a_dialog_opens_answer_the_dialog() -> None:
    client = DemoClient()
    app = SupervisorApp(client)
    async with app.run_test(size=NARROW) as pilot:
        await select_plugin(pilot, app, "echo")
        type_at_once(app, "xn")  # stop? no
        await settled(pilot, app)
        assert isinstance(app.screen, MainScreen)  # "n" reached the dialog and closed it
        type_at_once(app, "xy")  # stop? yes
        await until(pilot, lambda: client.actions == [("stop", "echo")])
        await settled(pilot, app)
        assert not isinstance(app.screen, ConfirmScreen)


async def test_keys_after_the_palette_opens_are_its_search() -> None:
    client = DemoClient()
    app = SupervisorApp(client)
    async with app.run_test(size=WIDE) as pilot:
        await select_plugin(pilot, app, "search")
        type_at_once(app, "start", "ctrl+p")
        await until(pilot, lambda: isinstance(app.screen, CommandPalette))
        await until(pilot, lambda: app.screen.query_one(Input).value == "start")
        await settled(pilot, app)
        assert client.actions == []  # the "s" was search text, not the start key


async def test_keys_typed_one_by_one_still_work() -> None:
    client = DemoClient()
    app = SupervisorApp(client)
    async with app.run_test(size=NARROW) as pilot:
        await select_plugin(pilot, app, "search")
        await pilot.press("s")
        await until(pilot, lambda: client.actions == [("start", "search")])
        await pilot.press("slash", "e", "c")
        await until(pilot, lambda: table_keys(app, "plugins") == ["echo"])
        await pilot.press("escape")
        await until(pilot, lambda: len(table_keys(app, "plugins")) == 6)
        assert app.focused is app.main.plugins_pane.table
