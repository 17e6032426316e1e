"""The TUI through Pilot against the deterministic demo supervisor: every binding, filters, pause, palette, quit."""

from __future__ import annotations

import html
import re
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from conftest import wait_until
from textual.command import CommandList, CommandPalette
from textual.widgets import Input

from supervisor_tui.plugins.model import LogEntry
from supervisor_tui.tui.app import CONSOLE_ROWS, MainScreen, SupervisorApp
from supervisor_tui.tui.client import ConnectionChange
from supervisor_tui.tui.demo import DemoClient
from supervisor_tui.tui.screens.confirm import ConfirmScreen
from supervisor_tui.tui.screens.console_detail import ConsoleDetailScreen
from supervisor_tui.tui.screens.help import HelpScreen
from supervisor_tui.tui.screens.plugin_detail import PluginDetailScreen
from supervisor_tui.tui.widgets.keyed_table import KeyedTable
from supervisor_tui.tui.widgets.log_view import LogView

NARROW = (80, 24)
WIDE = (160, 48)


async def until(pilot: Any, predicate: Callable[[], Any], within: float = 10.0) -> None:
    """Let the app run until ``predicate()`` (sync or async) holds (fails the test at the deadline)."""
    await wait_until(predicate, within, 0.02, pause=pilot.pause)


def demo_state(client: DemoClient, key: str, state: str) -> Callable[[], Awaitable[bool]]:
    """A predicate: the demo supervisor has ``key`` in ``state`` (asked through the client interface)."""

    async def check() -> bool:
        return (await client.plugin(key)).state == state

    return check


async def open_palette(pilot: Any, app: SupervisorApp) -> None:
    """ctrl+p, then wait until the palette's search field takes the typing."""
    await pilot.press("ctrl+p")
    await until(pilot, lambda: isinstance(app.screen, CommandPalette) and isinstance(app.focused, Input))


async def palette_search(pilot: Any, app: SupervisorApp, query: str, first_hit: str) -> None:
    """Type ``query`` into the palette and wait until its first hit (highlighted) reads ``first_hit``."""
    await pilot.press(*query)

    def shows_hit() -> bool:
        hits = app.screen.query_one(CommandList)
        if app.screen.query_one(Input).value != query or not hits.option_count or hits.highlighted != 0:
            return False
        prompt = hits.get_option_at_index(0).prompt
        return first_hit in str(getattr(prompt, "plain", prompt))

    await until(pilot, shows_hit)


# One <text> element of a screenshot: its column (x, and textLength over its characters), its row, its characters.
SVG_TEXT = re.compile(
    r'<text class="[^"]*" x="([\d.]+)" y="[^"]*" textLength="([\d.]+)"'
    r' clip-path="url\(#[^"]*-line-(\d+)\)">(.*?)</text>'
)


def screen_text(app: SupervisorApp) -> str:
    """What the terminal shows, one line per row, read from the screenshot Textual exports (its public API)."""
    width, height = app.size
    rows = [[" "] * width for _ in range(height)]
    for x, length, row, escaped in SVG_TEXT.findall(app.export_screenshot()):
        text = html.unescape(escaped).replace("\xa0", " ")  # the SVG writes every space as &#160;
        column = round(float(x) / (float(length) / len(text)))
        line = rows[int(row)]
        line[column : column + len(text)] = text
    return "\n".join("".join(line) for line in rows)


def scrolled_back(app: SupervisorApp) -> bool:
    """The logs pane says the operator scrolled back (it no longer follows the tail)."""
    return "scrolled back" in str(app.main.logs_pane.border_subtitle)


def table(app: SupervisorApp, name: str) -> KeyedTable:
    return app.main.query_one(f"#{name}-table", KeyedTable)


def cell(app: SupervisorApp, name: str, row: str, column: str) -> str:
    """The text of one cell, by row key and column key (columns differ between narrow and wide layouts)."""
    return str(table(app, name).get_cell(row, column).plain)


