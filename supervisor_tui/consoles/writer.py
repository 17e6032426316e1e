"""Group commit: one task writes every console change, one transaction (one fsync) per wake-up.

Requests put an operation on the queue and wait for its future; the writer takes everything queued since its
last commit, has the service turn it into SQL steps (``plan``), has the console store run them in one
transaction (``ConsoleStore.commit``), and only after COMMIT resolves the futures. With SQLite's
synchronous=FULL or PostgreSQL's synchronous_commit=on that makes every 2xx durable while paying for one
fsync per batch instead of one per heartbeat. A failed transaction is rolled back
and every future of the batch gets the error (the API answers 503, never 2xx).

History rows (``Plan.history``: heartbeats, transitions) may not sink a batch: when their table turns out to be
damaged (SQLITE_CORRUPT) the transaction is rolled back and the batch written again without them (after a
corruption error SQLite fails every later write of the same transaction, a savepoint does not help). The table
is then in ``damaged`` (``on_damaged`` is called once), later batches skip its rows (``history_skipped`` counts
them) and the consoles' current state keeps being recorded.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from supervisor_tui.consoles.console_store import ConsoleStore, Step

_SQLITE_CORRUPT = 11  # primary result code (extended codes keep it in the low byte)
_SQLITE_NOTADB = 26


def is_damage(exc: BaseException) -> bool:
    """The error says the database file is damaged (as opposed to full, locked or misused)."""
    code = getattr(exc, "sqlite_errorcode", None)
    return (
        isinstance(exc, sqlite3.DatabaseError)
        and isinstance(code, int)
        and code & 0xFF in (_SQLITE_CORRUPT, _SQLITE_NOTADB)
    )


_EVERYTHING = "\x00every console"  # the key set of a batch in flight that holds an op without a key
# With several batches allowed in flight and nothing in flight, a queue of at least this many ops per slot is
# split over the slots: the clients whose heartbeats were answered together come back together, so one batch of
# everything leaves the event loop idle while it commits and the server idle while the loop answers; in shares,
# one batch's statement runs while the loop answers another's clients (bench/heartbeats.py --pg-cluster: 5 of 5
# rounds favoured it, +5 %). A smaller queue is written whole: a batch costs a round trip and a COMMIT.
_SHARE_FROM = 4


class WriteFailed(Exception):
    """The batch holding this operation could not be committed; nothing of it was written."""


class WriterClosed(Exception):
    """The writer is stopping or stopped and accepts no more operations."""


@dataclass(slots=True)
class Op:
    """One queued change; ``payload`` is interpreted by the planner, ``future`` answers the caller."""

    kind: str
    payload: Any
    future: asyncio.Future[Any] | None = None


@dataclass
class Plan:
    """What a batch writes, and what to do once it is committed or has failed."""

    steps: list[Step] = field(default_factory=list)
    on_commit: Callable[[list[Any]], None] = lambda results: None
    on_fail: Callable[[BaseException], None] = lambda exc: None

    def many(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        if rows:
            self.steps.append(("many", sql, rows))

    def history(self, table: str, sql: str, rows: list[tuple[Any, ...]]) -> None:
        """Rows of a history table: skipped, not fatal to the batch, when that table is damaged."""
        if rows:
            self.steps.append(("history", (table, sql), rows))

    def call(self, fn: Callable[[Any], Any]) -> int:
        """Run ``fn`` inside the transaction; returns the index of its result in ``on_commit``'s list."""
        self.steps.append(("call", fn, None))
        return sum(1 for s in self.steps if s[0] == "call") - 1


Planner = Callable[[list[Op]], Plan]


class HistoryDamaged(Exception):
    """A history table of the batch is damaged: the batch was rolled back, to be written again without it."""

    def __init__(self, table: str, error: str) -> None:
        super().__init__(f"{table}: {error}")
        self.table, self.error = table, error


def run_steps(conn: sqlite3.Connection, steps: list[Step]) -> list[Any]:
    """Runs in the connection's thread: the whole batch in one hop, so no other user of the shared writer
    connection can slip a statement into (or a BEGIN before) our transaction."""
    results: list[Any] = []
    conn.execute("BEGIN IMMEDIATE")
    try:
        for kind, what, rows in steps:
            if kind == "many":
                conn.executemany(what, rows)
            elif kind == "history":
                try:
                    conn.executemany(what[1], rows)
                except sqlite3.DatabaseError as exc:
                    if is_damage(exc):
                        raise HistoryDamaged(what[0], str(exc)) from exc
                    raise
            else:
                results.append(what(conn))
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
        raise
    return results


