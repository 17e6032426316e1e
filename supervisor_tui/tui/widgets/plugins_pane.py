"""``PluginsPane``: the plugins table with its filter field; its title counts the running plugins.

``show(rows, running, total, needle)`` reconciles the table with the view model's rows and retitles the pane
("Plugins 3/6 running — filter: th (2 shown)"); ``plugins_title`` is that title as a plain function.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from supervisor_tui.tui.cells import PLUGIN_TABLE_COLUMNS, escape
from supervisor_tui.tui.widgets.keyed_table import Cell, KeyedTable
from supervisor_tui.tui.widgets.pane_box import PaneBox


def plugins_title(running: int, total: int, needle: str, shown: int) -> str:
    """The plugins pane's title: how many run, and the filter with how many rows it leaves."""
    title = f"Plugins {running}/{total} running"
    if needle:
        title += f" — filter: {escape(needle)} ({shown} shown)"
    return title


class PluginsPane(PaneBox):
    """The plugins pane."""

    def __init__(self) -> None:
        table = KeyedTable(PLUGIN_TABLE_COLUMNS, id="plugins-table")
        super().__init__(
            "plugins",
            "Plugins",
            table,
            "filter plugins (key, name, state, group:NAME)",
        )
        self.table = table

    def show(self, rows: Mapping[str, Sequence[Cell]], running: int, total: int, needle: str) -> None:
        """Show ``rows`` (already filtered by ``needle``) and retitle; call inside ``app.batch_update()``."""
        self.table.reconcile(rows, list(rows))
        self.border_title = plugins_title(running, total, needle, len(rows))
