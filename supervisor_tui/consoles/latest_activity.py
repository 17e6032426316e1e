"""The latest activity of the consoles in each state, kept in memory: seed 004's statistics query (count and
latest ``ultima_actividad`` by ``estado``) answered without reading every row of the store.

The service already counts its consoles by state; this keeps each state's latest activity beside the counts as
consoles change (O(1) per change). A state whose latest console left it, or reported an older activity, is
only marked stale, and found again by one pass over the consoles when the statistics are next asked for.
"""

from __future__ import annotations

from collections.abc import Iterable

from supervisor_tui.consoles.console_entry import ConsoleEntry

# PostgreSQL's to_timestamp(): Unix seconds less its own epoch (2000-01-01), rounded to microseconds.
_PG_EPOCH = 946_684_800.0


def as_stored_in_microseconds(ts: float) -> float:
    """``ts`` as a PostgreSQL timestamp keeps it and ``extract(epoch FROM ...)::float8`` gives it back: the same
    float, so the same milliseconds in an answer, as the store's own query."""
    return (round((ts - _PG_EPOCH) * 1e6) + 946_684_800_000_000) / 1e6


class LatestActivity:
    """The latest ``last_activity`` among the consoles in each state (see the module docstring)."""

    def __init__(self) -> None:
        self._latest: dict[str, float] = {}
        self._stale: set[str] = set()

    def clear(self) -> None:
        self._latest.clear()
        self._stale.clear()

    def changed(self, old: ConsoleEntry | None, new: ConsoleEntry | None) -> None:
        """A console went from ``old`` to ``new`` (None: not there before / removed)."""
        if old is not None and old.last_activity is not None:
            was = old.last_activity
            # Staying in its state with the same or a later activity only moves that state's latest up.
            stays = new is not None and new.state == old.state and (new.last_activity or float("-inf")) >= was
            if not stays and was >= self._latest.get(old.state, was):
                self._stale.add(old.state)  # it may have been its state's latest
        if new is not None and new.last_activity is not None and new.state not in self._stale:
            latest = self._latest.get(new.state)
            if latest is None or new.last_activity > latest:
                self._latest[new.state] = new.last_activity

    def by_state(self, consoles: Iterable[ConsoleEntry]) -> dict[str, float]:
        """State -> the latest activity of its consoles (states whose consoles reported none are left out);
        ``consoles`` are all the consoles, walked only when a state is stale."""
        if self._stale:
            stale, found = self._stale, dict[str, float]()
            for e in consoles:
                activity = e.last_activity
                if activity is not None and e.state in stale and activity > found.get(e.state, float("-inf")):
                    found[e.state] = activity
            for state in stale:
                self._latest.pop(state, None)
            self._latest.update(found)
            self._stale = set()
        return dict(self._latest)
