"""The history tables (heartbeats, transitions): the reads that probe them for damage, and retention's deletes.

    PROBES[table]    # cheap reads of the pages inserts and retention touch, run at start (ConsoleService.start)
    delete_heartbeats_before(conn, cutoff, chunk) -> console ids of the rows deleted (oldest first)
    delete_heartbeats_beyond(conn, [(console_id, excess), ...]) -> console ids of the rows deleted
    delete_transitions_before(conn, cutoff, chunk) -> how many rows were deleted

Each delete removes one bounded chunk on the writer's connection, inside its batch: ConsoleService.prune submits
them through the group-commit writer as maintenance calls, chunk after chunk, so ingest never waits behind one
huge delete; the console ids let it keep each console's stored-heartbeat count.
"""

from __future__ import annotations

import sqlite3


def _ends(table: str, column: str, index: str | None = None) -> tuple[str, str]:
    """Two reads of a few pages each: the first and the last entry of ``table`` or its ``index`` (one MIN or
    MAX per query: SQLite scans everything for both at once)."""
    source = f"{table} INDEXED BY {index}" if index else table
    return f"SELECT MIN({column}) FROM {source}", f"SELECT MAX({column}) FROM {source}"


# What inserts and retention touch in each history table and its indices.
PROBES = {
    "heartbeats": (*_ends("heartbeats", "id"), *_ends("heartbeats", "console_id", "idx_heartbeats_console")),
    "transitions": (
        *_ends("transitions", "id"),
        *_ends("transitions", "console_id", "idx_transitions_console"),
        *_ends("transitions", "at", "idx_transitions_at"),
    ),
}


def last_heartbeat_before(conn: sqlite3.Connection, cutoff: float) -> int | None:
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


def delete_heartbeats_before(conn: sqlite3.Connection, cutoff: float, chunk: int) -> list[str]:
    """Delete up to ``chunk`` of the oldest heartbeats received before ``cutoff``."""
    last = last_heartbeat_before(conn, cutoff)
    if last is None:
        return []
    rows = conn.execute(
        "DELETE FROM heartbeats WHERE id IN (SELECT id FROM heartbeats WHERE id <= ? ORDER BY id LIMIT ?) "
        "RETURNING console_id",
        (last, chunk),
    ).fetchall()
    return [r[0] for r in rows]


def delete_heartbeats_beyond(conn: sqlite3.Connection, group: list[tuple[str, int]]) -> list[str]:
    """Delete, for each (console id, excess) of ``group``, that console's ``excess`` oldest heartbeats."""
    out: list[str] = []
    for cid, excess in group:
        rows = conn.execute(
            "DELETE FROM heartbeats WHERE id IN (SELECT id FROM heartbeats WHERE console_id = ? "
            "ORDER BY received_at, id LIMIT ?) RETURNING console_id",
            (cid, excess),
        ).fetchall()
        out += [r[0] for r in rows]
    return out


def delete_transitions_before(conn: sqlite3.Connection, cutoff: float, chunk: int) -> int:
    """Delete up to ``chunk`` of the oldest transitions dated before ``cutoff``."""
    cur = conn.execute(
        "DELETE FROM transitions WHERE id IN (SELECT id FROM transitions WHERE at < ? ORDER BY at LIMIT ?)",
        (cutoff, chunk),
    )
    return int(cur.rowcount)
