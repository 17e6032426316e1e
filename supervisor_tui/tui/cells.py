"""How supervisor values become table cells and header text: durations, sizes, ages, state colours.

Text from plugins, consoles and registrations is shown through ``printable`` (control and bidi characters as
visible escapes, core.printable) wherever it is rendered; ``escape`` does that and also keeps it out of markup.
"""

from __future__ import annotations

from supervisor_tui.core.printable import printable
from supervisor_tui.plugins.model import WITH_PROCESS, PluginSnapshot, PluginState, ReplicaSnapshot
from supervisor_tui.tui.client import ConsoleInfo

PLUGIN_STATE_STYLES: dict[str, str] = {
    PluginState.RUNNING: "bold #5fd75f",
    PluginState.STARTING: "bold #ffd75f",
    PluginState.STOPPING: "bold #ffd75f",
    PluginState.BACKOFF: "bold #ff8700",
    PluginState.STOPPED: "#8a8a8a",
    PluginState.EXITED: "#d7af87",
    PluginState.FATAL: "bold #ffffff on #d70000",
    PluginState.INVALID: "bold #d75fd7",
    PluginState.LOST: "bold #ff5f5f",
    PluginState.COMPLETED: "#87d7af",  # a oneshot task that ended well: done, calmer than RUNNING
    PluginState.FAILED: "bold #ff5f5f",  # a oneshot task that ended badly
}
CONSOLE_STATE_STYLES = {
    "active": "bold #5fd75f",
    "busy": "bold #5fafff",
    "idle": "#d0d0d0",
    "error": "bold #ff5f5f",
    "inactive": "#8a8a8a",
}
WARNING_STYLE = "bold #ffaf00"
DANGER_STYLE = "bold #ff5f5f"
DIM_STYLE = "#8a8a8a"

PLUGIN_COLUMNS: list[tuple[str, str, int | None]] = [
    ("key", "Key", 12),
    ("name", "Name", 13),
    ("version", "Version", 7),
    ("state", "State", 13),
    ("group", "Group", 8),
    ("pid", "PID", 6),
    ("port", "Port", 5),
    ("uptime", "Uptime", 8),
    ("restarts", "Rst", 3),
    ("cpu", "CPU %", 6),
    ("mem", "Memory", 7),
    ("health", "Health", 7),
    ("rps", "Req/s", 6),
]
# Once the fleet has more than one node: which node serves each plugin, after its key.
NODE_COLUMN: tuple[str, str, int | None] = ("node", "Node", 10)
# Every column a plugins table can show (each row holds a cell for each).
PLUGIN_TABLE_COLUMNS = [*PLUGIN_COLUMNS, NODE_COLUMN]


def with_node_column(columns: list[tuple[str, str, int | None]]) -> list[tuple[str, str, int | None]]:
    """``columns`` with the Node column after the key."""
    return [columns[0], NODE_COLUMN, *columns[1:]]


# What fits 80 columns: the pane's border leaves 76, each column takes 2 more for padding.
PLUGIN_COLUMNS_NARROW: list[tuple[str, str, int | None]] = [
    ("key", "Key", 12),
    ("state", "State", 10),
    ("pid", "PID", 6),
    ("port", "Port", 5),
    ("uptime", "Uptime", 6),
    ("restarts", "Rst", 3),
    ("cpu", "CPU%", 5),
    ("mem", "Mem", 5),
    ("health", "Health", 6),
]
CONSOLE_COLUMNS: list[tuple[str, str, int | None]] = [
    ("name", "Name", 14),
    ("id", "ID", 8),
    ("host", "Host", 20),
    ("state", "State", 8),
    ("job", "Current job", 24),
    ("seen", "Last seen", 10),
    ("err", "Err", 3),
]
CONSOLE_COLUMNS_NARROW: list[tuple[str, str, int | None]] = [
    ("name", "Name", 14),
    ("id", "ID", 8),
    ("state", "State", 8),
    ("job", "Current job", 20),
    ("seen", "Last seen", 10),
    ("err", "Err", 3),
]


def escape(text: str) -> str:
    """Text from operators or consoles, safe inside markup (titles, palette help): every "[" escaped, and
    control and bidi characters shown as escapes."""
    return printable(text).replace("[", "\\[")


