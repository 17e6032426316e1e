"""Reads of consoles, heartbeats and transitions in PostgreSQL: the same English records as queries.py.

Names and ids sort in byte order (COLLATE "C"), as SQLite sorts them. Searches are answered from the
supervisor's memory (consoles/search.py), which reads the page's rows with consoles_by_id.
"""

from __future__ import annotations

from typing import Any

import asyncpg

from supervisor_tui.consoles.models import ENGLISH_TO_SPANISH, SPANISH_TO_ENGLISH
from supervisor_tui.consoles.queries import (
    console_record,
    heartbeat_record,
    stats_record,
    transition_record,
)

SORTS: dict[str, str] = {
    "-last_seen": "last_seen DESC, console_id",
    "last_seen": "last_seen ASC, console_id",
    "name": 'nombre COLLATE "C" ASC, console_id',
    "-name": 'nombre COLLATE "C" DESC, console_id',
}
CONSOLE_COLUMNS = (
    "console_id, nombre, estado, reported_state, sistema::text, hostname, "
    "extract(epoch FROM reported_activity)::float8, ultimo_error::text, video_en_proceso, "
    "extract(epoch FROM created_at)::float8, extract(epoch FROM last_seen)::float8, heartbeats"
)


def _record(row: asyncpg.Record, inactive_after: float) -> dict[str, Any]:
    values = tuple(row)
    return console_record((values[0], values[1], SPANISH_TO_ENGLISH[values[2]], *values[3:12]), inactive_after)


async def list_consoles(
    pool: asyncpg.Pool,
    inactive_after: float,
    state: str | None = None,
    limit: int = 100,
    offset: int = 0,
    sort: str = "-last_seen",
) -> tuple[list[dict[str, Any]], int]:
    """One page of consoles (in a state, or all) and their total."""
    where: list[str] = []
    params: list[Any] = []
    if state is not None:
        params.append(ENGLISH_TO_SPANISH[state])
        where.append(f"estado = ${len(params)}")
    clause = (" WHERE " + " AND ".join(where)) if where else ""
    # The total as an InitPlan (one count, by index, in the page's snapshot), not count(*) OVER (): a window
    # computes every matching row's columns before LIMIT/OFFSET keep a page of them (97 ms for 20,000 rows).
    sql = (
        f"SELECT {CONSOLE_COLUMNS}, (SELECT count(*) FROM consolas{clause}) FROM consolas{clause} "
        f"ORDER BY {SORTS[sort]} "
        f"LIMIT ${len(params) + 1} OFFSET ${len(params) + 2}"
    )
    async with pool.acquire() as conn:
        rows = await conn.fetch(sql, *params, limit, offset)
        if rows:
            return [_record(r, inactive_after) for r in rows], int(rows[0][-1])
        total = await conn.fetchval(f"SELECT count(*) FROM consolas{clause}", *params)
    return [], int(total or 0)


async def consoles_by_id(pool: asyncpg.Pool, inactive_after: float, ids: list[str]) -> list[dict[str, Any]]:
    """The records of ``ids`` in that order; ids no longer stored are skipped."""
    if not ids:
        return []
    rows = await pool.fetch(f"SELECT {CONSOLE_COLUMNS} FROM consolas WHERE console_id = ANY($1::text[])", ids)
    found = {r[0]: r for r in rows}
    return [_record(found[cid], inactive_after) for cid in ids if cid in found]


async def get_console(pool: asyncpg.Pool, console_id: str, inactive_after: float) -> dict[str, Any] | None:
    row = await pool.fetchrow(f"SELECT {CONSOLE_COLUMNS} FROM consolas WHERE console_id = $1", console_id)
    return None if row is None else _record(row, inactive_after)


async def heartbeats(pool: asyncpg.Pool, console_id: str, limit: int) -> list[dict[str, Any]]:
    """The console's latest heartbeats, newest first."""
    rows = await pool.fetch(
        "SELECT extract(epoch FROM received_at)::float8, state, extract(epoch FROM last_activity)::float8, "
        "last_error::text, current_job, system::text FROM console_heartbeats WHERE console_id = $1 "
        "ORDER BY received_at DESC, id DESC LIMIT $2",
        console_id,
        limit,
    )
    return [heartbeat_record(tuple(r)) for r in rows]


async def transitions(pool: asyncpg.Pool, console_id: str, limit: int) -> list[dict[str, Any]]:
    """The console's latest state transitions, newest first."""
    rows = await pool.fetch(
        "SELECT from_state, to_state, extract(epoch FROM at)::float8, reason FROM console_transitions "
        "WHERE console_id = $1 ORDER BY at DESC, id DESC LIMIT $2",
        console_id,
        limit,
    )
    return [transition_record(tuple(r)) for r in rows]


async def stats(pool: asyncpg.Pool) -> dict[str, Any]:
    """Seed 004's statistics query (count and latest activity by estado), every state listed; the activity is what
    the consoles report (the API's last_activity, as on SQLite)."""
    rows = await pool.fetch(
        "SELECT estado, COUNT(*) as total, extract(epoch FROM MAX(reported_activity))::float8 "
        "as reported_activity_max FROM consolas GROUP BY estado"
    )
    return stats_record({SPANISH_TO_ENGLISH[r[0]]: (int(r[1]), r[2]) for r in rows})