def table_keys(app: SupervisorApp, name: str) -> list[str]:
    return [str(row.key.value) for row in table(app, name).ordered_rows]


async def select_plugin(pilot: Any, app: SupervisorApp, key: str) -> None:
    t = table(app, "plugins")
    await until(pilot, lambda: key in table_keys(app, "plugins"))
    t.move_cursor(row=t.get_row_index(key))
    await until(pilot, lambda: app.main.selected_plugin() == key)


async def test_start_stop_restart_change_plugin_state() -> None:
    client = DemoClient()
    app = SupervisorApp(client)
    async with app.run_test(size=NARROW) as pilot:
        await select_plugin(pilot, app, "search")
        await pilot.press("s")
        await until(pilot, lambda: app.view.plugins_by_key["search"].state == "RUNNING")
        await until(pilot, lambda: "RUNNING" in str(table(app, "plugins").get_row("search")))

        await pilot.press("x")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("y")
        await until(pilot, demo_state(client, "search", "STOPPED"))

        await pilot.press("r")
        await until(pilot, lambda: ("restart", "search") in client.actions)
        assert (await client.plugin("search")).state == "RUNNING"
        assert client.actions == [("start", "search"), ("stop", "search"), ("restart", "search")]


async def test_cancelling_the_stop_confirmation_leaves_the_plugin_running() -> None:
    client = DemoClient()
    app = SupervisorApp(client)
    async with app.run_test(size=NARROW) as pilot:
        await select_plugin(pilot, app, "echo")
        await pilot.press("x")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        assert "Stop plugin echo?" in screen_text(app)
        await pilot.press("escape")
        await until(pilot, lambda: isinstance(app.screen, MainScreen))
        await pilot.press("x")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("n")
        await until(pilot, lambda: isinstance(app.screen, MainScreen))
        # A restart asked for afterwards is the first action: neither answer stopped anything.
        await pilot.press("r")
        await until(pilot, lambda: client.actions == [("restart", "echo")])
        await until(pilot, demo_state(client, "echo", "RUNNING"))


async def test_long_action_shows_progress_in_the_row_and_keeps_the_ui_responsive() -> None:
    client = DemoClient(action_delay=1.0)
    app = SupervisorApp(client)
    async with app.run_test(size=NARROW) as pilot:
        await select_plugin(pilot, app, "search")
        await pilot.press("s")
        await until(pilot, lambda: "start…" in table(app, "plugins").get_row("search")[1].plain)
        # The UI still answers keys while the start waits for readiness.
        await pilot.press("2")
        await until(pilot, lambda: app.main.active_pane == "consoles")
        await pilot.press("1")
        await until(pilot, demo_state(client, "search", "RUNNING"), within=5)
        await until(pilot, lambda: table(app, "plugins").get_row("search")[1].plain == "RUNNING")


async def test_a_failed_action_shows_a_notification_with_the_reason() -> None:
    app = SupervisorApp(DemoClient())
    async with app.run_test(size=NARROW) as pilot:
        await select_plugin(pilot, app, "billing")
        await pilot.press("s")
        await until(pilot, lambda: any("exited too quickly" in n.message for n in app.notices))
        assert any(n.severity == "error" and n.title == "Action failed" for n in app.notices)


async def test_slash_filters_the_plugins_table_and_escape_clears() -> None:
    app = SupervisorApp(DemoClient())
    async with app.run_test(size=NARROW) as pilot:
        await until(pilot, lambda: len(table_keys(app, "plugins")) == 6)
        await pilot.press("slash", "t", "h")
        await until(pilot, lambda: table_keys(app, "plugins") == ["thumbnailer", "weather"])
        await pilot.press("escape")
        await until(pilot, lambda: len(table_keys(app, "plugins")) == 6)
        assert app.focused is table(app, "plugins")


