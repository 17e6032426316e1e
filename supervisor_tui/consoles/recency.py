"""Every console in last-seen order, in memory: pages of "newest seen first" without an index on last_seen.

An index on consoles.last_seen is rewritten by every heartbeat (its old entry deleted, a new one appended), and
two of them (all consoles, and by state) were most of the pages each group commit wrote to the WAL. The service
already knows every console's last_seen, and heartbeats arrive in time order, so an insertion-ordered dict where
a console seen again moves to the end is the same order for O(1) per heartbeat; one dict for all consoles and
one per state (consoles time out in deadline order, which is last-seen order, so the inactive one stays sorted
too). Ties (equal last_seen) are ordered by id, as the SQL ``ORDER BY last_seen DESC, id`` did.
"""

from __future__ import annotations

from collections.abc import Iterator


class _Order:
    """Ids in last-seen order, oldest first; appends out of order are noticed and sorted on the next read."""

    __slots__ = ("latest", "seen", "sorted")

    def __init__(self) -> None:
        self.seen: dict[str, float] = {}
        self.sorted = True
        self.latest = float("-inf")  # the largest last_seen ever put (its console may have moved on since)

    def put(self, console_id: str, last_seen: float) -> None:
        if last_seen >= self.latest:
            self.latest = last_seen
        else:
            self.sorted = False
        self.seen[console_id] = last_seen

    def walk(self, newest_first: bool) -> Iterator[tuple[str, float]]:
        if not self.sorted:
            self.seen = dict(sorted(self.seen.items(), key=lambda kv: kv[1]))
            self.latest = max(self.seen.values(), default=float("-inf"))
            self.sorted = True
        items = self.seen.items()
        return reversed(items) if newest_first else iter(items)


class Recency:
    """Console ids in last-seen order, all together and by state (see the module docstring)."""

    def __init__(self) -> None:
        self._all = _Order()
        self._states: dict[str, str] = {}
        self._by_state: dict[str, _Order] = {}

    def touch(self, console_id: str, last_seen: float, state: str) -> None:
        """The console was seen at ``last_seen`` or changed state (callers touch in increasing last_seen order;
        a state change alone, such as a timeout, keeps the console's place among all consoles)."""
        every = self._all
        before = every.seen.get(console_id)
        if before != last_seen:
            if before is not None:
                del every.seen[console_id]
            every.put(console_id, last_seen)
        old_state = self._states.get(console_id)
        if old_state != state or before != last_seen:
            if old_state is not None:
                del self._by_state[old_state].seen[console_id]
            order = self._by_state.get(state)
            if order is None:
                order = self._by_state[state] = _Order()
            order.put(console_id, last_seen)
            self._states[console_id] = state

    def discard(self, console_id: str) -> None:
        if self._all.seen.pop(console_id, None) is not None:
            self._by_state[self._states.pop(console_id)].seen.pop(console_id, None)

    def clear(self) -> None:
        self._all = _Order()
        self._states.clear()
        self._by_state.clear()

    def __len__(self) -> int:
        return len(self._all.seen)

    def walk(self, state: str | None, newest_first: bool) -> Iterator[tuple[str, float]]:
        """(id, last seen) of every console (in ``state``), in last-seen order."""
        order = self._all if state is None else self._by_state.get(state)
        return iter(()) if order is None else order.walk(newest_first)

    def page(self, state: str | None, limit: int, offset: int, newest_first: bool) -> list[str]:
        """Ids of one page sorted by last_seen (descending when ``newest_first``), ties by id.

        Walks groups of equal last_seen from whichever end of the order is nearer to the page, so a page costs
        about min(offset + limit, total - offset) steps, never a sort of everything.
        """
        order = self._all if state is None else self._by_state.get(state)
        total = 0 if order is None else len(order.seen)
        want = min(offset + limit, total)
        if order is None or offset >= want:
            return []
        forward = offset + limit <= total - offset  # walk from the page's own end
        chunks: list[tuple[int, list[str]]] = []
        done = 0  # consoles already walked past

        def take(group: list[str]) -> None:
            start = done if forward else total - done - len(group)  # the group's first position in page order
            if start < want and start + len(group) > offset:
                group.sort()
                chunks.append((start, group[max(0, offset - start) : want - start]))

        group: list[str] = []
        value: float | None = None
        for cid, seen in order.walk(newest_first if forward else not newest_first):
            if seen != value:
                if group:
                    take(group)
                    done += len(group)
                    if (done >= want) if forward else (total - done <= offset):
                        group = []
                        break
                group, value = [cid], seen
            else:
                group.append(cid)
        if group:
            take(group)
        chunks.sort()
        return [cid for _, part in chunks for cid in part]
