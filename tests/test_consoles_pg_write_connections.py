"""The PostgreSQL store's write batches run on connections of their own (pg_write_connections.py), not the pool's:
reused from one batch to the next, and replaced after the server ended one. (Their synchronous_commit:
test_consoles_pg.py::test_batches_stay_durable_when_the_database_default_is_asynchronous.)"""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest

from supervisor_tui.consoles.pg_store import PgConsoleStore


def _backend_pid_step(pids: list[int]) -> Any:
    async def step(conn: asyncpg.Connection) -> str:
        pids.append(conn.get_server_pid())
        return str(await conn.fetchval("SHOW synchronous_commit"))

    return ("call", step, None)


async def test_write_batches_reuse_their_own_connection_not_the_pools(pg_cluster: Any) -> None:
    dsn = pg_cluster.new_database()
    store = PgConsoleStore(dsn, pool_size=2)
    await store.open()
    try:
        pids: list[int] = []
        for _ in range(3):
            assert await store.commit([_backend_pid_step(pids)]) == ["on"]
        assert len(set(pids)) == 1  # one connection, kept between batches
        async with store.pool.acquire() as conn:
            assert conn.get_server_pid() not in pids  # not the pool's
    finally:
        await store.close()


async def test_a_write_connection_the_server_ended_fails_its_batch_and_the_next_batch_reconnects(
    pg_cluster: Any,
) -> None:
    dsn = pg_cluster.new_database()
    store = PgConsoleStore(dsn, pool_size=2)
    problems: list[str | None] = []
    store.on_problem = problems.append
    await store.open()
    try:
        pids: list[int] = []
        await store.commit([_backend_pid_step(pids)])

        async def ended_by_the_server(conn: asyncpg.Connection) -> None:
            await conn.execute("SELECT pg_terminate_backend(pg_backend_pid())")

        # How a session ended by the server fails depends on when asyncpg reads its end (pg_store's list).
        lost = (asyncpg.PostgresConnectionError, asyncpg.InterfaceError, asyncpg.InternalClientError, OSError)
        with pytest.raises(lost):
            await store.commit([_backend_pid_step(pids), ("call", ended_by_the_server, None)])
        assert store.problem is not None and "cannot be reached" in store.problem
        assert await store.commit([_backend_pid_step(pids)]) == ["on"]
        assert pids[0] == pids[1] != pids[2] and store.problem is None
        assert not await store.pool.fetchval("SELECT count(*) FROM pg_stat_activity WHERE pid = $1", pids[0])
        assert problems == [problems[0], None] and problems[0] is not None
    finally:
        await store.close()
