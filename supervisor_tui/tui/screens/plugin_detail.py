"""One plugin in depth: manifest facts, endpoints and gateway URLs, state history, resource sparklines, logs.

Everything the plugin or its registration supplied is shown through ``printable`` (escapes, not control codes).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, ClassVar

from rich.console import Group
from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer, Sparkline, Static

from supervisor_tui.core.printable import printable
from supervisor_tui.plugins.model import LogEntry, MetricPoint, PluginSnapshot
from supervisor_tui.tui.app_access import SupervisorAppAccess
from supervisor_tui.tui.cells import DANGER_STYLE, DIM_STYLE, PLUGIN_STATE_STYLES, duration, size
from supervisor_tui.tui.client import ClientError
from supervisor_tui.tui.widgets.log_view import source_colour

if TYPE_CHECKING:
    pass

REFRESH_SECONDS = 1.0


class PluginDetailScreen(SupervisorAppAccess, Screen[None]):
    """Details of one plugin, refreshed every second while open."""

    BINDINGS: ClassVar = [
        Binding("escape,q", "close", "Back", id="detail.close"),
        Binding("s", "act('start')", "Start", id="start"),
        Binding("x", "act('stop')", "Stop", id="stop"),
        Binding("r", "act('restart')", "Restart", id="restart"),
        Binding("l", "logs", "Logs", id="plugin_logs"),
    ]

    DEFAULT_CSS = """
    PluginDetailScreen VerticalScroll { padding: 0 1; }
    PluginDetailScreen .section { margin-top: 1; }
    PluginDetailScreen #charts { height: auto; }
    PluginDetailScreen .chart { width: 1fr; height: auto; padding-right: 2; }
    PluginDetailScreen Sparkline { height: 3; }
    """

    def __init__(self, key: str) -> None:
        super().__init__()
        self.key = key
        self.plugin: PluginSnapshot | None = None
        self.samples: list[MetricPoint] = []
        self.log_lines: list[LogEntry] = []

    def compose(self) -> ComposeResult:
        with VerticalScroll():
            yield Static(id="title")
            yield Static(id="facts")
            yield Static(id="endpoints", classes="section")
            with Horizontal(id="charts", classes="section"):
                with Vertical(classes="chart"):
                    yield Static("CPU %", id="cpu-label")
                    yield Sparkline([], id="cpu")
                with Vertical(classes="chart"):
                    yield Static("Memory", id="mem-label")
                    yield Sparkline([], id="mem")
                with Vertical(classes="chart"):
                    yield Static("Requests/s", id="rps-label")
                    yield Sparkline([], id="rps")
            yield Static(id="health", classes="section")
            yield Static(id="history", classes="section")
            yield Static(id="logs", classes="section")
        yield Footer(compact=True)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "act" and self.sup_app.client.info.read_only:
            return False
        return True

    async def on_mount(self) -> None:
        client = self.sup_app.client
        try:
            self.samples = await client.metrics(self.key)
        except ClientError:
            self.samples = []
        await self.refresh_data()
        self.set_interval(REFRESH_SECONDS, self.refresh_data)

    async def refresh_data(self) -> None:
        app = self.sup_app
        client = app.client
        try:
            plugin = await client.plugin(self.key)
            log_lines = await client.logs(self.key, 12)
        except ClientError as exc:
            self.query_one("#title", Static).update(Text(printable(f"{self.key}: {exc.message}"), style=DANGER_STYLE))
            return
        # Set together and shown at once: a plugin here means its screen is drawn.
        self.plugin, self.log_lines = plugin, log_lines
        live = list(app.view.metrics_history.get(self.key, ()))
        if live:
            newest = self.samples[-1].ts if self.samples else 0.0
            self.samples.extend(p for p in live if p.ts > newest)
        horizon = client.now() - 300
        self.samples = [s for s in self.samples if s.ts >= horizon][-200:]
        self._show()

    def _show(self) -> None:
        p = self.plugin
        if p is None:
            return
        app = self.sup_app
        now = app.client.now()
        pending = app.view.pending_actions.get(self.key)
        state = Text(f" {p.state} ", style=PLUGIN_STATE_STYLES.get(p.state, ""))
        title = Text.assemble((printable(p.key), "bold"), printable(f"  {p.name} {p.version}  "), state)
        if pending:
            title.append(f"  {pending[0]}… {int(time.monotonic() - pending[1])}s", style="bold #ffd75f")
        if p.detail:
            title.append(printable(f"  {p.detail}"), style=DIM_STYLE)
        self.query_one("#title", Static).update(title)

        facts = Table.grid(padding=(0, 2))
        facts.add_column(style="bold", no_wrap=True)
        facts.add_column()
        facts.add_column(style="bold", no_wrap=True)
        facts.add_column()
        uptime = duration(now - p.started_at) if p.started_at and p.state == "RUNNING" else "-"
        facts.add_row("kind", p.kind, "pid", str(p.pid or "-"))
        facts.add_row("upstream", Text(printable(p.upstream or "-")), "port", str(p.port or "-"))
        facts.add_row("autostart", "yes" if p.autostart else "no", "uptime", uptime)
        facts.add_row("desired", p.desired or "-", "restarts", str(p.restarts))
        facts.add_row("timeout", f"{p.timeout:g}s" if p.timeout else "-", "max body", size(p.max_body))
        facts.add_row("manifest", Text(printable(p.manifest_path or "-")), "", "")
        if p.description:
            facts.add_row("about", Text(printable(p.description)), "", "")
        self.query_one("#facts", Static).update(facts)

        endpoints = Table(title="Endpoints", title_justify="left", box=None, header_style="bold", expand=False)
        endpoints.add_column("Method", style="bold #5fafff", no_wrap=True)
        endpoints.add_column("Path", no_wrap=True)
        endpoints.add_column("Gateway URL", style="#87d787", no_wrap=True)
        endpoints.add_column("Description", style=DIM_STYLE)
        for e in p.endpoints:
            endpoints.add_row(*(Text(printable(v)) for v in (e.method, e.path, e.gateway_url or "-", e.description)))
        if not p.endpoints:
            endpoints.add_row("-", "no endpoints declared", "", "")
        self.query_one("#endpoints", Static).update(endpoints)

        cpu = [s.cpu_percent for s in self.samples]
        mem = [s.rss / 1024**2 for s in self.samples]
        rates = [r for _, r in app.view.rate_history.get(self.key, ())]
        rps = rates or [s.requests_per_s or 0.0 for s in self.samples]
        self.query_one("#cpu", Sparkline).data = cpu or [0.0]
        self.query_one("#mem", Sparkline).data = mem or [0.0]
        self.query_one("#rps", Sparkline).data = rps or [0.0]
        span = "last 5 min" if self.samples else "no samples"
        self.query_one("#cpu-label", Static).update(
            f"[b]CPU %[/b] {cpu[-1]:.1f} (max {max(cpu):.1f}, {span})" if cpu else f"[b]CPU %[/b] - ({span})"
        )
        self.query_one("#mem-label", Static).update(
            f"[b]Memory[/b] {size(self.samples[-1].rss)} ({span})" if self.samples else f"[b]Memory[/b] - ({span})"
        )
        has_rps = bool(rates) or any(s.requests_per_s is not None for s in self.samples)
        self.query_one("#rps-label", Static).update(
            f"[b]Requests/s[/b] {rps[-1]:.1f} ({span})" if has_rps else "[b]Requests/s[/b] - (no traffic data)"
        )

        health = Table.grid(padding=(0, 2))
        health.add_column(style="bold", no_wrap=True)
        health.add_column()
        if p.healthy is None:
            verdict = Text("not probed yet", style=DIM_STYLE)
        elif p.healthy:
            verdict = Text("healthy", style="bold #5fd75f")
        else:
            verdict = Text("failing", style=DANGER_STYLE)
        health.add_row("health", verdict)
        health.add_row("detail", Text(printable(p.health_detail or "-")))
        health.add_row(
            "last error", Text(printable(p.last_error or "none"), style=DANGER_STYLE if p.last_error else DIM_STYLE)
        )
        self.query_one("#health", Static).update(health)

        history = Table(title="State history", title_justify="left", box=None, header_style="bold")
        history.add_column("When", no_wrap=True, style=DIM_STYLE)
        history.add_column("From", no_wrap=True)
        history.add_column("To", no_wrap=True)
        history.add_column("Why")
        for ts, from_state, to_state, reason in list(app.view.state_history.get(self.key, ()))[-8:]:
            history.add_row(
                f"{duration(now - ts)} ago",
                Text(from_state or "-", style=PLUGIN_STATE_STYLES.get(from_state, "")),
                Text(to_state, style=PLUGIN_STATE_STYLES.get(to_state, "")),
                Text(printable(reason)),
            )
        self.query_one("#history", Static).update(history)

        lines = [Text("Last log lines", style="bold")]
        for entry in self.log_lines:
            line = Text(time.strftime("%H:%M:%S ", time.gmtime(entry.ts)), style=DIM_STYLE)
            line.append(printable(f"{entry.stream:<10} "), style=source_colour(entry.source))
            line.append(printable(entry.message), style=DANGER_STYLE if entry.level == "error" else "")
            line.no_wrap = True
            line.overflow = "ellipsis"
            lines.append(line)
        if not self.log_lines:
            lines.append(Text("no output yet", style=DIM_STYLE))
        self.query_one("#logs", Static).update(Group(*lines))

    def action_close(self) -> None:
        self.dismiss(None)

    def action_act(self, verb: str) -> None:
        app = self.sup_app
        if verb == "stop":
            app.actions.confirm_stop(self.key)
        else:
            app.actions.run(verb, self.key)

    def action_logs(self) -> None:
        app = self.sup_app
        app.show_pane("logs")
        app.main.show_logs_of(self.key)
