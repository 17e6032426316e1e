"""The supervisor log's lines about console events, without a supervisor."""

from __future__ import annotations

from supervisor_tui.consoles.log_lines import log_line
from supervisor_tui.consoles.models import iso
from supervisor_tui.core.events import ConsoleHeartbeats, ConsoleRegistered, ConsoleRemoved, ConsoleStateChanged

T0 = 1_700_000_000.0


def changed(old: str | None, new: str, reason: str = "heartbeat") -> ConsoleStateChanged:
    return ConsoleStateChanged(console_id="c1", from_state=old, to_state=new, reason=reason, at=T0)


def test_registrations_removals_and_the_state_changes_an_operator_acts_on_are_logged() -> None:
    assert log_line(ConsoleRegistered(console_id="c1", name="Render", state="idle"), 60) == (
        "info",
        "console c1 (Render) registered, idle",
        "console_registered",
    )
    assert log_line(ConsoleRemoved(console_id="c1"), 60) == ("info", "console c1 removed", "console_removed")
    assert log_line(changed("busy", "inactive", "timeout"), 30) == (
        "warning",
        f"console c1 inactive: no heartbeat for 30s (since {iso(T0 - 30)})",
        "console_inactive",
    )
    assert log_line(changed("inactive", "busy"), 60) == ("info", "console c1 is back, busy", "console_back")
    assert log_line(changed("busy", "error"), 60) == ("warning", "console c1 reports an error", "console_error")


def test_routine_changes_and_other_events_are_not_logged() -> None:
    assert log_line(changed("idle", "busy"), 60) is None
    assert log_line(changed(None, "error", "register"), 60) is None  # the registration's own line says it
    assert log_line(ConsoleHeartbeats(count=3, console_ids=("c1",)), 60) is None