async def test_slash_filters_the_consoles_table_by_state_and_text() -> None:
    app = SupervisorApp(DemoClient(consoles=60))
    async with app.run_test(size=NARROW) as pilot:
        await pilot.press("2")
        await until(pilot, lambda: len(table_keys(app, "consoles")) == 60)
        await pilot.press("slash", *"error")
        await until(pilot, lambda: 0 < len(table_keys(app, "consoles")) < 60)
        states = {table(app, "consoles").get_row(k)[2].plain for k in table_keys(app, "consoles")}
        assert states == {"error"}
        await pilot.press("escape")
        await until(pilot, lambda: len(table_keys(app, "consoles")) == 60)
        await pilot.press("slash", *"render-07")
        await until(pilot, lambda: 0 < len(table_keys(app, "consoles")) < 60)


async def test_space_pauses_the_log_and_resume_shows_what_arrived() -> None:
    client = DemoClient()
    app = SupervisorApp(client)
    async with app.run_test(size=NARROW) as pilot:
        view = app.main.query_one("#log-view", LogView)
        await pilot.press("3")
        await until(pilot, lambda: view.line_count == 15)
        await pilot.press("space")
        assert view.paused
        before = [e.message for e in view.visible_entries()]
        client.write_log("echo", "arrived while paused")
        await until(pilot, lambda: view.pending == 1)
        assert [e.message for e in view.visible_entries()] == before
        assert "PAUSED" in screen_text(app)
        await pilot.press("space")
        await until(pilot, lambda: view.visible_entries()[-1].message == "arrived while paused")
        assert "PAUSED" not in screen_text(app)


async def test_scrolling_up_in_the_log_never_jumps_back() -> None:
    app = SupervisorApp(DemoClient())
    async with app.run_test(size=NARROW) as pilot:
        view = app.main.query_one("#log-view", LogView)
        await pilot.press("3")
        with app.batch_update():
            view.append(LogEntry(float(i), "echo", "stdout", "info", f"line {i}") for i in range(200))
        await until(pilot, lambda: view.visible_entries()[-1].message == "line 199")
        await pilot.press("pageup")
        await until(pilot, lambda: scrolled_back(app))
        before = [e.message for e in view.visible_entries()]
        view.append(LogEntry(1000.0 + i, "echo", "stdout", "info", f"later {i}") for i in range(50))
        await pilot.pause()  # a barrier, not a delay: every message the append posted has been handled
        assert [e.message for e in view.visible_entries()] == before
        assert scrolled_back(app)
        await pilot.press("end")
        await until(pilot, lambda: view.visible_entries()[-1].message == "later 49")


async def test_log_memory_is_bounded_and_view_keeps_position() -> None:
    app = SupervisorApp(DemoClient())
    async with app.run_test(size=NARROW) as pilot:
        view = app.main.query_one("#log-view", LogView)
        await pilot.press("3")
        last = f"line {view.max_lines + 499}"
        view.append(LogEntry(float(i), "echo", "stdout", "info", f"line {i}") for i in range(view.max_lines + 500))
        await until(pilot, lambda: view.visible_entries()[-1].message == last)
        assert view.line_count == view.max_lines
        await pilot.press("pageup")
        await until(pilot, lambda: scrolled_back(app))
        before = [e.message for e in view.visible_entries()]
        view.append(LogEntry(1e6 + i, "echo", "stdout", "info", f"more {i}") for i in range(100))
        await pilot.pause()  # a barrier, not a delay: every message the append posted has been handled
        assert view.line_count == view.max_lines
        assert [e.message for e in view.visible_entries()] == before


async def test_l_shows_only_the_selected_plugins_logs() -> None:
    app = SupervisorApp(DemoClient())
    async with app.run_test(size=NARROW) as pilot:
        await select_plugin(pilot, app, "echo")
        await pilot.press("l")
        view = app.main.query_one("#log-view", LogView)
        await until(pilot, lambda: app.main.active_pane == "logs")
        assert view.source_filter == "echo"
        assert {e.source for e in view.visible_entries()} == {"echo"}
        await pilot.press("escape")
        await until(pilot, lambda: view.source_filter is None)


