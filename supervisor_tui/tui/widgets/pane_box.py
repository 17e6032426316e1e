"""``PaneBox``: one pane of the main screen, a bordered box holding a table or the log plus its filter field.

Each pane owns its filter: the field is hidden until ``open_filter()``; what is typed into it goes to
``set_filter`` (``filter_text`` keeps it) and a ``FilterChanged`` message tells the app to show the pane again;
``close_filter()`` empties and hides it. The panes (plugins_pane, consoles_pane, logs_pane) set their own titles
from what they show.
"""

from __future__ import annotations

from textual import on
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.message import Message
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

    class FilterChanged(Message):
        """A pane's filter changed (typed, submitted or cleared): the app shows that pane again."""

        def __init__(self, pane: PaneBox) -> None:
            super().__init__()
            self.pane = pane

    def __init__(self, name: str, title: str, body: Widget, placeholder: str) -> None:
        super().__init__(id=f"{name}-pane")
        self.pane_name = name
        self.border_title = title
        self.body = body
        self.filter_text = ""  # what the operator typed into the filter field
        self._placeholder = placeholder

    def compose(self) -> ComposeResult:
        yield self.body
        yield Input(placeholder=self._placeholder, id=f"{self.pane_name}-filter", classes="filter")

    @property
    def filter_field(self) -> Input:
        return self.query_one(f"#{self.pane_name}-filter", Input)

    def set_filter(self, text: str, submitted: bool = False) -> bool:
        """Filter by ``text`` (``submitted``: the operator pressed enter); False when the pane refuses it and keeps
        the filter it had."""
        if text != self.filter_text:
            self.filter_text = text
            self.post_message(self.FilterChanged(self))
        return True

    def open_filter(self) -> None:
        """Show the filter field and type into it."""
        field = self.filter_field
        field.add_class("-shown")
        field.focus()

    def close_filter(self) -> bool:
        """Empty and hide the filter field, and filter nothing; whether there was a filter to close."""
        field = self.filter_field
        had_filter = bool(field.value) or field.has_class("-shown")
        field.value = ""
        field.remove_class("-shown")
        self.set_filter("")
        return had_filter

    @on(Input.Changed, ".filter")
    def _filter_typed(self, event: Input.Changed) -> None:
        event.stop()
        self.set_filter(event.value)

    @on(Input.Submitted, ".filter")
    def _filter_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        if not self.set_filter(event.value, submitted=True):
            return  # the field stays open on a filter that needs fixing
        if not event.value:
            event.input.remove_class("-shown")
        self.body.focus()
