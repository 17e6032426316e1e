"""The TUI's view model: what the panes show, folded from snapshots and events. No Textual in here.

``ViewModel`` holds the plugins (in the supervisor's order), their state and metric histories, request rates,
actions in progress, the window of consoles and their counts by state and when it was fetched, the connection,
the header's warnings and the log lines not shown yet (the filters belong to the panes). The app feeds it and the
panes read from it:

- ``set_plugins(snapshot)``, ``fold(events, now)``, ``fold_counts(counts, mono, wall)``, ``add_logs(lines)``,
  ``set_consoles(page, stats)``: what came from the client. ``fold`` answers the connection changes it saw, for
  the app to show; the ``dirty_*`` flags say which snapshot to fetch again.
- ``plugin_rows``, ``console_rows``, ``take_logs``, ``header_markup``, ``quit_message``: what the panes show.
- ``consoles_due``, ``set_problems``: when to fetch the consoles again, and whether the header's warnings changed.

Events come as the clients give them, the core's typed Structs (core/events.py): ``fold`` matches on their
type and reads their attributes. Every method is plain Python over those and the client's view records, so the
folding is tested without an app.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping

from msgspec.structs import replace

from supervisor_tui.core.events import (
    Event,
    EventsDropped,
    LogLine,
    MetricsSample,
    PluginStateChanged,
    RedisLinkChanged,
)
from supervisor_tui.plugins.model import TROUBLE_STATES, LogEntry, MetricPoint, PluginSnapshot, PluginState
from supervisor_tui.tui.cells import (
    CONSOLE_STATE_STYLES,
    DANGER_STYLE,
    PLUGIN_STATE_STYLES,
    WARNING_STYLE,
    console_cells,
    plugin_cells,
    replica_cells,
)
from supervisor_tui.tui.client import (
    CONSOLE_STATES,
    ConnectionChange,
    ConsoleInfo,
    ConsolePage,
)

HISTORY_SECONDS = 300.0
RATE_SECONDS = 2.0
STATE_HISTORY = 100
# States that make the header warn; the ones that keep running through a quit of the embedded TUI.
LIVE_STATES = (PluginState.RUNNING, PluginState.STARTING, PluginState.BACKOFF)
SHORT_CONSOLE_STATES = {"active": "act", "busy": "busy", "idle": "idle", "error": "err", "inactive": "inact"}

# A table row as cells.py builds it: (text, style) per column of the full set.
Row = tuple[tuple[str, str], ...]
# (when, from state, to state, why) of one plugin state change.
StateChange = tuple[float, str, str, str]


def parse_console_filter(text: str) -> tuple[str, str]:
    """The consoles filter as (state, text query): a state word (or ``state:WORD``) picks the state."""
    words = text.strip().lower().split()
    state = ""
    rest = []
    for w in words:
        if w in CONSOLE_STATES and not state:
            state = w
        elif w.startswith("state:") and w[6:] in CONSOLE_STATES:
            state = w[6:]
        else:
            rest.append(w)
    return state, " ".join(rest)


def parse_plugin_filter(text: str) -> tuple[str | None, str]:
    """The plugins filter as (group, text): a ``group:NAME`` word keeps that group's plugins only."""
    group: str | None = None
    words = []
    for w in text.strip().lower().split():
        if w.startswith("group:") and len(w) > 6:
            group = w[6:]
        else:
            words.append(w)
    return group, " ".join(words)


def plugin_matches(p: PluginSnapshot, needle: str) -> bool:
    """Whether the plugins filter (lower-cased) is in the plugin's key, name, state, kind or group."""
    group, needle = parse_plugin_filter(needle)
    if group is not None and p.group != group:
        return False
    return not needle or any(needle in s.lower() for s in (p.key, p.name, p.state, p.kind, p.group or ""))