async def test_tab_and_number_keys_switch_panes_one_at_a_time_when_narrow() -> None:
    app = SupervisorApp(DemoClient())
    async with app.run_test(size=NARROW) as pilot:
        main = app.main
        assert main.has_class("-narrow")
        assert main.query_one("#plugins-pane").display and not main.query_one("#lower").display
        await pilot.press("tab")
        await until(pilot, lambda: main.active_pane == "consoles")
        assert not main.query_one("#plugins-pane").display
        await pilot.press("tab")
        await until(pilot, lambda: main.active_pane == "logs")
        assert app.focused is main.query_one("#log-view")
        await pilot.press("1")
        await until(pilot, lambda: main.active_pane == "plugins")
        await pilot.press("3")
        await until(pilot, lambda: main.active_pane == "logs")


async def test_wide_terminal_shows_every_pane() -> None:
    app = SupervisorApp(DemoClient())
    async with app.run_test(size=WIDE) as pilot:
        main = app.main
        assert main.has_class("-wide")
        panes = [main.query_one(f"#{name}-pane") for name in ("plugins", "consoles", "logs")]
        await until(pilot, lambda: all(pane.region.height > 3 for pane in panes))


async def test_enter_opens_plugin_and_console_details() -> None:
    app = SupervisorApp(DemoClient())
    async with app.run_test(size=WIDE) as pilot:
        await select_plugin(pilot, app, "echo")
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, PluginDetailScreen))
        await until(pilot, lambda: "http://127.0.0.1:4000/api/plugins/echo/echo" in screen_text(app))
        await pilot.press("escape")
        await until(pilot, lambda: isinstance(app.screen, MainScreen))
        await pilot.press("2")
        await until(pilot, lambda: len(table_keys(app, "consoles")) > 0)
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, ConsoleDetailScreen))
        await until(pilot, lambda: "Heartbeat history" in screen_text(app))
        await pilot.press("q")
        await until(pilot, lambda: isinstance(app.screen, MainScreen))


async def test_question_mark_lists_every_binding_with_remapped_keys() -> None:
    app = SupervisorApp(DemoClient(keymap={"start": "S"}))
    async with app.run_test(size=WIDE) as pilot:
        await pilot.press("question_mark")
        await until(pilot, lambda: isinstance(app.screen, HelpScreen))
        text = screen_text(app)
        for word in ("start", "stop", "restart", "details", "plugin_logs", "filter", "pause", "quit", "ctrl+p"):
            assert word in text, word
        assert "S " in text
        await pilot.press("escape")
        await until(pilot, lambda: isinstance(app.screen, MainScreen))


async def test_keys_are_remappable_through_the_keys_table() -> None:
    client = DemoClient(keymap={"start": "S", "stop": "X"})
    app = SupervisorApp(client)
    async with app.run_test(size=NARROW) as pilot:
        await select_plugin(pilot, app, "search")
        await pilot.press("s")
        await pilot.press("S")
        await until(pilot, demo_state(client, "search", "RUNNING"))
        assert client.actions == [("start", "search")]  # the "s" before it did nothing
        await pilot.press("X")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))


async def test_an_unknown_key_name_is_reported_not_fatal() -> None:
    app = SupervisorApp(DemoClient(keymap={"launch": "L"}))
    async with app.run_test(size=NARROW) as pilot:
        await until(pilot, lambda: any("launch" in str(n.message) for n in app.notices))


async def test_read_only_hides_and_refuses_actions() -> None:
    client = DemoClient(read_only=True)
    app = SupervisorApp(client)
    async with app.run_test(size=NARROW) as pilot:
        await select_plugin(pilot, app, "search")
        assert "Start" not in screen_text(app).splitlines()[-1]
        await pilot.press("s", "x", "r", "2")
        # The pane switch after them is seen: the keys before it were handled, and did nothing.
        await until(pilot, lambda: app.main.active_pane == "consoles")
        assert isinstance(app.screen, MainScreen)
        app.actions.run("start", "search")  # the palette's path: refused too
        await until(pilot, lambda: any("read-only" in n.message for n in app.notices))
        assert client.actions == []
        assert not app.view.pending_actions


