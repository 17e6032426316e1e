"""The PostgreSQL console store's write batches run on connections of their own, not on the pool's.

The group-commit writer has at most ``batches_in_flight`` batches at once, so as many connections suffice; taking
one from this free list is a list pop, where the pool's acquire/release cost about 40-100 µs of the event loop per
batch. A connection that failed (a lost server, a restart) is dropped and the next batch opens a new one, as the
pool would: the batches fail (503 with Retry-After) until the server is reachable again.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import asyncpg


class WriteConnections:
    """At most ``size`` connections, kept open between batches; a batch beyond waits for one, as on a pool."""

    def __init__(
        self,
        dsn: str,
        size: int,
        init: Callable[[asyncpg.Connection], Awaitable[None]],
        connect_timeout: float,
        command_timeout: float,
    ) -> None:
        self._dsn = dsn
        self._free = asyncio.Semaphore(max(1, size))
        self._init = init
        self._connect_timeout = connect_timeout
        self._command_timeout = command_timeout
        self._idle: list[asyncpg.Connection] = []
        self._closed = False

    async def _connect(self) -> asyncpg.Connection:
        conn = await asyncpg.connect(self._dsn, timeout=self._connect_timeout, command_timeout=self._command_timeout)
        try:
            await self._init(conn)
        except BaseException:
            conn.terminate()
            raise
        return conn

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[asyncpg.Connection]:
        """An open connection for one batch; it is kept for the next only when the batch did not fail."""
        async with self._free:
            conn = None
            while self._idle and conn is None:
                conn = self._idle.pop()
                if conn.is_closed():
                    conn = None
            if conn is None:
                conn = await self._connect()
            try:
                yield conn
            except BaseException:
                # Whatever the error, the session may be mid-transaction or gone: never reuse it.
                conn.terminate()
                raise
            if self._closed or conn.is_in_transaction():
                await _close(conn)
            else:
                self._idle.append(conn)

    async def close(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            await _close(conn)


async def _close(conn: asyncpg.Connection) -> None:
    try:
        await conn.close(timeout=5)
    except Exception:  # closing must always finish
        conn.terminate()
