"""The ``G`` dialog: start, stop or restart every plugin of a group; it names the group and its members."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Static

from supervisor_tui.core.printable import printable
from supervisor_tui.tui.screens.confirm import ConfirmScreen

VERBS = ("start", "stop", "restart")


class GroupActionScreen(ModalScreen[str | None]):
    """Dismisses with the chosen verb (s, x, r or a button) or None (esc, n, Cancel)."""

    BINDINGS = [
        Binding("s", "choose('start')", "Start", id="group.start"),
        Binding("x", "choose('stop')", "Stop", id="group.stop"),
        Binding("r", "choose('restart')", "Restart", id="group.restart"),
        Binding("n,escape", "choose('')", "Cancel", id="group.cancel"),
        Binding("left,right,tab", "switch", show=False),
    ]
    # the stop dialog's look
    DEFAULT_CSS = ConfirmScreen.DEFAULT_CSS.replace("ConfirmScreen", "GroupActionScreen") + (
        "GroupActionScreen > Vertical { width: 76; }\nGroupActionScreen Button { margin-left: 1; min-width: 13; }\n"
    )
    action_switch = ConfirmScreen.action_switch

    def __init__(self, group: str, members: list[str]) -> None:
        super().__init__()
        self.group = group
        self.message = (
            f"{len(members)} plugins: {', '.join(members)}. Stop goes from the dependents down; start and "
            "restart run them in parallel, each after its dependencies."
        )

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static(printable(f"Group {self.group}"), id="title", markup=False)
            yield Static(printable(self.message), id="message", markup=False)
            with Horizontal(id="buttons"):
                yield Button("Cancel [n]", id="cancel")
                yield Button("Start [s]", id="start", variant="success")
                yield Button("Restart [r]", id="restart", variant="warning")
                yield Button("Stop [x]", id="stop", variant="error")

    def on_mount(self) -> None:
        self.query_one("#cancel", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        self.action_choose(event.button.id or "")

    def action_choose(self, verb: str) -> None:
        self.dismiss(verb if verb in VERBS else None)
