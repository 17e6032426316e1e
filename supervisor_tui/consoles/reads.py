"""The reads of ConsoleService: console records, pages, history and store status (an object the service holds).

Sorted by last seen, or searching, a page's ids come from memory (the last-seen order of recency.py, the names
and hosts of search.py) and only those rows are read from the store.
"""

from __future__ import annotations

import heapq
import sqlite3
from collections import Counter
from collections.abc import Coroutine
from typing import Any

from supervisor_tui.consoles.console_entry import ConsoleEntry
from supervisor_tui.consoles.console_store import ConsoleStore
from supervisor_tui.consoles.errors import ConsoleNotFound, ConsoleUnavailable
from supervisor_tui.consoles.latest_activity import LatestActivity, as_stored_in_microseconds
from supervisor_tui.consoles.models import ALL_STATES
from supervisor_tui.consoles.queries import stats_record
from supervisor_tui.consoles.recency import Recency
from supervisor_tui.consoles.search import SearchKeys, page_by_last_seen, page_by_name
from supervisor_tui.consoles.sweeper import Deadlines
from supervisor_tui.consoles.writer import GroupCommitWriter, is_damage


class ConsoleReads:
    """Reads from the service's memory and its store. The service keeps ``entries``, ``by_state``, ``deadlines``,
    ``recency``, ``search`` and ``latest`` up to date (changed in place, never replaced); ``writer`` knows the damaged
    history tables."""

    def __init__(
        self,
        store: ConsoleStore,
        inactive_after: float,
        entries: dict[str, ConsoleEntry],
        by_state: Counter[str],
        deadlines: Deadlines,
        recency: Recency,
        search: SearchKeys,
        writer: GroupCommitWriter,
        latest: LatestActivity,
    ) -> None:
        self.store = store
        self.inactive_after = inactive_after
        self._entries = entries
        self._by_state = by_state
        self._deadlines = deadlines
        self._recency = recency
        self._search = search
        self._writer = writer
        self._latest = latest

    def exists(self, console_id: str) -> bool:
        return console_id in self._entries

    def state_of(self, console_id: str) -> str | None:
        """The console's current state from memory (None when unknown)."""
        e = self._entries.get(console_id)
        return None if e is None else e.state

    def view_of(self, console_id: str) -> tuple[str, float, str | None] | None:
        """This node's in-memory view of a console (state, last seen, host name), None when unknown."""
        e = self._entries.get(console_id)
        return None if e is None else (e.state, e.last_seen, e.hostname)

    def deadline_of(self, console_id: str) -> float | None:
        """When the console goes inactive unless it is heard from (None when inactive or unknown)."""
        return self._deadlines.deadline(console_id)

    def counts_by_state(self) -> dict[str, int]:
        return {s: self._by_state.get(s, 0) for s in ALL_STATES}

    async def list_consoles(
        self,
        state: str | None = None,
        search: str | None = None,
        limit: int = 100,
        offset: int = 0,
        sort: str = "-last_seen",
    ) -> tuple[list[dict[str, Any]], int]:
        """One page of console records (newest seen first by default) and the total matching.

        Sorted by last seen, or searching, the page's ids come from memory (the last-seen order of recency.py,
        the names and hosts of search.py) and only those rows are read from the store.
        """
        if search:
            matched = self._search.matches(search)
            if state is not None:
                entries = self._entries
                matched = [cid for cid in matched if entries[cid].state == state]
            if sort in ("-last_seen", "last_seen") and len(matched) * 8 < len(self._entries):
                # A few matches: sorted among themselves (walking every console's order would cost more).
                entries, sign = self._entries, -1.0 if sort == "-last_seen" else 1.0
                ids = heapq.nsmallest(offset + limit, matched, key=lambda cid: (sign * entries[cid].last_seen, cid))
                ids = ids[offset:]
            elif sort in ("-last_seen", "last_seen"):
                # Most consoles match: the last-seen order, walked only as far as the page.
                walk = self._recency.walk(state, newest_first=sort == "-last_seen")
                ids = page_by_last_seen(walk, set(matched), limit, offset)
            else:
                entries = self._entries
                ids = page_by_name(matched, lambda cid: entries[cid].name, limit, offset, sort == "-name")
            return await self.store.consoles_by_id(self.inactive_after, ids), len(matched)
        if sort in ("-last_seen", "last_seen"):
            ids = self._recency.page(state, limit, offset, newest_first=sort == "-last_seen")
            total = len(self._entries) if state is None else self._by_state.get(state, 0)
            return await self.store.consoles_by_id(self.inactive_after, ids), total
        return await self.store.list_consoles(self.inactive_after, state, limit, offset, sort)

    async def get(self, console_id: str) -> dict[str, Any]:
        """One console record (ConsoleNotFound)."""
        record = await self.store.get_console(console_id, self.inactive_after)
        if record is None:
            raise ConsoleNotFound(f"no console {console_id!r}")
        return record

    async def heartbeats(self, console_id: str, limit: int = 100) -> list[dict[str, Any]]:
        """The console's latest heartbeats, newest first (ConsoleNotFound)."""
        if console_id not in self._entries:
            raise ConsoleNotFound(f"no console {console_id!r}")
        return await self._history("heartbeats", self.store.heartbeats(console_id, limit))

    async def transitions(self, console_id: str, limit: int = 100) -> list[dict[str, Any]]:
        """The console's latest state transitions, newest first (ConsoleNotFound)."""
        if console_id not in self._entries:
            raise ConsoleNotFound(f"no console {console_id!r}")
        return await self._history("transitions", self.store.transitions(console_id, limit))

    async def _history(self, table: str, read: Coroutine[Any, Any, list[dict[str, Any]]]) -> list[dict[str, Any]]:
        """A read of a history table; a damaged one answers ConsoleUnavailable naming it."""
        if table not in self._writer.damaged:
            try:
                return await read
            except sqlite3.DatabaseError as exc:
                if not is_damage(exc):
                    raise
                self._writer.mark_damaged(table, str(exc))
        read.close()
        raise ConsoleUnavailable(f"the console history table {table} is damaged ({self._writer.damaged[table]})")

    def store_status(self) -> dict[str, Any]:
        """The console store's kind, where it is (no password) and whether it can be written now."""
        problem = self.store.problem
        return {"kind": self.store.kind, "where": self.store.where, "available": problem is None, "problem": problem}

    def damaged_history(self) -> dict[str, str]:
        """History tables found damaged (their rows are no longer written): table -> the database's error."""
        return dict(self._writer.damaged)

    async def stats(self) -> dict[str, Any]:
        """Count and latest activity by state (the Spanish console API's statistics query).

        From memory while it holds what the store holds (the store is reachable and, when shared, its change
        feed is connected: ``problem`` is None), the same answer as the store's query without reading every row;
        else the store's query (which answers ConsoleUnavailable when the store cannot be read).
        """
        if self.store.problem is not None:
            return await self.store.stats()
        latest = self._latest.by_state(self._entries.values())
        if self.store.timestamps_in_microseconds:
            latest = {state: as_stored_in_microseconds(ts) for state, ts in latest.items()}
        return stats_record({s: (n, latest.get(s)) for s, n in self._by_state.items() if n > 0})
