"""Per-console inactivity deadlines.

Every console has the same ``inactive_after``, so deadline order is last-seen order: an insertion-ordered dict
where a heartbeat moves its console to the end is a priority queue with O(1) updates and no stale entries
(a heap would collect one entry per heartbeat). The sweeper pops from the front while deadlines have passed.
"""

from __future__ import annotations


class Deadlines:
    """Consoles that can still go inactive, in deadline order."""

    def __init__(self, inactive_after: float) -> None:
        self.inactive_after = inactive_after
        self._last_seen: dict[str, float] = {}

    def touch(self, console_id: str, last_seen: float) -> None:
        """The console was seen at ``last_seen`` (callers touch in increasing time order)."""
        self._last_seen.pop(console_id, None)
        self._last_seen[console_id] = last_seen

    def discard(self, console_id: str) -> None:
        self._last_seen.pop(console_id, None)

    def clear(self) -> None:
        self._last_seen.clear()

    def deadline(self, console_id: str) -> float | None:
        seen = self._last_seen.get(console_id)
        return None if seen is None else seen + self.inactive_after

    def due(self, now: float, limit: int = 100_000) -> list[tuple[str, float]]:
        """Pop and return (console id, deadline) for every deadline at or before ``now``."""
        out: list[tuple[str, float]] = []
        d = self._last_seen
        ia = self.inactive_after
        while d and len(out) < limit:
            cid = next(iter(d))
            deadline = d[cid] + ia
            if deadline > now:
                break
            del d[cid]
            out.append((cid, deadline))
        return out

    def __len__(self) -> int:
        return len(self._last_seen)
