"""What the supervisor log says about console events: a line for each registration and removal, and for the
state changes an operator acts on (gone inactive, back from inactive, reporting an error).

    line = log_line(event, inactive_after)    # (level, message, log event name), or None: nothing to say
"""

from __future__ import annotations

from typing import Any

from supervisor_tui.consoles.models import iso
from supervisor_tui.core.events import ConsoleRegistered, ConsoleRemoved, ConsoleStateChanged


def log_line(event: Any, inactive_after: float) -> tuple[str, str, str] | None:
    """The log line for a console event (its ``console_id`` goes along as the line's ``console`` field)."""
    if isinstance(event, ConsoleRegistered):
        return "info", f"console {event.console_id} ({event.name}) registered, {event.state}", "console_registered"
    if isinstance(event, ConsoleRemoved):
        return "info", f"console {event.console_id} removed", "console_removed"
    if not isinstance(event, ConsoleStateChanged) or event.reason == "register":
        return None
    if event.to_state == "inactive":
        since = iso(event.at - inactive_after)
        message = f"console {event.console_id} inactive: no heartbeat for {inactive_after:g}s (since {since})"
        return "warning", message, "console_inactive"
    if event.from_state == "inactive":
        return "info", f"console {event.console_id} is back, {event.to_state}", "console_back"
    if event.to_state == "error":
        return "warning", f"console {event.console_id} reports an error", "console_error"
    return None
