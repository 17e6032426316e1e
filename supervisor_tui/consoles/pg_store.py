"""The consoles in PostgreSQL (``consoles.store = postgresql://...``): the Spanish API's ``consolas`` table, shared by
several supervisors.

``consolas`` is the Spanish API's table as written (its columns, both indexes) so its monitoring queries run unchanged;
``estado`` holds the Spanish API's words (activa, ocupada, esperando, error, inactiva). The product's own columns are
added beside them: ``console_id`` (the id consoles register with: any id the API accepts, not only UUIDs; ``id``
is that UUID when it is one, else a UUID made from it), ``reported_state``, ``hostname``, ``token_hash``,
``last_seen``, ``heartbeats`` and ``estado_anterior`` (the estado the row's last update found: how a batch knows
the state changes it made, pg_statements.py); ``created_at`` is when the console was first seen. History is in
``console_heartbeats`` and ``console_transitions`` (states there in English, the API's words).

Durable: every batch is one transaction on one of the writer's own connections (pg_write_connections.py; reads
use the pool), with synchronous_commit on for the session, and the writer answers only after its COMMIT returned.
A lost server fails the batches (the API answers 503 with Retry-After, ``problem`` says why) until a new
connection reaches it again.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import asyncpg

from supervisor_tui.config import masked_url
from supervisor_tui.consoles import pg_queries
from supervisor_tui.consoles.console_store import ConsoleRow, Step
from supervisor_tui.consoles.errors import ConsoleUnavailable
from supervisor_tui.consoles.models import SPANISH_TO_ENGLISH
from supervisor_tui.consoles.pg_events import (
    NOTIFY_AFTER_COMMIT,
    NOTIFY_SQL,
    AfterCommitNotifier,
    Change,
    ChangeListener,
    payloads,
)
from supervisor_tui.consoles.pg_schema import MIGRATIONS, SCHEMA_VERSION
from supervisor_tui.consoles.pg_statements import PG_SQL, one_statement
from supervisor_tui.consoles.pg_write_connections import WriteConnections
from supervisor_tui.core.store import StoreError, StoreUnreachable


class _FloorRetries(logging.Filter):
    """asyncpg's pool logs a warning with a traceback each time it fails to reconnect its floor (min_size) while the
    server is away: a dozen lines in the supervisor's output at every retry (1 s, then up to 60 s apart) for as long
    as the server is down. The supervisor says it once (console_log: lost, then reachable again); asyncpg's other
    warnings pass."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Failed to restore the pool connection floor")


logging.getLogger("asyncpg.pool").addFilter(_FloorRetries())

# Two supervisors starting at once on an empty database must not both migrate it.
_MIGRATION_LOCK = 0x5375_7054_7569  # pg_advisory_xact_lock key: "SupTui"


async def _init_connection(conn: asyncpg.Connection) -> None:
    # Durability does not depend on the server's or the role's default: a 2xx means the WAL is flushed.
    await conn.execute("SET synchronous_commit = on")


async def _keep_session(conn: asyncpg.Connection) -> None:
    """The pool's reset on release: asyncpg's default (pg_advisory_unlock_all; CLOSE ALL; UNLISTEN *; RESET ALL)
    is a round trip per batch and would undo _init_connection's synchronous_commit. Nothing here leaves session
    state behind (advisory locks are transaction-scoped, LISTEN is on the listener's own connection), and asyncpg
    still rolls back a transaction left open before calling this."""


# The server is gone or not taking sessions (restarting, shutting down): the store is unavailable for now.
_CONNECTION_ERRORS = (
    OSError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    # A session the server ends in the middle of a query can leave asyncpg's protocol in this state instead
    # (MagicStack/asyncpg#1069); it is the same lost server, and the pool replaces the connection.
    asyncpg.InternalClientError,
)
T = TypeVar("T")
_COMMAND_TIMEOUT = 60.0


