"""Heartbeat rows on PostgreSQL without a foreign key to consolas (schema version 3): a heartbeat batch and a
removal of one of its consoles through another node, in either order, leave no row of the removed console and
lose none of the others (pg_statements.py: the rows are written for the consoles the batch's update found,
and a removal deletes a console's heartbeats after its row)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from conftest import wait_until
from fixtures.consoles.harness import served_consoles

from supervisor_tui.consoles.batch_plan import BatchPlanner, HeartbeatOp
from supervisor_tui.consoles.console_entry import ConsoleEntry
from supervisor_tui.consoles.models import HeartbeatInput, RegistrationInput
from supervisor_tui.consoles.pg_events import NOTIFY_AFTER_COMMIT
from supervisor_tui.consoles.pg_statements import PG_SQL, one_statement
from supervisor_tui.consoles.pg_store import run_steps
from supervisor_tui.consoles.writer import Op


def _batch_statement(console_ids: list[str], path: str) -> tuple[Any, ...]:
    """A heartbeat batch of these consoles as a node plans it: one statement, or a transaction's steps."""
    now = time.time()
    entries = {cid: ConsoleEntry(cid, cid, "idle", "idle", None, now - 10, now - 10) for cid in console_ids}
    ops = [
        Op("heartbeat", HeartbeatOp(cid, HeartbeatInput("busy", None, None, None, None, None), now))
        for cid in console_ids
    ]
    planner = BatchPlanner(PG_SQL, entries, 600.0, shared=True, node="other").plan_ops(ops)
    steps = [step for step in planner.plan.steps if step[1] != NOTIFY_AFTER_COMMIT]
    if path == "one statement":
        one = one_statement(steps)
        assert one is not None
        return ("one", one)
    return ("steps", steps)


async def _run_batch(conn: asyncpg.Connection, batch: tuple[Any, ...]) -> None:
    kind, what = batch
    if kind == "one":
        await conn.fetchval(*what)
        return
    await run_steps(conn, what, [])  # in the caller's transaction


async def _remove(conn: asyncpg.Connection, cid: str) -> None:
    for sql in (PG_SQL.delete_console, PG_SQL.delete_heartbeats):
        await conn.execute(sql, cid)


@pytest.mark.parametrize("path", ["one statement", "steps"])
@pytest.mark.parametrize("first", ["batch", "removal"])
async def test_a_removal_racing_a_heartbeat_batch_leaves_no_row_of_its_console(
    tmp_path: Path, pg_cluster: Any, path: str, first: str
) -> None:
    dsn = pg_cluster.new_database()
    async with served_consoles(tmp_path, consoles__store=dsn, consoles__auth="none") as srv:
        for cid in ("kept", "removed"):
            await srv.service.register(RegistrationInput(cid, cid, "idle", None, None, None))
    batch = _batch_statement(["kept", "removed"], path)
    writer, remover, reader = [await asyncpg.connect(dsn) for _ in range(3)]
    try:
        holder, waiter = (writer, remover) if first == "batch" else (remover, writer)
        held = holder.transaction()
        await held.start()
        if first == "batch":
            await _run_batch(writer, batch)  # the console rows are locked until this commits
        else:
            await _remove(remover, "removed")

        async def second() -> None:
            async with waiter.transaction():
                if first == "batch":
                    await _remove(remover, "removed")
                else:
                    await _run_batch(writer, batch)

        task = asyncio.get_running_loop().create_task(second())
        # The second waits for the first's row lock (shown as a Lock wait of its session), then commits after it.
        await wait_until(
            lambda: reader.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = $1 AND wait_event_type = 'Lock'",
                waiter.get_server_pid(),
            ),
            timeout=10,
        )
        await held.commit()
        await asyncio.wait_for(task, 10)
        rows = await reader.fetch("SELECT console_id, count(*) FROM console_heartbeats GROUP BY console_id")
        assert {r[0]: r[1] for r in rows} == {"kept": 1}
        assert await reader.fetchval("SELECT count(*) FROM consolas WHERE console_id = 'removed'") == 0
    finally:
        for conn in (writer, remover, reader):
            await conn.close()