async def test_command_palette_restarts_a_plugin_by_name() -> None:
    client = DemoClient()
    app = SupervisorApp(client)
    async with app.run_test(size=WIDE) as pilot:
        await open_palette(pilot, app)
        await palette_search(pilot, app, "restart thumbnailer", "restart thumbnailer")
        await pilot.press("enter")
        await until(pilot, lambda: ("restart", "thumbnailer") in client.actions)


async def test_command_palette_jumps_to_a_console() -> None:
    app = SupervisorApp(DemoClient())
    async with app.run_test(size=WIDE) as pilot:
        await open_palette(pilot, app)
        await palette_search(pilot, app, "console-012", "console console-012")
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, ConsoleDetailScreen))
        assert app.screen.console is not None and app.screen.console.name == "console-012"


@pytest.mark.parametrize(("mode", "says"), [("embedded", "will be stopped"), ("attached", "keep running")])
async def test_quit_asks_and_says_what_happens_to_plugins(mode: str, says: str) -> None:
    app = SupervisorApp(DemoClient(mode=mode))
    async with app.run_test(size=NARROW) as pilot:
        await pilot.press("q")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        assert says in screen_text(app).replace("\n", " ") or says in app.screen.message
        await pilot.press("n")
        await until(pilot, lambda: isinstance(app.screen, MainScreen))
        assert app.is_running
        await pilot.press("q")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("y")
        await until(pilot, lambda: not app.is_running)
    assert app.return_code == 0


async def test_hangup_makes_the_app_return() -> None:
    app = SupervisorApp(DemoClient())
    async with app.run_test(size=NARROW) as pilot:
        await until(pilot, lambda: app.flushes > 0)  # running: its first batch is on screen
        app.hangup("stdin closed")
        await until(pilot, lambda: not app.is_running)
    assert app.return_code == 129
    assert app.hangup_reason == "stdin closed"


async def test_ten_thousand_consoles_table_holds_one_window_and_updates_by_cell() -> None:
    client = DemoClient(consoles=10_000)
    app = SupervisorApp(client)
    async with app.run_test(size=WIDE) as pilot:
        await until(pilot, lambda: table(app, "consoles").row_count == CONSOLE_ROWS)
        assert "10,000" in str(app.main.query_one("#consoles-pane").border_title)
        t = table(app, "consoles")
        first = table_keys(app, "consoles")[0]
        client.heartbeats([0], state="error")
        await until(pilot, lambda: t.get_row(first)[3].plain == "error")
        assert table_keys(app, "consoles")[0] == first  # updated in place, not refilled
        assert t.get_row(first)[5].plain == "0s ago"


async def test_events_from_the_supervisor_update_rows_in_place() -> None:
    client = DemoClient()
    app = SupervisorApp(client)
    async with app.run_test(size=NARROW) as pilot:
        t = table(app, "plugins")
        await until(pilot, lambda: t.row_count == 6)
        t.move_cursor(row=2)
        await client.stop("echo")  # as if another operator stopped it
        await until(pilot, lambda: t.get_row("echo")[1].plain == "STOPPED")
        assert t.cursor_row == 2
        assert table_keys(app, "plugins")[0] == "echo"


async def test_filters_and_messages_with_brackets_do_not_break_the_screen() -> None:
    app = SupervisorApp(DemoClient())
    async with app.run_test(size=NARROW) as pilot:
        for pane in ("1", "2", "3"):
            await pilot.press(pane, "slash", "left_square_bracket", "slash", "right_square_bracket")
            await until(pilot, lambda: "[/]" in screen_text(app))
            await pilot.press("escape")
        app.ingest([ConnectionChange(False, "EOF [/] [b]")])
        await until(pilot, lambda: "EOF [/] [b]" in screen_text(app))
        assert app.is_running
