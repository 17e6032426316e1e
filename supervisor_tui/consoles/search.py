"""Console search in memory (``GET /api/consoles?q=``): the same answer whichever console store is used, and
fast when a search matches most consoles.

The stores found matches through a trigram index, but a search matching every one of 100,000 consoles still
read, counted and sorted every row (SQLite 162 ms, PostgreSQL 633 ms: its case folding with ICU on every row,
twice, for the total and for the page). The service already holds every console's name and host name, so it
keeps them lowered here (updated when they change, not per heartbeat), counts the matches with one substring test
per console, orders the page in memory (last-seen order from recency.py, stopping at the page; names sorted only
among the matches) and reads just the page's rows from the store.

A console matches when the lowered search is part of its lowered name or host name, or is its id exactly.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Iterator

# Between name and host name in a console's key: neither may hold a control character (models.py), so no
# search that matches across it can match a name or a host (such a search can still match an id).
_SEPARATOR = "\x00"


class SearchKeys:
    """Every console's lowered name and host name, by console id."""

    def __init__(self) -> None:
        self._keys: dict[str, str] = {}
        self._sources: dict[str, tuple[str, str | None]] = {}

    def put(self, console_id: str, name: str, hostname: str | None) -> None:
        """The console's name or host name may have changed (cheap when neither did)."""
        if self._sources.get(console_id) != (name, hostname):
            self._sources[console_id] = (name, hostname)
            self._keys[console_id] = f"{name.lower()}{_SEPARATOR}{(hostname or '').lower()}"

    def discard(self, console_id: str) -> None:
        self._keys.pop(console_id, None)
        self._sources.pop(console_id, None)

    def clear(self) -> None:
        self._keys.clear()
        self._sources.clear()

    def matches(self, search: str) -> list[str]:
        """Ids of the consoles the search matches (any order)."""
        folded = search.lower()
        found = [cid for cid, key in self._keys.items() if folded in key] if _SEPARATOR not in folded else []
        if search in self._keys and folded not in self._keys[search]:
            found.append(search)  # its exact id
        return found


def page_by_last_seen(walk: Iterator[tuple[str, float]], matched: set[str], limit: int, offset: int) -> list[str]:
    """One page of ``matched`` in the order ``walk`` gives (last seen, either way), ties by id; stops at the page."""
    want = offset + limit
    page: list[str] = []
    group: list[str] = []
    value: float | None = None
    for cid, seen in walk:
        if seen != value:
            if group:
                page += sorted(group)
                group = []
                if len(page) >= want:
                    break
            value = seen
        if cid in matched:
            group.append(cid)
    page += sorted(group)
    return page[offset:want]


def page_by_name(
    ids: Iterable[str], name_of: Callable[[str], str], limit: int, offset: int, descending: bool
) -> list[str]:
    """One page of ``ids`` by name (code point order, as the stores' byte order of UTF-8), ties by id ascending."""
    want = offset + limit
    if descending:  # names descending, ids still ascending among equal names
        top = heapq.nlargest(want, ids, key=lambda cid: (name_of(cid), _Reversed(cid)))
    else:
        top = heapq.nsmallest(want, ids, key=lambda cid: (name_of(cid), cid))
    return top[offset:want]


class _Reversed:
    """A string that compares in reverse: the id ascending inside a descending sort."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def __lt__(self, other: _Reversed) -> bool:
        return self.text > other.text

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Reversed) and self.text == other.text

    def __hash__(self) -> int:
        return hash(self.text)
