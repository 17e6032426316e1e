"""Every console in last-seen order, in memory: pages of "newest seen first" without an index on last_seen.

An index on consoles.last_seen is rewritten by every heartbeat (its old entry deleted, a new one appended), and
two of them (all consoles, and by state) were most of the pages each group commit wrote to the WAL. The service
already knows every console's last_seen, and heartbeats arrive in time order, so an insertion-ordered dict where
a console seen again moves to the end is the same order for O(1) per heartbeat. Ties (equal last_seen) are
ordered by id, as the SQL ``ORDER BY last_seen DESC, id`` did.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Protocol


class Seen(Protocol):
    """What a page needs to know about a console."""

    id: str
    state: str
    last_seen: float


class Recency:
    """Console ids, oldest seen first; ``touch`` in increasing time order keeps it sorted (anything else is
    noticed and re-sorted on the next read, e.g. after the clock was set back)."""

    def __init__(self, lookup: Callable[[str], Seen | None]) -> None:
        self._lookup = lookup
        self._order: dict[str, float] = {}
        self._sorted = True

    def touch(self, console_id: str, last_seen: float) -> None:
        order = self._order
        order.pop(console_id, None)
        if order and self._sorted and last_seen < order[next(reversed(order))]:
            self._sorted = False
        order[console_id] = last_seen

    def discard(self, console_id: str) -> None:
        self._order.pop(console_id, None)

    def clear(self) -> None:
        self._order.clear()
        self._sorted = True

    def __len__(self) -> int:
        return len(self._order)

    def _ids(self, newest_first: bool) -> Iterator[str]:
        if not self._sorted:
            self._order = dict(sorted(self._order.items(), key=lambda kv: kv[1]))
            self._sorted = True
        return reversed(self._order) if newest_first else iter(self._order)

    def page(self, state: str | None, limit: int, offset: int, newest_first: bool) -> list[str]:
        """Ids of one page sorted by (last_seen, id), descending last_seen when ``newest_first``.

        Walks from the newest (or oldest) end until the page is full, plus every console tied with the page's
        last one, so ties are ordered by id exactly as SQL would.
        """
        want = offset + limit
        picked: list[Seen] = []
        boundary: float | None = None
        lookup = self._lookup
        for cid in self._ids(newest_first):
            e = lookup(cid)
            if e is None or (state is not None and e.state != state):
                continue
            if boundary is not None and e.last_seen != boundary:
                break
            picked.append(e)
            if boundary is None and len(picked) >= want:
                boundary = e.last_seen
        if newest_first:
            picked.sort(key=lambda e: (-e.last_seen, e.id))
        else:
            picked.sort(key=lambda e: (e.last_seen, e.id))
        return [e.id for e in picked[offset:want]]
