"""The ``?`` screen: every key and what it does, with the operator's remapped keys."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

from supervisor_tui.tui.keys import FIXED_KEYS, KEYS, display_key, effective_keys


class HelpScreen(ModalScreen[None]):
    """Keys grouped by what they act on; esc, q or ? closes it."""

    BINDINGS = [Binding("escape,q,question_mark", "close", "Close", id="help.close")]

    DEFAULT_CSS = """
    HelpScreen { align: center middle; background: $background 60%; }
    HelpScreen > VerticalScroll {
        width: 96; max-width: 100%; height: auto; max-height: 100%;
        border: thick $accent; background: $panel; padding: 0 1;
    }
    """

    def compose(self) -> ComposeResult:
        from supervisor_tui.tui.app import SupervisorApp

        app = self.app
        keymap = app.keymap if isinstance(app, SupervisorApp) else {}
        read_only = isinstance(app, SupervisorApp) and app.client.info.read_only
        keys = effective_keys(keymap)
        table = Table(box=None, expand=True, show_header=True, header_style="bold", pad_edge=False)
        table.add_column("Key", style="bold #ffd75f", no_wrap=True, width=16)
        table.add_column("What it does", ratio=1)
        table.add_column("Id ([keys])", style="#8a8a8a", no_wrap=True, width=13)
        groups: dict[str, list[tuple[str, str, str]]] = {}
        for spec in KEYS:
            what = spec.tooltip
            if spec.changes_state and read_only:
                what += " (disabled: read-only)"
            groups.setdefault(spec.group, []).append((display_key(keys[spec.id]), what, spec.id))
        for key, what, group in FIXED_KEYS:
            groups.setdefault(group, []).append((key, what, ""))
        for group, rows in groups.items():
            table.add_row(Text(group, style="bold underline"), "", "")
            for row in rows:
                table.add_row(*row)
        with VerticalScroll():
            yield Static(Text("supervisor-tui keys", style="bold"), id="help-title")
            yield Static(table, id="help-table")
            yield Static(
                Text(
                    'Remap keys in supervisor.toml under [keys], by id, e.g.  start = "S".  '
                    "Filters: plugins take text and group:NAME; consoles a state word (error, inactive…) and "
                    "text; logs text, source:NAME and last re:PATTERN (a regular expression).",
                    style="#8a8a8a",
                ),
                id="help-footer",
            )

    def action_close(self) -> None:
        self.dismiss(None)
