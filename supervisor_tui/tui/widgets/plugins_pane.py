"""``PluginsPane``: the plugins table with its filter field; its title counts the running plugins.

``show(view, now, mono, tick)`` reconciles the table with the view model's rows that pass the pane's filter and
retitles the pane ("Plugins 3/6 running — filter: th (2 shown)"); ``plugins_title`` is that title as a plain
function.
"""

from __future__ import annotations

from supervisor_tui.tui.cells import PLUGIN_TABLE_COLUMNS, escape
from supervisor_tui.tui.view_model import ViewModel
from supervisor_tui.tui.widgets.keyed_table import KeyedTable
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

    def show(self, view: ViewModel, now: float, mono: float, tick: int) -> None:
        """Show the plugins that pass the filter and retitle; call inside ``app.batch_update()``."""
        running, total = view.plugin_counts()
        rows = view.plugin_rows(now, mono, tick, self.filter_text)
        self.table.reconcile(rows, list(rows))
        self.border_title = plugins_title(running, total, self.filter_text.strip(), len(rows))