def duration(seconds: float | None) -> str:
    """Short human duration: 42s, 3m07s, 2h05m, 3d04h."""
    if seconds is None:
        return "-"
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def size(n: int | None) -> str:
    """Bytes as 38M, 1.2G."""
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "K", "M", "G", "T"):
        if value < 1024 or unit == "T":
            if unit in ("B", "K", "M") or value >= 10:
                return f"{value:.0f}{unit}"
            return f"{value:.1f}{unit}"
        value /= 1024
    return f"{value:.0f}T"


def age(seconds: float | None) -> str:
    """How long ago: "42s ago"."""
    if seconds is None:
        return "never"
    return f"{duration(seconds)} ago"


SPINNER = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"


def plugin_cells(
    p: PluginSnapshot,
    now: float,
    pending: tuple[str, float] | None = None,
    tick: int = 0,
    requests_per_s: float | None = None,
) -> tuple[tuple[str, str], ...]:
    """The row of the plugins table for one plugin; ``pending`` is (verb, seconds so far) of a running action,
    ``requests_per_s`` the rate the view measured."""
    if pending is not None:
        verb, elapsed = pending
        state = (f"{SPINNER[tick % len(SPINNER)]}{verb} {int(elapsed)}s", "bold #ffd75f")
    else:
        state = (p.state, PLUGIN_STATE_STYLES.get(p.state, ""))
    running = p.state in WITH_PROCESS
    uptime = duration(now - p.started_at) if (p.started_at and p.state == "RUNNING") else "-"
    if p.healthy is None:
        health = ("-", DIM_STYLE)
    elif p.healthy:
        health = ("ok", "#5fd75f")
    else:
        health = ("fail", DANGER_STYLE)
    cpu = f"{p.cpu_percent:.1f}" if (p.cpu_percent is not None and running) else "-"
    mem = size(p.rss) if (p.rss is not None and running) else "-"
    rps = f"{requests_per_s:.1f}" if (requests_per_s is not None and running) else "-"
    return (
        (p.key, "bold"),
        (p.name, ""),
        (p.version, DIM_STYLE),
        state,
        (p.group or "-", "" if p.group else DIM_STYLE),
        (str(p.pid) if p.pid else "-", ""),
        (str(p.port) if p.port else "-", ""),
        (uptime, ""),
        (str(p.restarts), WARNING_STYLE if p.restarts else ""),
        (cpu, ""),
        (mem, ""),
        health,
        (rps, ""),
        (p.node or "here", DIM_STYLE if not p.node else ""),
    )


def replica_cells(p: PluginSnapshot, r: ReplicaSnapshot, now: float) -> tuple[tuple[str, str], ...]:
    """The sub-row of one replica under its plugin's row: its own state, process, port and figures."""
    running = r.state in WITH_PROCESS
    uptime = duration(now - r.started_at) if (r.started_at and r.state == "RUNNING") else "-"
    return (
        (f" #{r.index}", DIM_STYLE),
        (f"replica {r.index}", DIM_STYLE),
        ("", ""),
        (r.state, PLUGIN_STATE_STYLES.get(r.state, "")),
        ("", ""),  # group: the plugin's row says it
        (str(r.pid) if r.pid else "-", ""),
        (str(r.port) if r.port else "-", ""),
        (uptime, ""),
        (str(r.restarts), WARNING_STYLE if r.restarts else ""),
        (f"{r.cpu_percent:.1f}" if (r.cpu_percent is not None and running) else "-", ""),
        (size(r.rss) if (r.rss is not None and running) else "-", ""),
        ("", ""),
        ("", ""),
        ("", ""),  # node: the plugin's row says it
    )


def seen_style(age_s: float | None, state: str, inactive_after: float) -> str:
    """Warning colours as a console's silence nears ``inactive_after``."""
    if state == "inactive" or age_s is None:
        return DIM_STYLE
    if age_s >= 0.8 * inactive_after:
        return DANGER_STYLE
    if age_s >= 0.5 * inactive_after:
        return WARNING_STYLE
    return ""


def console_cells(c: ConsoleInfo, now: float, inactive_after: float) -> tuple[tuple[str, str], ...]:
    """The row of the consoles table for one console."""
    age_s = (now - c.last_seen) if c.last_seen is not None else None
    return (
        (c.name or c.short_id, "bold"),
        (c.short_id, DIM_STYLE),
        (c.host or "-", ""),
        (c.state, CONSOLE_STATE_STYLES.get(c.state, "")),
        (c.current_job or "-", "" if c.current_job else DIM_STYLE),
        (age(age_s), seen_style(age_s, c.state, inactive_after)),
        ("!" if c.last_error else "", DANGER_STYLE),
    )
