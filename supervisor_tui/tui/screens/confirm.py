"""A yes/no dialog for actions that stop things (stop a plugin, quit); the question is shown through printable."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Static

from supervisor_tui.core.printable import printable


class ConfirmScreen(ModalScreen[bool]):
    """Asks one question; dismisses with True (confirm) or False (cancel, esc)."""

    BINDINGS = [
        Binding("y", "confirm", "Yes", id="confirm.yes"),
        Binding("n,escape", "cancel", "No", id="confirm.no"),
        Binding("left,right,tab", "switch", show=False),
    ]

    DEFAULT_CSS = """
    ConfirmScreen {
        align: center middle;
        background: $background 60%;
    }
    ConfirmScreen > Vertical {
        width: 64;
        max-width: 95%;
        height: auto;
        border: thick $warning;
        background: $panel;
        padding: 1 2;
    }
    ConfirmScreen #title { text-style: bold; margin-bottom: 1; }
    ConfirmScreen #buttons { height: auto; margin-top: 1; align-horizontal: right; }
    ConfirmScreen Button { margin-left: 2; min-width: 14; }
    """

    def __init__(self, title: str, message: str, confirm_label: str = "Yes", cancel_label: str = "Cancel") -> None:
        super().__init__()
        self.title_text = title
        self.message = message
        self.confirm_label = confirm_label
        self.cancel_label = cancel_label

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static(printable(self.title_text), id="title", markup=False)
            yield Static(printable(self.message), id="message", markup=False)
            with Horizontal(id="buttons"):
                yield Button(f"{self.cancel_label} [n]", id="cancel")
                yield Button(f"{self.confirm_label} [y]", id="confirm", variant="error")

    def on_mount(self) -> None:
        self.query_one("#cancel", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        self.dismiss(event.button.id == "confirm")

    def action_confirm(self) -> None:
        self.dismiss(True)

    def action_cancel(self) -> None:
        self.dismiss(False)

    def action_switch(self) -> None:
        buttons = list(self.query(Button))
        focused = self.focused
        index = buttons.index(focused) if focused in buttons else 0
        buttons[(index + 1) % len(buttons)].focus()
