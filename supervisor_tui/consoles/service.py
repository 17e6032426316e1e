"""ConsoleService: registrations, heartbeats, inactivity, retention and reads for remote consoles (seed 004).

The current state of every console lives in memory (loaded at start), so the ingest path never reads SQLite:
it checks the console and its token in a dict, queues the heartbeat for the group-commit writer and waits for
the COMMIT. Memory is changed only after a commit, with what the batch planner (batch.py) planned, so memory
and database agree. The credential rules are in admission.py, the history tables' probes and retention deletes
in history.py.

    consoles = ConsoleService(store, bus, settings, logs)
    await consoles.start()      # after store.open()
    ...
    await consoles.stop()       # before store.close(): writes everything queued, then stops

A damaged history table (heartbeats or transitions: SQLITE_CORRUPT, found at start or by a write or read) is
reported once (``history_damaged``, and in ``damaged_history()``); from then on its rows are not written,
heartbeats and registrations are still committed and acknowledged, its reads answer ConsoleUnavailable naming
it, and retention leaves it alone. Removing a console can fail while its history cannot be deleted.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections import Counter
from collections.abc import Coroutine
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from supervisor_tui.config import Settings
from supervisor_tui.consoles import history, queries
from supervisor_tui.consoles.admission import Admission
from supervisor_tui.consoles.batch import (
    BatchPlanner,
    CallResult,
    ConsoleEntry,
    HeartbeatAck,
    HeartbeatOp,
    PlannedBatch,
    RegisterOp,
    Registration,
)
from supervisor_tui.consoles.errors import ConsoleNotFound, ConsoleUnavailable
from supervisor_tui.consoles.log_lines import log_line
from supervisor_tui.consoles.models import ALL_STATES, HeartbeatInput, RegistrationInput
from supervisor_tui.consoles.recency import Recency
from supervisor_tui.consoles.sweeper import Deadlines
from supervisor_tui.consoles.writer import GroupCommitWriter, Op, Plan, WriteFailed, WriterClosed, is_damage
from supervisor_tui.core.events import (
    ConsoleHeartbeats,
    EventBus,
)
from supervisor_tui.core.logs import LogHub
from supervisor_tui.core.store import Store

REJECT_REASONS = (
    "invalid_json",
    "invalid_field",
    "too_large",
    "unsupported_encoding",
    "console_not_found",
    "unauthorized",
    "forbidden",
    "unavailable",
)


@dataclass(slots=True)
class ConsoleMetrics:
    """Figures for /metrics: heartbeat counters (every refusal reason listed), console counts by state, and the
    writer's transactions."""

    heartbeats_accepted: int
    heartbeats_rejected: dict[str, int]
    registrations: int
    consoles_by_state: dict[str, int]
    write_batches: int
    write_failures: int
    history_skipped: int = 0  # rows of a damaged history table not written


@dataclass
class _Counters:
    accepted: int = 0
    registrations: int = 0
    rejected: Counter[str] = field(default_factory=Counter)


def _unavailable(exc: WriteFailed) -> ConsoleUnavailable:
    return ConsoleUnavailable(f"{exc}; nothing was recorded, retry later")


def _refuse(fut: asyncio.Future[Any] | None, exc: Exception) -> None:
    if fut is not None and not fut.done():
        fut.set_exception(exc)
        fut.exception()  # nobody may be waiting any more; don't log "exception never retrieved"


def _first(item: tuple[float, ConsoleEntry, bool]) -> float:
    return item[0]


