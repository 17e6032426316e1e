"""``ConsolesPane``: one window of the consoles with its filter field; its title says how many matched.

``show(view, now, inactive_after)`` reconciles the table with the view model's window and retitles the pane
("Consoles 10,000 — showing 500, / to narrow"); ``consoles_title`` is that title as a plain function. The window
is fetched for the pane's filter: ``console_query()`` is it as (state, text).
"""

from __future__ import annotations

from supervisor_tui.tui.cells import CONSOLE_COLUMNS, escape
from supervisor_tui.tui.view_model import ViewModel, parse_console_filter
from supervisor_tui.tui.widgets.keyed_table import KeyedTable
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

    def console_query(self) -> tuple[str, str]:
        """(state, text query) of the pane's filter: what the window of consoles is fetched for."""
        return parse_console_filter(self.filter_text)

    def show(self, view: ViewModel, now: float, inactive_after: float) -> None:
        """Show the view model's window of consoles and retitle; call inside ``app.batch_update()``."""
        rows = view.console_rows(now, inactive_after)
        self.table.reconcile(rows, list(rows))
        self.border_title = consoles_title(view.console_total, self.filter_text.strip(), len(rows))
