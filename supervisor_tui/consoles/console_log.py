"""The log line an operator reads for a console event (the TUI's log pane, every log follower)."""

from __future__ import annotations

from typing import Any

from supervisor_tui.consoles.models import iso
from supervisor_tui.core.events import ConsoleRegistered, ConsoleRemoved, ConsoleStateChanged


def event_log_line(event: Any, inactive_after: float) -> tuple[str, str, str] | None:
    """(level, message, log event name) for a console event worth a line, None for the others (heartbeats,
    the state a registration sets, changes between working states)."""
    cid = event.console_id
    if isinstance(event, ConsoleRegistered):
        return "info", f"console {cid} ({event.name}) registered, {event.state}", "console_registered"
    if isinstance(event, ConsoleRemoved):
        return "info", f"console {cid} removed", "console_removed"
    if isinstance(event, ConsoleStateChanged) and event.reason != "register":
        if event.to_state == "inactive":
            since = iso(event.at - inactive_after)
            message = f"console {cid} inactive: no heartbeat for {inactive_after:g}s (since {since})"
            return "warning", message, "console_inactive"
        if event.from_state == "inactive":
            return "info", f"console {cid} is back, {event.to_state}", "console_back"
        if event.to_state == "error":
            return "warning", f"console {cid} reports an error", "console_error"
    return None
