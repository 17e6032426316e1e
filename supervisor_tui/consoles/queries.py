"""Reads of consoles, heartbeats and transitions on the store's reader connection (never the writer).

Every record is English; timestamps are ISO-8601 UTC strings.
"""

from __future__ import annotations

from typing import Any

import aiosqlite

from supervisor_tui.consoles.models import ALL_STATES, decode_json_text, iso

SORTS: dict[str, str] = {
    "-last_seen": "last_seen DESC, id",
    "last_seen": "last_seen ASC, id",
    "name": "name ASC, id",
    "-name": "name DESC, id",
}
CONSOLE_COLUMNS = (
    "id, name, state, reported_state, system, hostname, last_activity, last_error, current_job, "
    "first_seen, last_seen, heartbeats"
)


def console_record(row: tuple[Any, ...], inactive_after: float) -> dict[str, Any]:
    """A consoles row (CONSOLE_COLUMNS order) as the API's English record."""
    (cid, name, state, reported, system, host, last_activity, last_error, job, first, last, count) = row
    return {
        "id": cid,
        "name": name,
        "state": state,
        "reported_state": reported,
        "system": decode_json_text(system),
        "hostname": host,
        "last_activity": iso(last_activity),
        "last_error": decode_json_text(last_error),
        "current_job": job,
        "first_seen": iso(first),
        "last_seen": iso(last),
        "heartbeats": count,
        "inactive_at": None if state == "inactive" else iso(last + inactive_after),
    }


def heartbeat_record(r: tuple[Any, ...]) -> dict[str, Any]:
    """(received_at, state, last_activity, last_error JSON, current_job, system JSON) as the API's record."""
    return {
        "received_at": iso(r[0]),
        "state": r[1],
        "last_activity": iso(r[2]),
        "last_error": decode_json_text(r[3]),
        "current_job": r[4],
        "system": decode_json_text(r[5]),
    }


def transition_record(r: tuple[Any, ...]) -> dict[str, Any]:
    """(from_state, to_state, at, reason) as the API's record."""
    return {"from": r[0], "to": r[1], "at": iso(r[2]), "reason": r[3]}


def stats_record(found: dict[str, tuple[int, float | None]]) -> dict[str, Any]:
    """Count and latest activity by state (found: state -> both) with every state listed, zero when none."""
    states = [
        {"state": s, "count": found.get(s, (0, None))[0], "last_activity": iso(found.get(s, (0, None))[1])}
        for s in ALL_STATES
    ]
    return {"total": sum(c for c, _ in found.values()), "states": states}


async def list_consoles(
    db: aiosqlite.Connection,
    inactive_after: float,
    state: str | None = None,
    limit: int = 100,
    offset: int = 0,
    sort: str = "-last_seen",
) -> tuple[list[dict[str, Any]], int]:
    """One page of consoles (in a state, or all) and their total. Searches are answered from memory
    (consoles/search.py), which reads the page's rows with consoles_by_id."""
    where: list[str] = []
    params: list[Any] = []
    if state is not None:
        where.append("state = ?")
        params.append(state)
    order = SORTS[sort]
    clause = (" WHERE " + " AND ".join(where)) if where else ""
    async with db.execute(f"SELECT COUNT(*) FROM consoles{clause}", params) as cur:
        row = await cur.fetchone()
    total = int(row[0]) if row else 0
    sql = f"SELECT {CONSOLE_COLUMNS} FROM consoles{clause} ORDER BY {order} LIMIT ? OFFSET ?"
    async with db.execute(sql, [*params, limit, offset]) as cur:
        rows = list(await cur.fetchall())
    return [console_record(tuple(r), inactive_after) for r in rows], total


async def consoles_by_id(db: aiosqlite.Connection, inactive_after: float, ids: list[str]) -> list[dict[str, Any]]:
    """The records of ``ids`` (at most a page: up to 1,000), in that order; ids no longer stored are skipped."""
    if not ids:
        return []
    sql = f"SELECT {CONSOLE_COLUMNS} FROM consoles WHERE id IN ({', '.join('?' * len(ids))})"
    async with db.execute(sql, ids) as cur:
        rows = {r[0]: tuple(r) for r in await cur.fetchall()}
    return [console_record(rows[cid], inactive_after) for cid in ids if cid in rows]


async def get_console(db: aiosqlite.Connection, console_id: str, inactive_after: float) -> dict[str, Any] | None:
    async with db.execute(f"SELECT {CONSOLE_COLUMNS} FROM consoles WHERE id = ?", (console_id,)) as cur:
        row = await cur.fetchone()
    return None if row is None else console_record(tuple(row), inactive_after)


async def heartbeats(db: aiosqlite.Connection, console_id: str, limit: int) -> list[dict[str, Any]]:
    """The console's latest heartbeats, newest first."""
    sql = (
        "SELECT received_at, state, last_activity, last_error, current_job, system FROM heartbeats "
        "WHERE console_id = ? ORDER BY received_at DESC, id DESC LIMIT ?"
    )
    async with db.execute(sql, (console_id, limit)) as cur:
        rows = await cur.fetchall()
    return [heartbeat_record(tuple(r)) for r in rows]


async def transitions(db: aiosqlite.Connection, console_id: str, limit: int) -> list[dict[str, Any]]:
    """The console's latest state transitions, newest first."""
    sql = (
        "SELECT from_state, to_state, at, reason FROM transitions WHERE console_id = ? "
        "ORDER BY at DESC, id DESC LIMIT ?"
    )
    async with db.execute(sql, (console_id, limit)) as cur:
        rows = await cur.fetchall()
    return [transition_record(tuple(r)) for r in rows]


async def stats(db: aiosqlite.Connection) -> dict[str, Any]:
    """Seed 004's statistics: count and latest activity per state (every state listed, zero when none)."""
    sql = "SELECT state, COUNT(*), MAX(last_activity) FROM consoles GROUP BY state"
    async with db.execute(sql) as cur:
        rows = await cur.fetchall()
    return stats_record({r[0]: (int(r[1]), r[2]) for r in rows})