class ConsoleService:
    """The consoles domain: see the module docstring for the life cycle."""

    def __init__(
        self,
        store: Store,
        bus: EventBus,
        settings: Settings,
        logs: LogHub | None = None,
        sweep_interval: float = 1.0,
        retention_interval: float = 60.0,
    ) -> None:
        self.store = store
        self.bus = bus
        self.settings = settings
        self.logs = logs
        self.inactive_after = float(settings.get("consoles.inactive_after"))
        self.auth_mode = str(settings.get("consoles.auth"))
        self.enrollment_token = str(settings.get("consoles.enrollment_token") or "")
        self.heartbeat_retention = float(settings.get("consoles.heartbeat_retention"))
        self.heartbeats_per_console = int(settings.get("consoles.heartbeats_per_console"))
        self.transition_retention = float(settings.get("consoles.transition_retention"))
        self.sweep_interval = sweep_interval
        self.retention_interval = retention_interval
        self._entries: dict[str, ConsoleEntry] = {}
        self._by_state: Counter[str] = Counter()
        self._deadlines = Deadlines(self.inactive_after)
        self._recency = Recency()
        self._timeout_retry: dict[str, float] = {}
        self._admission = Admission(self.auth_mode, self.enrollment_token)
        self._planner = BatchPlanner(self._entries, self.inactive_after, self._admission)
        self._writer = GroupCommitWriter(store, self._plan)
        self._writer.on_damaged = self._report_damage
        self._tasks: list[asyncio.Task[None]] = []
        self._counters = _Counters()
        self.started = False

    # -- life cycle --------------------------------------------------------------------------------------
    async def start(self) -> None:
        """Load every console into memory, then start the writer, the inactivity sweeper and retention."""
        db = self.store.writer
        async with db.execute(
            "SELECT id, name, state, reported_state, token_hash, first_seen, last_seen, last_activity, hostname "
            "FROM consoles "
            "ORDER BY last_seen"
        ) as cur:
            rows = await cur.fetchall()
        counts: dict[str, int] = {}
        await self._probe_history()
        if "heartbeats" not in self._writer.damaged:
            try:
                async with db.execute("SELECT console_id, COUNT(*) FROM heartbeats GROUP BY console_id") as cur:
                    counts = {r[0]: int(r[1]) for r in await cur.fetchall()}
            except sqlite3.DatabaseError as exc:  # damaged history must not keep the supervisor from starting
                if not is_damage(exc):
                    raise
                self._writer.mark_damaged("heartbeats", str(exc))
        self._entries.clear()
        self._by_state.clear()
        self._recency.clear()
        for cid, name, state, reported, token_hash, first, last, activity, host in rows:
            e = ConsoleEntry(cid, name, state, reported, token_hash, first, last, counts.get(cid, 0), activity, host)
            self._entries[cid] = e
            self._by_state[state] += 1
            self._recency.touch(cid, last, state)
            if state != "inactive":
                self._deadlines.touch(cid, last)
        self._writer.start()
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._sweep_loop(), name="consoles-sweeper"),
            loop.create_task(self._retention_loop(), name="consoles-retention"),
        ]
        self.started = True

    async def _probe_history(self) -> None:
        """Read the ends of each history table and its indices (a few pages each, whatever their size: a full
        PRAGMA quick_check costs seconds per million rows) so a damaged root or edge page is reported now."""
        for table, probes in history.PROBES.items():
            for sql in probes:
                try:
                    async with self.store.writer.execute(sql) as cur:
                        await cur.fetchall()
                except sqlite3.DatabaseError as exc:
                    if not is_damage(exc):
                        raise
                    self._writer.mark_damaged(table, str(exc))
                    break

    async def stop(self) -> None:
        """Stop the sweeper and retention, then write everything already queued (nothing acknowledged is lost)."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        await self._writer.stop()
        self.started = False

    # -- the ingest path ---------------------------------------------------------------------------------
    def authorize_heartbeat(self, console_id: str, token: str | None) -> None:
        """Raise unless ``console_id`` is registered and (in token mode) ``token`` is its token."""
        self._admission.check_heartbeat(console_id, self._entries.get(console_id), token)

    async def heartbeat(self, console_id: str, hb: HeartbeatInput) -> HeartbeatAck:
        """Record one heartbeat; returns once it is committed (ConsoleNotFound, ConsoleUnavailable)."""
        result: HeartbeatAck = await self._wait(self.submit_heartbeat(console_id, hb))
        return result

    def submit_heartbeat(self, console_id: str, hb: HeartbeatInput) -> asyncio.Future[Any]:
        """Queue one heartbeat without waiting (ConsoleUnavailable when shutting down): for callers that answer
        from a done-callback; ``acknowledged(future)`` then gives the ack or raises as ``heartbeat`` does."""
        return self._submit("heartbeat", HeartbeatOp(console_id, hb, time.time()))

    @staticmethod
    def acknowledged(fut: asyncio.Future[Any]) -> HeartbeatAck:
        """The outcome of a finished ``submit_heartbeat`` future (ConsoleNotFound, ConsoleUnavailable)."""
        if fut.cancelled():
            raise ConsoleUnavailable("the heartbeat was not recorded (the console store stopped); retry later")
        exc = fut.exception()
        if exc is not None:
            raise _unavailable(exc) if isinstance(exc, WriteFailed) else exc
        result: HeartbeatAck = fut.result()
        return result

    async def register(
        self, reg: RegistrationInput, token: str | None = None, enrollment_token: str | None = None
    ) -> Registration:
        """Register a console or re-register it (which needs its token: one console cannot take another's id).

        A new console needs ``consoles.enrollment_token`` when that is set (``enrollment_token``, or ``token``).
        """
        fut = self._submit("register", RegisterOp(reg, token, enrollment_token, time.time()))
        result: Registration = await self._wait(fut)
        return result

    async def remove(self, console_id: str) -> bool:
        """Delete a console with its heartbeats and transitions; False when there was no such console."""
        fut = self._submit("remove", console_id)
        removed: bool = await self._wait(fut)
        return removed

    def _submit(self, kind: str, payload: Any) -> asyncio.Future[Any]:
        try:
            fut = self._writer.submit(kind, payload)
        except WriterClosed as exc:
            raise ConsoleUnavailable(str(exc)) from None
        assert fut is not None
        return fut

    async def _wait(self, fut: asyncio.Future[Any]) -> Any:
        try:
            return await fut
        except WriteFailed as exc:
            raise _unavailable(exc) from None

    # -- the writer's planner: BatchPlanner plans the batch; its COMMIT or failure reaches memory and callers here
    def _plan(self, ops: list[Op]) -> Plan:
        batch = self._planner.plan(ops)
        for op, exc in batch.refused:
            _refuse(op.future, exc)
        plan = batch.plan
        plan.on_commit = lambda results: self._committed(batch, results)
        plan.on_fail = lambda exc: self._failed(ops)
        return plan

    def _committed(self, batch: PlannedBatch, results: list[Any]) -> None:
        self._apply(batch.consoles)
        self._counters.accepted += batch.heartbeats
        self._counters.registrations += batch.registrations
        for op, value in batch.answers:
            fut = op.future
            if fut is None or fut.done():
                continue
            if isinstance(value, CallResult):
                value = results[value.index]
            fut.set_result(value)
        for event in batch.events:
            self.bus.publish(event)
            self._log_event(event)
        if batch.heartbeats:
            self.bus.publish(ConsoleHeartbeats(count=batch.heartbeats, console_ids=tuple(batch.heard_from)))

    def _failed(self, ops: list[Op]) -> None:
        # Timeouts that could not be written are retried by the next sweep.
        for op in ops:
            if op.kind == "timeout":
                cid, deadline = op.payload
                self._timeout_retry[cid] = deadline

    def _apply(self, work: dict[str, ConsoleEntry | None]) -> None:
        """Make committed changes visible: entries, counts by state, deadlines (in last-seen order)."""
        seen: list[tuple[float, ConsoleEntry, bool]] = []  # (last_seen, console, last_seen changed)
        entries, by_state, retry = self._entries, self._by_state, self._timeout_retry
        for cid, new in work.items():
            old = entries.get(cid)
            if old is not None:
                by_state[old.state] -= 1
            if new is None:
                entries.pop(cid, None)
                self._deadlines.discard(cid)
                self._recency.discard(cid)
                retry.pop(cid, None)
                continue
            entries[cid] = new
            by_state[new.state] += 1
            if new.state == "inactive":
                self._deadlines.discard(cid)
                retry.pop(cid, None)
            moved = old is None or new.last_seen != old.last_seen
            if moved or (old is not None and new.state != old.state):
                seen.append((new.last_seen, new, moved))
        if len(seen) > 1:
            seen.sort(key=_first)
        recency, deadlines = self._recency, self._deadlines
        for _, e, moved in seen:
            recency.touch(e.id, e.last_seen, e.state)
            if moved and e.state != "inactive":
                deadlines.touch(e.id, e.last_seen)
                if retry:
                    retry.pop(e.id, None)

    # -- inactivity --------------------------------------------------------------------------------------
    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(self.sweep_interval)
            try:
                self.sweep()
            except ConsoleUnavailable:
                return

    def sweep(self, now: float | None = None) -> int:
        """Queue an inactivity for every console whose deadline has passed; returns how many were queued."""
        now = time.time() if now is None else now
        due = self._deadlines.due(now)
        if self._timeout_retry:
            due += list(self._timeout_retry.items())
            self._timeout_retry.clear()
        for cid, deadline in due:
            try:
                self._writer.submit("timeout", (cid, deadline), wait=False)
            except WriterClosed:
                raise ConsoleUnavailable("the console store is shutting down") from None
        return len(due)

    # -- retention ---------------------------------------------------------------------------------------
    async def _retention_loop(self) -> None:
        while True:
            await asyncio.sleep(self.retention_interval)
            try:
                await self.prune()
            except ConsoleUnavailable:
                if not self._writer.accepting:
                    return
            except Exception as exc:  # retention must never stop ingest; say so and try again later
                self._log("warning", f"console history pruning failed: {exc}", "consoles_retention_failed")

    async def prune(self, now: float | None = None, chunk: int = 5000) -> dict[str, int]:
        """Delete heartbeats older than the retention or beyond the per-console count, and old transitions.

        Works in chunks through the writer so ingest never waits behind one huge delete.
        """
        now = time.time() if now is None else now
        hb_cutoff = now - self.heartbeat_retention
        tr_cutoff = now - self.transition_retention
        done = {"heartbeats_by_age": 0, "heartbeats_by_count": 0, "transitions": 0}

        damaged = self._writer.damaged
        while "heartbeats" not in damaged:
            ids: list[str] = await self._maintenance(
                partial(history.delete_heartbeats_before, cutoff=hb_cutoff, chunk=chunk)
            )
            self._forget_rows(ids)
            done["heartbeats_by_age"] += len(ids)
            if len(ids) < chunk:
                break
        limit = self.heartbeats_per_console
        over = [(e.id, e.stored_heartbeats - limit) for e in self._entries.values() if e.stored_heartbeats > limit]
        if "heartbeats" in damaged:
            over = []
        for i in range(0, len(over), 100):
            group = over[i : i + 100]

            ids = await self._maintenance(partial(history.delete_heartbeats_beyond, group=group))
            self._forget_rows(ids)
            done["heartbeats_by_count"] += len(ids)

        while "transitions" not in damaged:
            n: int = await self._maintenance(partial(history.delete_transitions_before, cutoff=tr_cutoff, chunk=chunk))
            done["transitions"] += n
            if n < chunk:
                break
        return done

    async def _maintenance(self, fn: Any) -> Any:
        return await self._wait(self._submit("maintenance", fn))

    def _forget_rows(self, console_ids: list[str]) -> None:
        for cid in console_ids:
            e = self._entries.get(cid)
            if e is not None and e.stored_heartbeats > 0:
                e.stored_heartbeats -= 1

    # -- reads -------------------------------------------------------------------------------------------
    def exists(self, console_id: str) -> bool:
        return console_id in self._entries

    def state_of(self, console_id: str) -> str | None:
        """The console's current state from memory (None when unknown)."""
        e = self._entries.get(console_id)
        return None if e is None else e.state

    def deadline_of(self, console_id: str) -> float | None:
        """When the console goes inactive unless it is heard from (None when inactive or unknown)."""
        return self._deadlines.deadline(console_id)

    def counts_by_state(self) -> dict[str, int]:
        return {s: self._by_state.get(s, 0) for s in ALL_STATES}

    def count_rejection(self, reason: str) -> None:
        """The HTTP layer reports every heartbeat it refused, by reason (REJECT_REASONS)."""
        self._counters.rejected[reason] += 1

    def metrics(self) -> ConsoleMetrics:
        """Counters and gauges for /metrics."""
        return ConsoleMetrics(
            heartbeats_accepted=self._counters.accepted,
            heartbeats_rejected={r: self._counters.rejected.get(r, 0) for r in REJECT_REASONS},
            registrations=self._counters.registrations,
            consoles_by_state=self.counts_by_state(),
            write_batches=self._writer.batches,
            write_failures=self._writer.failed_batches,
            history_skipped=self._writer.history_skipped,
        )

    async def list_consoles(
        self,
        state: str | None = None,
        search: str | None = None,
        limit: int = 100,
        offset: int = 0,
        sort: str = "-last_seen",
    ) -> tuple[list[dict[str, Any]], int]:
        """One page of console records (newest seen first by default) and the total matching.

        Sorted by last seen (and not searching), the page's ids come from the in-memory order (no index on
        last_seen: see recency.py) and only those rows are read.
        """
        if search is None and sort in ("-last_seen", "last_seen"):
            ids = self._recency.page(state, limit, offset, newest_first=sort == "-last_seen")
            total = len(self._entries) if state is None else self._by_state.get(state, 0)
            return await queries.consoles_by_id(self.store.reader, self.inactive_after, ids), total
        return await queries.list_consoles(self.store.reader, self.inactive_after, state, search, limit, offset, sort)

    async def get(self, console_id: str) -> dict[str, Any]:
        """One console record (ConsoleNotFound)."""
        record = await queries.get_console(self.store.reader, console_id, self.inactive_after)
        if record is None:
            raise ConsoleNotFound(f"no console {console_id!r}")
        return record

    async def heartbeats(self, console_id: str, limit: int = 100) -> list[dict[str, Any]]:
        """The console's latest heartbeats, newest first (ConsoleNotFound)."""
        if console_id not in self._entries:
            raise ConsoleNotFound(f"no console {console_id!r}")
        return await self._history("heartbeats", queries.heartbeats(self.store.reader, console_id, limit))

    async def transitions(self, console_id: str, limit: int = 100) -> list[dict[str, Any]]:
        """The console's latest state transitions, newest first (ConsoleNotFound)."""
        if console_id not in self._entries:
            raise ConsoleNotFound(f"no console {console_id!r}")
        return await self._history("transitions", queries.transitions(self.store.reader, console_id, limit))

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

    def damaged_history(self) -> dict[str, str]:
        """History tables found damaged (their rows are no longer written): table -> the database's error."""
        return dict(self._writer.damaged)

    def _report_damage(self, table: str, error: str) -> None:
        self._log(
            "error",
            f"console history table {table} in {self.store.path} is damaged ({error}): heartbeats and "
            f"registrations are still recorded, but no more {table} history; repair the database with the "
            "supervisor stopped (sqlite3 .recover)",
            "history_damaged",
            table=table,
        )

    async def stats(self) -> dict[str, Any]:
        """Count and latest activity by state (seed 004's statistics query)."""
        return await queries.stats(self.store.reader)

    # -- logging -----------------------------------------------------------------------------------------
    def _log(self, level: str, message: str, event: str, **fields: Any) -> None:
        if self.logs is not None:
            self.logs.write("supervisor", "supervisor", message, level, event=event, **fields)

    def _log_event(self, event: Any) -> None:
        if self.logs is None:
            return
        line = log_line(event, self.inactive_after)
        if line is not None:
            level, message, name = line
            self._log(level, message, name, console=event.console_id)
