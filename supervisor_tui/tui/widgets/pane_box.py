"""``PaneBox``: one pane of the main screen, a bordered box holding a table or the log plus its filter field.

The filter field is hidden until ``open_filter()``; ``close_filter()`` empties and hides it again. The panes
(plugins_pane, consoles_pane, logs_pane) set their own titles from what they show.
"""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widget import Widget
from textual.widgets import Input


class PaneBox(Vertical):
    """One pane: a bordered box holding a table or the log, plus its filter field."""

    DEFAULT_CSS = """
    PaneBox { border: round $panel-lighten-2; height: 1fr; }
    PaneBox:focus-within { border: round $accent; }
    PaneBox > Input.filter { display: none; height: 1; border: none; padding: 0 1; background: $boost; }
    PaneBox > Input.filter.-shown { display: block; }
    """

    def __init__(self, name: str, title: str, body: Widget, placeholder: str) -> None:
        super().__init__(id=f"{name}-pane")
        self.pane_name = name
        self.border_title = title
        self.body = body
        self._placeholder = placeholder

    def compose(self) -> ComposeResult:
        yield self.body
        yield Input(placeholder=self._placeholder, id=f"{self.pane_name}-filter", classes="filter")

    @property
    def filter_field(self) -> Input:
        return self.query_one(f"#{self.pane_name}-filter", Input)

    def open_filter(self) -> None:
        """Show the filter field and type into it."""
        field = self.filter_field
        field.add_class("-shown")
        field.focus()

    def close_filter(self) -> bool:
        """Empty and hide the filter field; whether there was a filter to close."""
        field = self.filter_field
        had_filter = bool(field.value) or field.has_class("-shown")
        field.value = ""
        field.remove_class("-shown")
        return had_filter
