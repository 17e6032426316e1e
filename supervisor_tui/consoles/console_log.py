"""The log lines an operator reads about consoles and their store (the TUI's log pane, every log follower)."""

from __future__ import annotations

from typing import Any

from supervisor_tui.consoles.console_store import ConsoleStore
from supervisor_tui.consoles.models import iso
from supervisor_tui.core.events import ConsoleRegistered, ConsoleRemoved, ConsoleStateChanged
from supervisor_tui.core.logs import LogHub


class ConsoleLog:
    """The console service's log lines, written to ``logs`` (none without it); ``store`` says where it is."""

    def __init__(self, logs: LogHub | None, inactive_after: float, store: ConsoleStore) -> None:
        self.logs = logs
        self.inactive_after = inactive_after
        self.store = store

    def write(self, level: str, message: str, event: str, **fields: Any) -> None:
        if self.logs is not None:
            self.logs.write("supervisor", "supervisor", message, level, event=event, **fields)

    def event(self, event: Any) -> None:
        """The line of a console event worth one (see event_log_line)."""
        if self.logs is None:
            return
        line = event_log_line(event, self.inactive_after)
        if line is not None:
            level, message, name = line
            self.write(level, message, name, console=event.console_id)

    def store_problem(self, problem: str | None) -> None:
        """Said once when the store is lost (heartbeats answer 503 meanwhile) and once when it is back."""
        if problem is not None:
            self.write(
                "error",
                f"the console store is lost ({problem}): heartbeats answer 503 until it is back",
                "console_store_lost",
            )
        else:
            self.write("info", f"the console store {self.store.where} is reachable again", "console_store_back")

    def damaged(self, table: str, error: str) -> None:
        """A history table found damaged (the writer says so once per table)."""
        self.write(
            "error",
            f"console history table {table} in {self.store.where} is damaged ({error}): heartbeats and "
            f"registrations are still recorded, but no more {table} history; repair the database with the "
            "supervisor stopped (sqlite3 .recover)",
            "history_damaged",
            table=table,
        )


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
