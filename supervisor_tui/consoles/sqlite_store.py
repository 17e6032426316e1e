"""The consoles in the supervisor's own SQLite database (core/store.py): the embedded default console store.

Writes go through the store's single writer connection, one batch a transaction (``_run_steps`` in one hop to
aiosqlite's thread); reads use its reader connection. History tables found damaged (SQLITE_CORRUPT) are
reported through ``mark_damaged`` at load and by the writer, never fatal.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Any

from supervisor_tui.consoles import queries
from supervisor_tui.consoles.console_store import ConsoleRow, ConsoleSQL, Step
from supervisor_tui.consoles.writer import is_damage, run_steps
from supervisor_tui.core.store import Store

# A heartbeat rewrites only the indexed columns that changed (state, last_activity, hostname): most heartbeats
# repeat them, and every indexed column written costs an index update in the same fsync'd transaction.
_HEARTBEAT_SET = (
    "system = COALESCE(?, system), last_error = ?, current_job = ?, last_seen = ?, heartbeats = heartbeats + ?"
)
SQLITE_SQL = ConsoleSQL(
    insert_heartbeat=(
        "INSERT INTO heartbeats (console_id, received_at, state, last_activity, last_error, current_job, system) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)"
    ),
    update_from_heartbeat={
        (state, activity, host): "UPDATE consoles SET "
        + ("state = ?, reported_state = ?, " if state else "")
        + ("last_activity = ?, " if activity else "")
        + ("hostname = ?, " if host else "")
        + _HEARTBEAT_SET
        + " WHERE id = ?"
        for state in (False, True)
        for activity in (False, True)
        for host in (False, True)
    },
    update_timeout="UPDATE consoles SET state = 'inactive' WHERE id = ?",
    insert_transition=("INSERT INTO transitions (console_id, from_state, to_state, at, reason) VALUES (?, ?, ?, ?, ?)"),
    insert_console=(
        "INSERT INTO consoles (id, name, state, reported_state, system, hostname, last_activity, last_error, "
        "current_job, token_hash, first_seen, last_seen, heartbeats) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, NULL, NULL, ?, ?, ?, 0)"
    ),
    update_registration=(
        "UPDATE consoles SET name = ?, state = ?, reported_state = ?, system = COALESCE(?, system), "
        "hostname = COALESCE(?, hostname), last_activity = COALESCE(?, last_activity), last_error = NULL, "
        "current_job = NULL, token_hash = ?, last_seen = ? WHERE id = ?"
    ),
    delete_console="DELETE FROM consoles WHERE id = ?",
)


def _ends(table: str, column: str, index: str | None = None) -> tuple[str, str]:
    """Two reads of a few pages each: the first and the last entry of ``table`` or its ``index`` (one MIN or
    MAX per query: SQLite scans everything for both at once)."""
    source = f"{table} INDEXED BY {index}" if index else table
    return f"SELECT MIN({column}) FROM {source}", f"SELECT MAX({column}) FROM {source}"


# What inserts and retention touch in each history table and its indices.
_HISTORY_PROBES = {
    "heartbeats": (*_ends("heartbeats", "id"), *_ends("heartbeats", "console_id", "idx_heartbeats_console")),
    "transitions": (
        *_ends("transitions", "id"),
        *_ends("transitions", "console_id", "idx_transitions_console"),
        *_ends("transitions", "at", "idx_transitions_at"),
    ),
}


def _last_id_before(conn: sqlite3.Connection, cutoff: float) -> int | None:
    """The largest heartbeat id received before ``cutoff``: ids grow with time, so a binary search over rowids
    finds it without an index on received_at."""
    first = conn.execute("SELECT id, received_at FROM heartbeats ORDER BY id LIMIT 1").fetchone()
    if first is None or first[1] >= cutoff:
        return None
    last = conn.execute("SELECT id, received_at FROM heartbeats ORDER BY id DESC LIMIT 1").fetchone()
    if last[1] < cutoff:
        return int(last[0])
    lo, hi = int(first[0]), int(last[0])  # received(lo) < cutoff <= received(hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        row = conn.execute(
            "SELECT id, received_at FROM heartbeats WHERE id >= ? ORDER BY id LIMIT 1", (mid,)
        ).fetchone()
        if row[0] >= hi:
            hi = mid
        elif row[1] < cutoff:
            lo = int(row[0])
        else:
            hi = int(row[0])
    return lo


class SqliteConsoleStore:
    """Consoles in data/supervisor.db (see the module docstring)."""

    kind = "sqlite"
    sql = SQLITE_SQL
    shared = False  # one supervisor owns the file
    batches_in_flight = 1  # one connection writes
    timestamps_in_microseconds = False  # REAL seconds, as memory holds them
    flip_inactive = None  # the one node's sweep flips its consoles in memory and writes the result

    def __init__(self, store: Store) -> None:
        self.db = store

    @property
    def where(self) -> str:
        return str(self.db.path)

    @property
    def problem(self) -> str | None:
        return None if self.db.is_open else "the database is closed"

    async def close(self) -> None:
        """Nothing of its own: the supervisor closes its database."""

    async def load(self, mark_damaged: Callable[[str, str], None]) -> tuple[list[ConsoleRow], dict[str, int]]:
        db = self.db.writer
        async with db.execute(
            "SELECT id, name, state, reported_state, token_hash, first_seen, last_seen, last_activity, hostname "
            "FROM consoles ORDER BY last_seen"
        ) as cur:
            rows: list[ConsoleRow] = [tuple(r) for r in await cur.fetchall()]
        damaged = await self._probe_history(mark_damaged)
        counts: dict[str, int] = {}
        if "heartbeats" not in damaged:
            try:
                async with db.execute("SELECT console_id, COUNT(*) FROM heartbeats GROUP BY console_id") as cur:
                    counts = {r[0]: int(r[1]) for r in await cur.fetchall()}
            except sqlite3.DatabaseError as exc:  # damaged history must not keep the supervisor from starting
                if not is_damage(exc):
                    raise
                mark_damaged("heartbeats", str(exc))
        return rows, counts

    async def _probe_history(self, mark_damaged: Callable[[str, str], None]) -> set[str]:
        """Read the ends of each history table and its indices (a few pages each, whatever their size: a full
        PRAGMA quick_check costs seconds per million rows) so a damaged root or edge page is reported now."""
        damaged: set[str] = set()
        for table, probes in _HISTORY_PROBES.items():
            for sql in probes:
                try:
                    async with self.db.writer.execute(sql) as cur:
                        await cur.fetchall()
                except sqlite3.DatabaseError as exc:
                    if not is_damage(exc):
                        raise
                    mark_damaged(table, str(exc))
                    damaged.add(table)
                    break
        return damaged

    async def commit(self, steps: list[Step]) -> list[Any]:
        writer = self.db.writer
        # aiosqlite's _execute runs a function in its connection thread: one hop per batch.
        results: list[Any] = await writer._execute(run_steps, writer._conn, steps)
        return results

    # -- reads -----------------------------------------------------------------------------------------------
    async def list_consoles(
        self, inactive_after: float, state: str | None, limit: int, offset: int, sort: str
    ) -> tuple[list[dict[str, Any]], int]:
        return await queries.list_consoles(self.db.reader, inactive_after, state, limit, offset, sort)

    async def consoles_by_id(self, inactive_after: float, ids: list[str]) -> list[dict[str, Any]]:
        return await queries.consoles_by_id(self.db.reader, inactive_after, ids)

    async def get_console(self, console_id: str, inactive_after: float) -> dict[str, Any] | None:
        return await queries.get_console(self.db.reader, console_id, inactive_after)

    async def heartbeats(self, console_id: str, limit: int) -> list[dict[str, Any]]:
        return await queries.heartbeats(self.db.reader, console_id, limit)

    async def transitions(self, console_id: str, limit: int) -> list[dict[str, Any]]:
        return await queries.transitions(self.db.reader, console_id, limit)

    async def stats(self) -> dict[str, Any]:
        return await queries.stats(self.db.reader)

    # -- maintenance -----------------------------------------------------------------------------------------
    def prune_heartbeats_by_age(self, cutoff: float, chunk: int) -> Callable[[sqlite3.Connection], list[str]]:
        def by_age(conn: sqlite3.Connection) -> list[str]:
            last = _last_id_before(conn, cutoff)
            if last is None:
                return []
            rows = conn.execute(
                "DELETE FROM heartbeats WHERE id IN (SELECT id FROM heartbeats WHERE id <= ? ORDER BY id LIMIT ?) "
                "RETURNING console_id",
                (last, chunk),
            ).fetchall()
            return [r[0] for r in rows]

        return by_age

    def prune_heartbeats_by_count(self, excess: list[tuple[str, int]]) -> Callable[[sqlite3.Connection], list[str]]:
        def by_count(conn: sqlite3.Connection) -> list[str]:
            out: list[str] = []
            for cid, n in excess:
                rows = conn.execute(
                    "DELETE FROM heartbeats WHERE id IN (SELECT id FROM heartbeats WHERE console_id = ? "
                    "ORDER BY received_at, id LIMIT ?) RETURNING console_id",
                    (cid, n),
                ).fetchall()
                out += [r[0] for r in rows]
            return out

        return by_count

    def prune_transitions(self, cutoff: float, chunk: int) -> Callable[[sqlite3.Connection], int]:
        def transitions(conn: sqlite3.Connection) -> int:
            cur = conn.execute(
                "DELETE FROM transitions WHERE id IN (SELECT id FROM transitions WHERE at < ? ORDER BY at LIMIT ?)",
                (cutoff, chunk),
            )
            return int(cur.rowcount)

        return transitions