def _describe_error(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


# A flush's heartbeat rows and updates (their steps' second item), run with its state_transitions step.
_HEARTBEAT_STEPS = frozenset([*PG_SQL.update_from_heartbeat.values(), ("heartbeats", PG_SQL.insert_heartbeat)])


def _state_changes(text: str | None) -> list[Change]:
    """A statement's JSON list of "state" changes as a list (None: no change)."""
    return [] if text is None else list(json.loads(text))


async def run_steps(conn: asyncpg.Connection, steps: list[Step], after: list[str]) -> tuple[list[Any], bool]:
    """A batch's steps in ``conn``'s transaction (a batch that is not one statement): commit's results, and
    whether ``after`` was sent. The heartbeat rows and updates before a state_transitions step run as one
    statement that returns the state changes they made, as a re-registration does; those are told last, after
    the batch's own NOTIFYs (and after ``after`` then), as one_statement tells them."""
    results: list[Any] = []
    changes: list[Change] = []
    node = ""
    group: list[Step] = []  # a flush's heartbeat rows and updates, waiting for its state_transitions step
    for step in steps:
        kind, what, rows = step
        if what == PG_SQL.state_transitions:
            node = rows[0][0]
            if group:
                one = one_statement([*group, step], tell=False)
                assert one is not None, "a flush's heartbeat steps are one statement"
                changes += _state_changes((await conn.fetchrow(*one))[1])
                group = []
            continue
        if what in _HEARTBEAT_STEPS:
            group.append(step)
            continue
        for k, w, r in group:
            await conn.executemany(w[1] if k == "history" else w, r)
        group = []
        if what == PG_SQL.update_registration:
            for row in rows:
                change = await conn.fetchval(what, *row)
                if change is not None:
                    changes.append(json.loads(change))
        elif kind == "many":
            await conn.executemany(what, rows)
        elif kind == "history":
            await conn.executemany(what[1], rows)
        else:
            results.append(await what(conn))
    for k, w, r in group:
        await conn.executemany(w[1] if k == "history" else w, r)
    if any(step[1] == PG_SQL.state_transitions for step in steps):
        results.append(changes)
    if not changes:
        return results, False
    told = [*after, *payloads(node, changes)]
    await conn.executemany(NOTIFY_SQL, [(p,) for p in told])
    return results, bool(after)


class PgConsoleStore:
    """Consoles in a PostgreSQL database (see the module docstring)."""

    kind = "postgresql"
    sql = PG_SQL
    shared = True
    # Heartbeat batches of different consoles committing at once on two connections: one's statement runs
    # while the other's COMMIT waits for its WAL flush, and PostgreSQL flushes both with one fsync when it can.
    batches_in_flight = 2
    # timestamptz keeps microseconds: what memory answers for a stored timestamp is rounded as the column rounds it.
    timestamps_in_microseconds = True

    def __init__(self, dsn: str, pool_size: int = 8) -> None:
        self._dsn = dsn
        self._pool_size = pool_size
        self._pool: asyncpg.Pool | None = None
        self._writes: WriteConnections | None = None
        self._notifies: WriteConnections | None = None  # the notifier's, apart: it never takes a batch's
        self._problem: str | None = None
        self._problem_since: float | None = None
        self._listener: ChangeListener | None = None
        self.listener_problem: str | None = None
        self._notifier = AfterCommitNotifier(lambda: self._opened(self._notifies).connection())
        # Told when the store becomes unusable (the text) and usable again (None): the service logs it.
        self.on_problem: Callable[[str | None], None] = lambda problem: None

    @property
    def where(self) -> str:
        return masked_url(self._dsn)

    @property
    def problem(self) -> str | None:
        return self._problem or self.listener_problem

    async def listen(
        self, node: str, on_changes: Callable[[list[Change]], None], on_reconnect: Callable[[], Any]
    ) -> None:
        """Receive the other nodes' console changes (pg_events.py) until close()."""

        def problem(text: str | None) -> None:
            before = self.problem
            self.listener_problem = text
            if self.problem != before and (before is None or self.problem is None):
                self.on_problem(self.problem)

        self._listener = ChangeListener(self._dsn, node, on_changes, on_reconnect, problem)
        try:
            await self._listener.start()
        except Exception as exc:
            self._listener = None
            raise StoreUnreachable(
                f"cannot listen for console changes on {self.where}: {_describe_error(exc)}"
            ) from None

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise StoreError("the console store is not open")
        return self._pool

    async def open(self, connect_timeout: float = 10.0, setting: str = "consoles.store") -> None:
        """Connect and migrate; StoreError (one line, password masked, naming ``setting``, where the DSN came
        from) when the server cannot be used."""
        try:
            self._pool = await asyncpg.create_pool(
                self._dsn,
                min_size=1,
                max_size=self._pool_size,
                init=_init_connection,
                reset=_keep_session,
                timeout=connect_timeout,
                command_timeout=_COMMAND_TIMEOUT,
            )
        except Exception as exc:  # asyncpg raises OSError, its own errors or ValueError for a bad DSN
            raise StoreUnreachable(
                f"cannot reach the console store {self.where}: {_describe_error(exc)} ({setting})"
            ) from None
        self._writes = WriteConnections(
            self._dsn, self.batches_in_flight, _init_connection, connect_timeout, _COMMAND_TIMEOUT
        )
        self._notifies = WriteConnections(self._dsn, 1, _init_connection, connect_timeout, _COMMAND_TIMEOUT)
        try:
            await self._migrate()
        except StoreError:
            await self.close()
            raise
        except Exception as exc:
            await self.close()
            raise StoreError(f"cannot prepare the console store {self.where}: {_describe_error(exc)}") from None

    async def _migrate(self) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
            await conn.execute("CREATE TABLE IF NOT EXISTS console_schema (version INTEGER NOT NULL)")
            version = await conn.fetchval("SELECT max(version) FROM console_schema") or 0
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"the console store {self.where} has schema version {version}, newer than this program's "
                    f"{SCHEMA_VERSION}: upgrade supervisor-tui"
                )
            for target in range(version + 1, SCHEMA_VERSION + 1):
                await conn.execute(MIGRATIONS[target - 1])
                await conn.execute("INSERT INTO console_schema (version) VALUES ($1)", target)

    async def schema_version(self) -> int:
        return int(await self.pool.fetchval("SELECT max(version) FROM console_schema") or 0)

    async def close(self) -> None:
        await self._notifier.close()
        if self._notifies is not None:
            notifies, self._notifies = self._notifies, None
            await notifies.close()
        if self._listener is not None:
            listener, self._listener = self._listener, None
            await listener.close()
        if self._writes is not None:
            writes, self._writes = self._writes, None
            await writes.close()
        if self._pool is not None:
            pool, self._pool = self._pool, None
            try:
                await pool.close()
            except Exception:  # closing must always finish
                pool.terminate()

    async def load(self, mark_damaged: Callable[[str, str], None]) -> tuple[list[ConsoleRow], dict[str, int]]:
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT console_id, nombre, estado, reported_state, token_hash, "
                "extract(epoch FROM created_at)::float8, extract(epoch FROM last_seen)::float8, "
                "extract(epoch FROM reported_activity)::float8, hostname "
                "FROM consolas ORDER BY last_seen"
            )
            counts = await conn.fetch("SELECT console_id, count(*) FROM console_heartbeats GROUP BY console_id")
        consoles: list[ConsoleRow] = [
            (r[0], r[1], SPANISH_TO_ENGLISH[r[2]], r[3], r[4], r[5], r[6], r[7], r[8]) for r in rows
        ]
        return consoles, {r[0]: int(r[1]) for r in counts}

    async def commit(self, steps: list[Step]) -> list[Any]:
        after = [row[0] for kind, what, rows in steps if what == NOTIFY_AFTER_COMMIT for row in rows]
        if after:
            steps = [step for step in steps if step[1] != NOTIFY_AFTER_COMMIT]
        results, sent = await self._commit(steps, after) if steps else ([], False)
        if after and not sent:
            self._notifier.send(after)
        return results

    @property
    def write_connections(self) -> WriteConnections:
        return self._opened(self._writes)

    @staticmethod
    def _opened(connections: WriteConnections | None) -> WriteConnections:
        if connections is None:
            raise StoreError("the console store is not open")
        return connections

    async def _commit(self, steps: list[Step], after: list[str]) -> tuple[list[Any], bool]:
        """The results (commit's), and whether ``after`` was sent in the transaction: it is when the batch changed
        a console's state, ahead of that change, so that the other nodes know the console's new state from it."""
        marked = any(step[1] == PG_SQL.state_transitions for step in steps)
        one = one_statement(steps, after)
        if one is not None:
            # One round trip: the statement is its own transaction, COMMITted (WAL flushed) before it answers.
            try:
                async with self.write_connections.connection() as conn:
                    row = await conn.fetchrow(*one)
            except _CONNECTION_ERRORS as exc:
                self._lost(exc)
                raise
            self._reached()
            return ([_state_changes(row[1])] if marked else []), bool(row[2])
        try:
            async with self.write_connections.connection() as conn, conn.transaction():
                results, sent = await run_steps(conn, steps, after)
        except _CONNECTION_ERRORS as exc:
            self._lost(exc)
            raise
        self._reached()
        return results, sent

    def _lost(self, exc: BaseException) -> None:
        was = self.problem
        if self._problem is None:
            self._problem_since = time.time()
        self._problem = f"the console store {self.where} cannot be reached: {_describe_error(exc)}"
        if was is None:
            self.on_problem(self._problem)

    def _reached(self) -> None:
        if self._problem is not None:
            self._problem = None
            if self.problem is None:
                self.on_problem(None)

    # -- reads: a lost server is ConsoleUnavailable (503 with Retry-After), not an internal error ------------
    async def _read(self, read: Coroutine[Any, Any, T]) -> T:
        try:
            result = await read
        except _CONNECTION_ERRORS as exc:
            self._lost(exc)
            raise ConsoleUnavailable(f"{self._problem}; retry later") from None
        self._reached()  # the pool reconnects by itself
        return result

    async def list_consoles(
        self, inactive_after: float, state: str | None, limit: int, offset: int, sort: str
    ) -> tuple[list[dict[str, Any]], int]:
        return await self._read(pg_queries.list_consoles(self.pool, inactive_after, state, limit, offset, sort))

    async def consoles_by_id(self, inactive_after: float, ids: list[str]) -> list[dict[str, Any]]:
        return await self._read(pg_queries.consoles_by_id(self.pool, inactive_after, ids))

    async def get_console(self, console_id: str, inactive_after: float) -> dict[str, Any] | None:
        return await self._read(pg_queries.get_console(self.pool, console_id, inactive_after))

    async def heartbeats(self, console_id: str, limit: int) -> list[dict[str, Any]]:
        return await self._read(pg_queries.heartbeats(self.pool, console_id, limit))

    async def transitions(self, console_id: str, limit: int) -> list[dict[str, Any]]:
        return await self._read(pg_queries.transitions(self.pool, console_id, limit))

    async def stats(self) -> dict[str, Any]:
        return await self._read(pg_queries.stats(self.pool))

    # -- inactivity for the fleet ------------------------------------------------------------------------------
    def flip_inactive(
        self, due: list[tuple[str, float]], inactive_after: float, node: str
    ) -> Callable[[asyncpg.Connection], Any]:
        """A step that makes inactive those of ``due`` (console id, deadline) still silent since their deadline
        and not already inactive: one flip for the whole fleet, whichever nodes sweep (rows another node is
        flipping are skipped, and a flipped one no longer matches). The step records their transitions, tells the
        other nodes, and returns [(console id, from state, deadline)] for the ones this node flipped."""

        async def flip(conn: asyncpg.Connection) -> list[tuple[str, str, float]]:
            rows = await conn.fetch(
                "WITH due AS (SELECT c.console_id, c.estado, d.deadline FROM consolas c "
                "  JOIN unnest($1::text[], $2::float8[]) AS d(console_id, deadline) ON c.console_id = d.console_id "
                "  WHERE c.estado <> 'inactiva' AND c.last_seen <= to_timestamp(d.deadline - $3 + 0.000001) "
                "  FOR UPDATE OF c SKIP LOCKED) "
                "UPDATE consolas c SET estado_anterior = due.estado, estado = 'inactiva', updated_at = now() FROM due "
                "WHERE c.console_id = due.console_id RETURNING c.console_id, due.estado, due.deadline",
                [cid for cid, _ in due],
                [deadline for _, deadline in due],
                inactive_after,
            )
            flipped = [(r[0], SPANISH_TO_ENGLISH[r[1]], float(r[2])) for r in rows]
            if flipped:
                await conn.executemany(
                    self.sql.insert_transition, [(cid, old, "inactive", at, "timeout") for cid, old, at in flipped]
                )
                changes: list[Change] = [["state", cid, old, "inactive", "timeout", at] for cid, old, at in flipped]
                await conn.executemany(NOTIFY_SQL, [(p,) for p in payloads(node, changes)])
            return flipped

        return flip

    # -- maintenance -----------------------------------------------------------------------------------------
    def prune_heartbeats_by_age(self, cutoff: float, chunk: int) -> Callable[[asyncpg.Connection], Any]:
        async def by_age(conn: asyncpg.Connection) -> list[str]:
            rows = await conn.fetch(
                "DELETE FROM console_heartbeats WHERE id IN (SELECT id FROM console_heartbeats "
                "WHERE received_at < to_timestamp($1) ORDER BY id LIMIT $2) RETURNING console_id",
                cutoff,
                chunk,
            )
            return [r[0] for r in rows]

        return by_age

    def prune_heartbeats_by_count(self, excess: list[tuple[str, int]]) -> Callable[[asyncpg.Connection], Any]:
        async def by_count(conn: asyncpg.Connection) -> list[str]:
            rows = await conn.fetch(
                "DELETE FROM console_heartbeats h USING (SELECT id FROM ("
                "  SELECT x.id, row_number() OVER (PARTITION BY x.console_id ORDER BY x.received_at, x.id) AS n, "
                "  e.excess FROM console_heartbeats x "
                "  JOIN unnest($1::text[], $2::int[]) AS e(console_id, excess) ON x.console_id = e.console_id"
                ") ranked WHERE n <= excess) old WHERE h.id = old.id RETURNING h.console_id",
                [cid for cid, _ in excess],
                [n for _, n in excess],
            )
            return [r[0] for r in rows]

        return by_count

    def prune_transitions(self, cutoff: float, chunk: int) -> Callable[[asyncpg.Connection], Any]:
        async def transitions(conn: asyncpg.Connection) -> int:
            status = await conn.execute(
                "DELETE FROM console_transitions WHERE id IN (SELECT id FROM console_transitions "
                "WHERE at < to_timestamp($1) ORDER BY at LIMIT $2)",
                cutoff,
                chunk,
            )
            return int(status.split()[-1])

        return transitions
