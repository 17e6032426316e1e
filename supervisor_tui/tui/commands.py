"""Command palette (ctrl+p): start/stop/restart any plugin by name, jump to a console, switch pane, follow."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING

from textual.command import DiscoveryHit, Hit, Hits, Provider

from supervisor_tui.tui.app_access import SupervisorAppAccess
from supervisor_tui.tui.cells import escape
from supervisor_tui.tui.client import ClientError

if TYPE_CHECKING:
    pass


class SupervisorCommands(SupervisorAppAccess, Provider):
    """Plugin actions, console jumps and view switches, built from what the supervisor has now."""

    def _commands(self) -> list[tuple[str, Callable[[], object], str]]:
        app = self.sup_app
        out: list[tuple[str, Callable[[], object], str]] = []
        read_only = app.client.info.read_only
        for key in app.view.plugin_order:
            p = app.view.plugins_by_key.get(key)
            if p is None:
                continue
            if not read_only:
                start = partial(app.actions.run, "start", key)
                out.append((f"start {key}", start, f"Start plugin {p.name} ({p.state})"))
                out.append(
                    (f"stop {key}", partial(app.actions.confirm_stop, key), f"Stop plugin {p.name} (asks first)")
                )
                out.append((f"restart {key}", partial(app.actions.run, "restart", key), f"Restart plugin {p.name}"))
            out.append((f"details {key}", partial(app.open_plugin, key), f"Open plugin {p.name}"))
            out.append((f"logs {key}", partial(self._logs_of, key), f"Show only the logs of {p.name}"))
        out.append(("pane: plugins", partial(app.show_pane, "plugins"), "Switch to the plugins pane"))
        out.append(("pane: consoles", partial(app.show_pane, "consoles"), "Switch to the consoles pane"))
        out.append(("pane: logs", partial(app.show_pane, "logs"), "Switch to the logs pane"))
        out.append(("logs: toggle follow", app.toggle_follow, "Pause or resume following the log"))
        out.append(("logs: all sources", partial(self._logs_of, None), "Show the logs of every source"))
        out.append(("help: keys", app.action_help, "Every key and what it does"))
        out.append(("quit", app.request_quit, "Quit supervisor-tui (asks first)"))
        return out

    def _logs_of(self, source: str | None) -> None:
        app = self.sup_app
        app.show_pane("logs")
        app.main.show_logs_of(source)

    async def discover(self) -> Hits:
        for name, run, help_text in self._commands():
            if name.startswith(("start ", "restart ", "pane:", "logs: toggle")):
                yield DiscoveryHit(name, run, help=escape(help_text))

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for name, run, help_text in self._commands():
            score = matcher.match(name)
            if score > 0:
                yield Hit(score, matcher.highlight(escape(name)), run, help=escape(help_text))
        # Consoles: ask the supervisor, so 10,000 consoles never sit in the palette.
        text = query.strip()
        for prefix in ("console ", "console:", "go "):
            if text.lower().startswith(prefix):
                text = text[len(prefix) :].strip()
        if len(text) < 2:
            return
        app = self.sup_app
        try:
            page = await app.client.consoles(q=text, limit=20)
        except ClientError:
            return
        for c in page.consoles:
            label = f"console {c.name} ({c.short_id}, {c.state})"
            yield Hit(
                max(matcher.match(label), 0.5),
                matcher.highlight(escape(label)),
                partial(app.open_console, c.id),
                help=escape(f"Open console {c.name} on {c.host or 'unknown host'}"),
            )