class ViewModel:
    """Everything the main screen shows, kept between flushes."""

    def __init__(self) -> None:
        self.plugins_by_key: dict[str, PluginSnapshot] = {}
        self.plugin_order: list[str] = []
        self.state_history: dict[str, deque[StateChange]] = {}
        self.metrics_history: dict[str, deque[MetricPoint]] = {}
        self.pending_actions: dict[str, tuple[str, float]] = {}
        self.rate_history: dict[str, deque[tuple[float, float]]] = {}
        self.request_rates: dict[str, float] = {}  # the newest requests/s of each plugin (rate_history's last)
        self._last_counts: dict[str, tuple[int, float]] = {}
        self.console_stats: dict[str, int] = {}
        self.redis = "off"  # the fleet's Redis: "off", "up" or "down"
        self.fleet_size = 1  # nodes in the fleet (the plugins table shows a Node column beyond one)
        self.console_total = 0
        self.console_page: list[ConsoleInfo] = []
        self.consoles_changed = False
        self.connected = True
        self.connection_message = ""
        self.route_export_problem = ""  # RouteExportInfo.problem: "caddy unreachable" while the export fails
        self.console_store_problem = ""  # why the console store cannot be reached ("" while it is available)
        self.dirty_plugins = False
        self.dirty_consoles = True
        self.consoles_fetched = 0.0  # monotonic time of the last fetch of the consoles window (0: fetch soon)
        self._pending_logs: list[LogEntry] = []
        self._log_horizon = 0.0

    # -- plugins -----------------------------------------------------------------------------------------
    def set_plugins(self, plugins: list[PluginSnapshot]) -> None:
        """A fresh snapshot of every plugin, keeping the live metrics a snapshot does not carry."""
        by_key = {}
        for p in plugins:
            old = self.plugins_by_key.get(p.key)
            # Live metrics come by event between snapshots; keep them when the snapshot has none.
            if old is not None and p.last_metrics is None and old.last_metrics is not None and p.pid == old.pid:
                p = replace(p, last_metrics=old.last_metrics)
            by_key[p.key] = p
        self.plugins_by_key = by_key
        self.plugin_order = [p.key for p in plugins]

    def record_current_states(self, plugins: list[PluginSnapshot], now: float) -> None:
        """Start each plugin's state history with the state it is in (the first snapshot)."""
        for p in plugins:
            self._history_of(p.key).append((p.started_at or now, "", p.state, p.detail or "current state"))

    def set_plugin(self, p: PluginSnapshot) -> None:
        """One plugin as an action left it."""
        self.plugins_by_key[p.key] = p
        if p.key not in self.plugin_order:
            self.plugin_order.append(p.key)

    def begin_action(self, key: str, verb: str, mono: float) -> str | None:
        """Mark ``verb`` as running on ``key``; the label of the action already running there, if any."""
        if key in self.pending_actions:
            return self.pending_actions[key][0]
        self.pending_actions[key] = (f"{verb}…", mono)
        return None

    def end_action(self, key: str) -> None:
        self.pending_actions.pop(key, None)
        self.dirty_plugins = True

    def running_keys(self) -> list[str]:
        return [p.key for p in self.plugins_by_key.values() if p.state in LIVE_STATES]

    def plugin_counts(self) -> tuple[int, int]:
        """(running, total)."""
        running = sum(1 for p in self.plugins_by_key.values() if p.state == "RUNNING")
        return running, len(self.plugins_by_key)

    def plugin_rows(self, now: float, mono: float, tick: int, needle: str = "") -> dict[str, Row]:
        """The rows of the plugins table that pass the filter ``needle``, in the supervisor's order."""
        needle = needle.strip().lower()
        rows = {}
        for key in self.plugin_order:
            p = self.plugins_by_key[key]
            if not plugin_matches(p, needle):
                continue
            pending = self.pending_actions.get(key)
            progress = (pending[0], mono - pending[1]) if pending else None
            rows[key] = plugin_cells(p, now, progress, tick, self.request_rates.get(key))
            if len(p.replicas) > 1:  # one sub-row per replica, keyed "key#N" (keys never contain "#")
                for r in p.replicas:
                    rows[f"{key}#{r.index}"] = replica_cells(p, r, now)
        return rows

    def group_members(self, group: str) -> list[str]:
        """The keys of ``group``'s plugins, in the supervisor's order."""
        return [k for k in self.plugin_order if self.plugins_by_key[k].group == group]

    def stop_detail(self, key: str) -> str:
        """What the stop confirmation says about the plugin: " (pid 41021, RUNNING)"."""
        p = self.plugins_by_key.get(key)
        return f" (pid {p.pid}, {p.state})" if p and p.pid else (f" ({p.state})" if p else "")

    # -- events ------------------------------------------------------------------------------------------
    def fold(self, batch: list[Event], now: float) -> list[ConnectionChange]:
        """Fold a batch of events into the pending state; the connection changes in it, in order."""
        changes = []
        for ev in batch:
            match ev:
                case LogLine():
                    # Lines up to the horizon came with a snapshot (initial load, resync after a reconnect).
                    if ev.ts > self._log_horizon:
                        self._log_horizon = ev.ts
                        self._pending_logs.append(LogEntry.of(ev))
                case MetricsSample():
                    self.fold_metrics(ev)
                case PluginStateChanged():
                    self.dirty_plugins = True
                    self._history_of(ev.key).append((ev.ts or now, ev.from_state, ev.to_state, ev.reason))
                case ConnectionChange():
                    self.set_connection(ev)
                    if ev.connected:
                        self.dirty_plugins = True
                        self.dirty_consoles = True
                    changes.append(ev)
                case RedisLinkChanged():
                    self.redis = "up" if ev.up else "down"
                case EventsDropped():  # the stream lost events: what the panes show may be stale
                    self.dirty_plugins = True
                    self.dirty_consoles = True
                case _ if ev.topic.startswith("plugin."):  # registered, health, peers, loaded, failures...
                    self.dirty_plugins = True
                case _ if ev.topic.startswith("console."):
                    self.dirty_consoles = True
        return changes

    def set_connection(self, change: ConnectionChange) -> None:
        self.connected = change.connected
        self.connection_message = change.message

    def _history_of(self, key: str) -> deque[StateChange]:
        return self.state_history.setdefault(key, deque(maxlen=STATE_HISTORY))

    def fold_metrics(self, sample: MetricsSample) -> None:
        """One ``plugin.metrics`` event: into the plugin's history and its row."""
        key = sample.key
        history = self.metrics_history.setdefault(key, deque(maxlen=int(HISTORY_SECONDS // 2) + 10))
        history.append(MetricPoint.of(sample))
        p = self.plugins_by_key.get(key)
        if p is not None:
            self.plugins_by_key[key] = replace(p, last_metrics=sample)

    def fold_counts(self, counts: Mapping[str, int], mono: float, wall: float) -> None:
        """Requests/s per plugin from the gateway's cumulative counts, read at ``mono`` (wall time ``wall``)."""
        for key, count in counts.items():
            before = self._last_counts.get(key)
            self._last_counts[key] = (count, mono)
            if before is None or mono <= before[1]:
                continue
            rate = max(0.0, (count - before[0]) / (mono - before[1]))
            self.rate_history.setdefault(key, deque(maxlen=int(HISTORY_SECONDS // RATE_SECONDS) + 5)).append(
                (wall, rate)
            )
            self.request_rates[key] = rate

    def set_request_rates(self, rates: Mapping[str, float]) -> None:
        """Rates the supervisor reported itself (``SupervisorClient.request_rates``), until measured ones come."""
        self.request_rates.update(rates)

    # -- logs --------------------------------------------------------------------------------------------
    def add_logs(self, entries: list[LogEntry]) -> None:
        """Queue snapshot lines newer than anything shown, and move the horizon past them."""
        fresh = [e for e in sorted(entries, key=lambda e: e.ts) if e.ts > self._log_horizon]
        if fresh:
            self._log_horizon = fresh[-1].ts
            self._pending_logs.extend(fresh)

    def take_logs(self) -> list[LogEntry]:
        """The lines not shown yet, oldest first (and none pending after)."""
        logs, self._pending_logs = self._pending_logs, []
        return logs

    # -- consoles ----------------------------------------------------------------------------------------
    def consoles_due(self, mono: float, every: float, force: bool = False) -> bool:
        """Whether to fetch the consoles window now (``every`` seconds since the last fetch, or ``force``); when it
        is, the fetch counts as made now."""
        if not force and mono - self.consoles_fetched < every:
            return False
        self.consoles_fetched = mono
        self.dirty_consoles = False
        return True

    def set_consoles(self, page: ConsolePage, stats: dict[str, int]) -> None:
        self.console_page = page.consoles
        self.console_total = page.total
        self.console_stats = stats
        self.consoles_changed = True

    def console_rows(self, now: float, inactive_after: float) -> dict[str, Row]:
        return {c.id: console_cells(c, now, inactive_after) for c in self.console_page}

    # -- header and dialogs ------------------------------------------------------------------------------
    def set_problems(self, route_export: str, console_store: str) -> bool:
        """The header's warnings about the route export and the console store; whether they changed."""
        if (route_export, console_store) == (self.route_export_problem, self.console_store_problem):
            return False
        self.route_export_problem, self.console_store_problem = route_export, console_store
        return True

    def header_markup(self, wide: bool) -> str:
        """The status line: plugins running, consoles by state, warnings (shorter words when not ``wide``)."""
        plugins = self.plugins_by_key.values()
        running, total = self.plugin_counts()
        fatal = [p.key for p in plugins if p.state in TROUBLE_STATES]
        parts = [f"[b]plugins[/b] [#5fd75f]{running}[/]/{total}"]
        stats = self.console_stats
        ctotal = sum(stats.values())
        narrow = not wide
        states = " ".join(
            f"[{CONSOLE_STATE_STYLES.get(s, '')}]{stats.get(s, 0):,} {SHORT_CONSOLE_STATES[s] if narrow else s}[/]"
            for s in CONSOLE_STATES
            if stats.get(s)
        )
        parts.append(f"[b]consoles[/b] {ctotal:,}" + (f": {states}" if states else ""))
        warnings = []
        if fatal:
            warnings.append(
                f"[{PLUGIN_STATE_STYLES['FATAL']}] {len(fatal)} plugin{'s' if len(fatal) > 1 else ''}"
                f" {'/'.join(sorted({self.plugins_by_key[k].state for k in fatal}))} [/]"
            )
        bad = stats.get("error", 0)
        gone = stats.get("inactive", 0)
        if narrow:
            bad = gone = 0  # already in the coloured counts; the room is for FATAL plugins
        if bad:
            warnings.append(f"[{DANGER_STYLE}]{bad:,} error[/]")
        if gone:
            warnings.append(f"[{WARNING_STYLE}]{gone:,} inactive[/]")
        if not self.connected:
            warnings.append(f"[{DANGER_STYLE}]disconnected[/]")
        if self.route_export_problem:
            warnings.append(f"[{DANGER_STYLE}]{self.route_export_problem}[/]")
        if self.redis == "down":
            warnings.append(f"[{DANGER_STYLE}]Redis down[/]")
        if self.console_store_problem:
            warnings.append(f"[{DANGER_STYLE}]console store down[/]")  # the log pane says why
        if warnings:
            parts.append("⚠ " + " ".join(warnings))
        return " │ ".join(parts)

    def quit_message(self, mode: str, api_url: str) -> str:
        """What quitting does to the plugins: they keep running (attached) or stop with the TUI (embedded)."""
        running = self.running_keys()
        if mode == "attached":
            return (
                f"The supervisor at {api_url} keeps running; its {len(running)} running plugin"
                f"{'s' if len(running) != 1 else ''} keep running."
            )
        names = ", ".join(running[:6]) + ("…" if len(running) > 6 else "")
        return (
            f"This supervisor stops with the TUI: {len(running)} running plugin"
            f"{'s' if len(running) != 1 else ''} will be stopped"
            + (f" ({names})." if running else ".")
            + " Use --headless to keep plugins running without a UI."
        )
