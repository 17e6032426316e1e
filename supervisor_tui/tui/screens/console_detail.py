"""One console in depth: system info, job, last error, transitions, heartbeat history, time since last beat.

Everything the console supplied is shown through ``printable`` (escapes, not control codes).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, ClassVar

from rich.console import Group
from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer, Static

from supervisor_tui.core.printable import printable
from supervisor_tui.tui.app_access import SupervisorAppAccess
from supervisor_tui.tui.cells import CONSOLE_STATE_STYLES, DANGER_STYLE, DIM_STYLE, age, duration, seen_style
from supervisor_tui.tui.client import CONSOLE_STATES, ClientError, ConsoleInfo, HeartbeatInfo, TransitionInfo

if TYPE_CHECKING:
    pass

REFRESH_SECONDS = 1.0
HEARTBEATS_SHOWN = 120


def heartbeat_chart(beats: list[HeartbeatInfo], width: int) -> Text:
    """One cell per heartbeat (newest right), coloured by the state it reported."""
    shown = beats[-max(1, width) :]
    text = Text()
    for beat in shown:
        text.append("█", style=CONSOLE_STATE_STYLES.get(beat.state, DIM_STYLE).replace("bold ", ""))
    return text


class ConsoleDetailScreen(SupervisorAppAccess, Screen[None]):
    """Details of one console, refreshed every second while open."""

    BINDINGS: ClassVar = [Binding("escape,q", "close", "Back", id="detail.close")]

    DEFAULT_CSS = """
    ConsoleDetailScreen VerticalScroll { padding: 0 1; }
    ConsoleDetailScreen .section { margin-top: 1; }
    """

    def __init__(self, console_id: str) -> None:
        super().__init__()
        self.console_id = console_id
        self.console: ConsoleInfo | None = None
        self.beats: list[HeartbeatInfo] = []
        self.transitions: list[TransitionInfo] = []
        self._fetched = 0.0

    def compose(self) -> ComposeResult:
        with VerticalScroll():
            yield Static(id="title")
            yield Static(id="facts")
            yield Static(id="system", classes="section")
            yield Static(id="beats", classes="section")
            yield Static(id="transitions", classes="section")
        yield Footer(compact=True)

    async def on_mount(self) -> None:
        await self.refresh_data()
        self.set_interval(REFRESH_SECONDS, self.refresh_data)

    async def refresh_data(self) -> None:
        client = self.sup_app.client
        mono = time.monotonic()
        if mono - self._fetched >= 2.0 or self.console is None:
            self._fetched = mono
            try:
                console = await client.console(self.console_id)
                beats = await client.console_heartbeats(self.console_id, HEARTBEATS_SHOWN)
                transitions = await client.console_transitions(self.console_id, 30)
            except ClientError as exc:
                self.query_one("#title", Static).update(
                    Text(printable(f"{self.console_id}: {exc.message}"), style=DANGER_STYLE)
                )
                return
            # Set together and shown at once: a console here means its screen is drawn.
            self.console, self.beats, self.transitions = console, beats, transitions
        self._show()

    def _show(self) -> None:
        c = self.console
        if c is None:
            return
        app = self.sup_app
        now = app.client.now()
        inactive_after = app.client.info.inactive_after
        since = (now - c.last_seen) if c.last_seen is not None else None
        title = Text.assemble(
            (printable(c.name or c.short_id), "bold"),
            (printable(f"  {c.id}  "), DIM_STYLE),
            (printable(f" {c.state} "), CONSOLE_STATE_STYLES.get(c.state, "") + " reverse"),
        )
        self.query_one("#title", Static).update(title)

        facts = Table.grid(padding=(0, 2))
        facts.add_column(style="bold", no_wrap=True)
        facts.add_column()
        seen = Text(age(since), style=seen_style(since, c.state, inactive_after))
        if since is not None and c.state != "inactive":
            left = inactive_after - since
            seen.append(
                f"  (inactive in {duration(left)})" if left > 0 else "  (overdue)",
                style=DIM_STYLE if left > 0 else DANGER_STYLE,
            )
        facts.add_row("last heartbeat", seen)
        facts.add_row("host", Text(printable(c.host or "-")))
        job = Text(printable(c.current_job)) if c.current_job else Text("none", style=DIM_STYLE)
        facts.add_row("current job", job)
        error = printable(c.last_error or "none")
        facts.add_row("last error", Text(error, style=DANGER_STYLE if c.last_error else DIM_STYLE))
        if c.registered_at:
            facts.add_row("registered", f"{duration(now - c.registered_at)} ago")
        self.query_one("#facts", Static).update(facts)

        system = Table(title="System", title_justify="left", box=None, show_header=False)
        system.add_column(style="bold", no_wrap=True)
        system.add_column()
        for key, value in c.system.items():
            system.add_row(Text(printable(str(key))), Text(printable(str(value))))
        if not c.system:
            system.add_row("-", "not reported")
        self.query_one("#system", Static).update(system)

        width = max(10, self.size.width - 4)
        chart = heartbeat_chart(self.beats, width)
        legend = Text("  ")
        for state in CONSOLE_STATES:
            legend.append("█ ", style=CONSOLE_STATE_STYLES[state].replace("bold ", ""))
            legend.append(f"{state}  ")
        span = ""
        if self.beats:
            first = self.beats[-min(len(self.beats), width)].ts
            span = f" — last {len(self.beats[-width:])} heartbeats over {duration(now - first)}"
        self.query_one("#beats", Static).update(
            Group(
                Text("Heartbeat history" + span, style="bold"),
                chart if self.beats else Text("none yet", style=DIM_STYLE),
                legend,
            )
        )

        transitions = Table(title="Transitions", title_justify="left", box=None, header_style="bold")
        transitions.add_column("When", no_wrap=True, style=DIM_STYLE)
        transitions.add_column("From", no_wrap=True)
        transitions.add_column("To", no_wrap=True)
        transitions.add_column("Why")
        for t in self.transitions[-12:]:
            transitions.add_row(
                f"{duration(now - t.at)} ago",
                Text(t.from_state or "-", style=CONSOLE_STATE_STYLES.get(t.from_state, "")),
                Text(t.to_state, style=CONSOLE_STATE_STYLES.get(t.to_state, "")),
                Text(printable(t.reason)),
            )
        if not self.transitions:
            transitions.add_row("-", "", "", "no transitions recorded")
        self.query_one("#transitions", Static).update(transitions)

    def action_close(self) -> None:
        self.dismiss(None)
