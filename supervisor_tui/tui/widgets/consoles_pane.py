"""``ConsolesPane``: one window of the consoles with its filter field; its title says how many matched.

``show(rows, total, query)`` reconciles the table with the view model's window and retitles the pane
("Consoles 10,000 — showing 500, / to narrow"); ``consoles_title`` is that title as a plain function.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from supervisor_tui.tui.cells import CONSOLE_COLUMNS, escape
from supervisor_tui.tui.widgets.keyed_table import Cell, KeyedTable
from supervisor_tui.tui.widgets.pane_box import PaneBox


def consoles_title(total: int, query: str, shown: int) -> str:
    """The consoles pane's title: how many consoles match the filter ``query``, and how many of them are shown."""
    title = f"Consoles {total:,}"
    if query:
        title += f" matching “{escape(query)}”"
    if total > shown:
        title += f" — showing {shown:,}, / to narrow"
    return title


class ConsolesPane(PaneBox):
    """The consoles pane."""

    def __init__(self) -> None:
        table = KeyedTable(CONSOLE_COLUMNS, id="consoles-table")
        super().__init__(
            "consoles",
            "Consoles",
            table,
            "filter consoles (name, id, host, job, state)",
        )
        self.table = table

    def show(self, rows: Mapping[str, Sequence[Cell]], total: int, query: str) -> None:
        """Show one window of consoles and retitle; call inside ``app.batch_update()``."""
        self.table.reconcile(rows, list(rows))
        self.border_title = consoles_title(total, query, len(rows))
