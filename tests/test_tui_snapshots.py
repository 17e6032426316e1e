"""Pictures of the TUI from the deterministic demo (fixed clock and data), compared with the committed SVGs.

Regenerate after an intended change: ``pytest tests/test_tui_snapshots.py --snapshot-update``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from conftest import wait_until

from supervisor_tui.tui.app import SupervisorApp
from supervisor_tui.tui.demo import DemoClient
from supervisor_tui.tui.screens.confirm import ConfirmScreen
from supervisor_tui.tui.screens.console_detail import ConsoleDetailScreen
from supervisor_tui.tui.screens.help import HelpScreen
from supervisor_tui.tui.screens.plugin_detail import PluginDetailScreen


async def settle(pilot: Any, shown: Callable[[Any], bool] = lambda screen: True) -> None:
    """Wait until the app has applied its first batch and ``shown(app.screen)`` holds, then for animations."""
    app = pilot.app
    await wait_until(lambda: app.flushes > 0 and shown(app.screen), 10, 0.02, pause=pilot.pause)
    await pilot.wait_for_scheduled_animations()


def test_main_screen_80x24(snap_compare: Any) -> None:
    assert snap_compare(SupervisorApp(DemoClient()), terminal_size=(80, 24), run_before=settle)


def test_main_screen_80x24_consoles_pane(snap_compare: Any) -> None:
    assert snap_compare(SupervisorApp(DemoClient()), terminal_size=(80, 24), press=["2"], run_before=settle)


def test_main_screen_160x48(snap_compare: Any) -> None:
    assert snap_compare(SupervisorApp(DemoClient(consoles=40)), terminal_size=(160, 48), run_before=settle)


def test_plugin_detail(snap_compare: Any) -> None:
    async def open_detail(pilot: Any) -> None:
        await settle(pilot)
        await pilot.press("enter")
        await settle(pilot, lambda screen: isinstance(screen, PluginDetailScreen) and screen.plugin is not None)

    assert snap_compare(SupervisorApp(DemoClient()), terminal_size=(120, 44), run_before=open_detail)


def test_console_detail(snap_compare: Any) -> None:
    async def open_detail(pilot: Any) -> None:
        await settle(pilot)
        await pilot.press("2", "down", "down", "down", "enter")
        await settle(pilot, lambda screen: isinstance(screen, ConsoleDetailScreen) and screen.console is not None)

    assert snap_compare(SupervisorApp(DemoClient()), terminal_size=(120, 44), run_before=open_detail)


def test_help(snap_compare: Any) -> None:
    async def open_help(pilot: Any) -> None:
        await settle(pilot)
        await pilot.press("question_mark")
        await settle(pilot, lambda screen: isinstance(screen, HelpScreen))

    assert snap_compare(SupervisorApp(DemoClient()), terminal_size=(100, 40), run_before=open_help)


def test_stop_confirmation(snap_compare: Any) -> None:
    async def ask(pilot: Any) -> None:
        await settle(pilot)
        await pilot.press("x")
        await settle(pilot, lambda screen: isinstance(screen, ConfirmScreen))

    assert snap_compare(SupervisorApp(DemoClient()), terminal_size=(80, 24), run_before=ask)