class GroupCommitWriter:
    """The single writer task of the consoles domain (see the module docstring)."""

    def __init__(
        self,
        store: ConsoleStore,
        planner: Planner,
        max_batch: int = 5000,
        batches_in_flight: int = 1,
        key_of: Callable[[Op], str | None] = lambda op: None,
    ) -> None:
        self._store = store
        self._planner = planner
        self._max_batch = max_batch
        # With more than one batch in flight (a store that commits on several connections), a batch may start
        # while others are committing, but only with ops whose key (the console they change) no other batch in
        # flight holds, and never past an op without a key (a registration, a removal...): those wait until no
        # batch is in flight. So one console's changes are written in order, and two transactions never wait
        # on each other's rows.
        self._limit = max(1, batches_in_flight)
        self._key_of = key_of
        self._running: dict[asyncio.Task[None], set[str]] = {}
        self.most_in_flight = 1  # the most batches that were in flight at once
        self._queue: list[Op] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.batches = 0
        self.in_flight = 0  # ops planned into a batch not committed or failed yet
        self.committed_ops = 0
        self.failed_batches = 0
        self.damaged: dict[str, str] = {}  # history tables found damaged: the error
        self.history_skipped = 0  # history rows not written because their table is damaged
        self.on_damaged: Callable[[str, str], None] = lambda table, error: None

    def mark_damaged(self, table: str, error: str) -> None:
        """From now on skip ``table``'s history rows (found damaged here or by a reader)."""
        if table not in self.damaged:
            self.damaged[table] = error
            self.on_damaged(table, error)

    def start(self) -> None:
        self._closing = False
        self._task = asyncio.get_running_loop().create_task(self._run(), name="consoles-writer")

    @property
    def accepting(self) -> bool:
        return self._task is not None and not self._closing

    def submit(self, kind: str, payload: Any, wait: bool = True) -> asyncio.Future[Any] | None:
        """Queue one change; returns the future that is resolved after its COMMIT (None when not waited for)."""
        if not self.accepting:
            raise WriterClosed("the console store is shutting down")
        fut = asyncio.get_running_loop().create_future() if wait else None
        self._queue.append(Op(kind, payload, fut))
        self._wake.set()
        return fut

    async def stop(self) -> None:
        """Stop accepting, write everything already queued, then end the task."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await self._task
            self._task = None

    async def _commit(self, steps: list[Step]) -> list[Any]:
        """Write ``steps`` in one transaction; again without a history table each time one is found damaged."""
        while True:
            steps = self._without_damaged(steps)
            if not steps:
                return []
            try:
                results = await self._store.commit(steps)
            except HistoryDamaged as exc:
                self.mark_damaged(exc.table, exc.error)
                continue
            return results

    def _without_damaged(self, steps: list[Step]) -> list[Step]:
        if not self.damaged:
            return steps
        kept = [s for s in steps if s[0] != "history" or s[1][0] not in self.damaged]
        self.history_skipped += sum(_history_rows(s) for s in steps) - sum(_history_rows(s) for s in kept)
        return kept

    @property
    def queued(self) -> int:
        return len(self._queue)

    async def _run(self) -> None:
        while True:
            if not self._queue or len(self._running) >= self._limit:
                if not self._queue and self._closing:
                    if self._running:
                        await asyncio.gather(*self._running)
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            # One turn of the loop lets every request that is already readable queue its heartbeat too:
            # a bigger batch costs the same single fsync.
            await asyncio.sleep(0)
            if self._limit == 1:
                ops, self._queue = self._queue[: self._max_batch], self._queue[self._max_batch :]
                await self._write(ops)
                continue
            ops, keys = self._take()
            if not ops:  # every queued op waits for a batch in flight
                self._wake.clear()
                await self._wake.wait()
                continue
            task = asyncio.get_running_loop().create_task(self._write(ops))
            self._running[task] = keys
            self.most_in_flight = max(self.most_in_flight, len(self._running))
            task.add_done_callback(self._finished)

    def _take(self) -> tuple[list[Op], set[str]]:
        """The ops the next batch may take while others are in flight (see __init__), and their keys."""
        if not self._running:  # alone in flight: it takes anything, but leaves a share for the other slots
            share = self._max_batch
            if len(self._queue) >= _SHARE_FROM * self._limit:
                share = min(share, -(-len(self._queue) // self._limit))
            ops, self._queue = self._queue[:share], self._queue[share:]
            found = {self._key_of(op) for op in ops}
            return ops, {_EVERYTHING} if None in found else {k for k in found if k is not None}
        busy = set().union(*self._running.values())
        if _EVERYTHING in busy:
            return [], set()
        taken: list[Op] = []
        keys: set[str] = set()
        left: list[Op] = []
        for i, op in enumerate(self._queue):
            key = self._key_of(op)
            if key is None or len(taken) >= self._max_batch:
                left += self._queue[i:]
                break
            if key in busy:
                left.append(op)
                continue
            taken.append(op)
            keys.add(key)
        self._queue = left
        return taken, keys

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._running.pop(task, None)
        self._wake.set()

    async def _write(self, ops: list[Op]) -> None:
        self.in_flight += len(ops)
        try:
            await self._write_planned(ops)
        finally:
            self.in_flight -= len(ops)

    async def _write_planned(self, ops: list[Op]) -> None:
        try:
            plan = self._planner(ops)
        except Exception as exc:  # a planning bug must not kill the writer or leave callers waiting
            _fail_all(ops, WriteFailed(f"cannot plan console write: {exc}"))
            self.failed_batches += 1
            return
        try:
            results = await self._commit(plan.steps)
        except Exception as exc:
            self.failed_batches += 1
            err = WriteFailed(f"database write failed: {exc}")
            try:
                plan.on_fail(err)
            finally:
                _fail_all(ops, err)
            return
        self.batches += 1
        self.committed_ops += len(ops)
        plan.on_commit(results)


def _history_rows(step: Step) -> int:
    return len(step[2]) if step[0] == "history" else 0


def _fail_all(ops: list[Op], exc: BaseException) -> None:
    for op in ops:
        if op.future is not None and not op.future.done():
            op.future.set_exception(exc)
            # Nobody may be waiting any more (a disconnected client); don't log "exception never retrieved".
            op.future.exception()
