"""ConsoleService: registrations, heartbeats, inactivity, retention and reads for remote consoles (both dialects).

The current state of every console lives in memory (loaded at start), so the ingest path never reads SQLite:
it checks the console and its token in a dict, queues the heartbeat for the group-commit writer and waits for
the COMMIT. Memory is changed only after a commit, by the writer's planner, so memory and database agree.

    consoles = ConsoleService(store, bus, settings, logs)
    await consoles.start()      # after store.open()
    ...
    await consoles.stop()       # before store.close(): writes everything queued, then stops

A damaged history table (heartbeats or transitions: SQLITE_CORRUPT, found at start or by a write or read) is
reported once (``history_damaged``, and in ``damaged_history()``); from then on its rows are not written,
heartbeats and registrations are still committed and acknowledged, its reads answer ConsoleUnavailable naming
it, and retention leaves it alone. Removing a console can fail while its history cannot be deleted.

Its parts: batch_plan.py plans each write batch, console_tokens.py decides who may register or send heartbeats,
fleet_merge.py merges what other nodes of a shared store commit, reads.py answers the reads, console_log.py
words the log lines.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import secrets
import time
from collections import Counter
from typing import Any

from supervisor_tui.config import Settings
from supervisor_tui.consoles.batch_plan import (
    BatchOutcome,
    BatchPlanner,
    CallResult,
    HeartbeatAck,
    HeartbeatOp,
    RegisterOp,
    Registration,
    console_of,
)
from supervisor_tui.consoles.console_entry import ConsoleEntry
from supervisor_tui.consoles.console_log import ConsoleLog
from supervisor_tui.consoles.console_metrics import REJECT_REASONS, ConsoleCounters, ConsoleMetrics
from supervisor_tui.consoles.console_store import ConsoleStore
from supervisor_tui.consoles.console_tokens import authorize_heartbeat
from supervisor_tui.consoles.errors import ConsoleUnavailable
from supervisor_tui.consoles.fleet_merge import fold_remote, merged
from supervisor_tui.consoles.latest_activity import LatestActivity
from supervisor_tui.consoles.models import HeartbeatInput, RegistrationInput
from supervisor_tui.consoles.pg_events import Change
from supervisor_tui.consoles.reads import ConsoleReads
from supervisor_tui.consoles.recency import Recency
from supervisor_tui.consoles.search import SearchKeys
from supervisor_tui.consoles.sqlite_store import SqliteConsoleStore
from supervisor_tui.consoles.sweeper import Deadlines
from supervisor_tui.consoles.writer import GroupCommitWriter, Op, Plan, WriteFailed, WriterClosed
from supervisor_tui.core.events import ConsoleHeartbeats, ConsoleStateChanged, EventBus
from supervisor_tui.core.logs import LogHub
from supervisor_tui.core.store import Store

RETRIES_WHILE_LOST = 10  # inactivity timeouts a sweep tries to write while the store has a problem


def _unavailable(exc: WriteFailed) -> ConsoleUnavailable:
    return ConsoleUnavailable(f"{exc}; nothing was recorded, retry later")


def _first(item: tuple[float, ConsoleEntry, bool]) -> float:
    return item[0]


class ConsoleService:
    """The consoles domain: see the module docstring for the life cycle; its reads are answered by ``reads``."""

    def __init__(
        self,
        store: Store | ConsoleStore,
        bus: EventBus,
        settings: Settings,
        logs: LogHub | None = None,
        sweep_interval: float = 1.0,
        retention_interval: float = 60.0,
    ) -> None:
        # The supervisor's own database (the embedded default) or another console store (PostgreSQL).
        self.store: ConsoleStore = SqliteConsoleStore(store) if isinstance(store, Store) else store
        self._sql = self.store.sql
        self.bus = bus
        self.settings = settings
        self.logs = logs
        self.inactive_after = settings.consoles.inactive_after
        self.auth_mode = settings.consoles.auth
        self.enrollment_token = settings.consoles.enrollment_token
        self.heartbeat_retention = settings.consoles.heartbeat_retention
        self.heartbeats_per_console = settings.consoles.heartbeats_per_console
        self.transition_retention = settings.consoles.transition_retention
        self.sweep_interval = sweep_interval
        self.retention_interval = retention_interval
        self._entries: dict[str, ConsoleEntry] = {}
        self._by_state: Counter[str] = Counter()
        self._deadlines = Deadlines(self.inactive_after)
        self._recency = Recency()
        self._search = SearchKeys()
        self._latest = LatestActivity()
        self._timeout_retry: dict[str, float] = {}
        self._writer = GroupCommitWriter(
            self.store, self._plan, batches_in_flight=self.store.batches_in_flight, key_of=console_of
        )
        # Several supervisors share the store (PostgreSQL): this one's name in the changes it tells the others.
        self._shared = self.store.shared
        self.node = secrets.token_hex(8)
        self.log = ConsoleLog(logs, self.inactive_after, self.store)
        self._writer.on_damaged = self.log.damaged
        self._tasks: list[asyncio.Task[None]] = []
        self._counters = ConsoleCounters()
        self.reads = ConsoleReads(
            self.store,
            self.inactive_after,
            self._entries,
            self._by_state,
            self._deadlines,
            self._recency,
            self._search,
            self._writer,
            self._latest,
        )
        self.started = False

    # -- life cycle --------------------------------------------------------------------------------------
    async def start(self) -> None:
        """Load every console into memory, then start the writer, the inactivity sweeper and retention."""
        await self._load_view()
        if hasattr(self.store, "on_problem"):
            self.store.on_problem = self.log.store_problem
        if self._shared:
            # Listening before the writer starts: no change another node commits from now on is missed.
            await self.store.listen(self.node, self._apply_remote, self._load_view)  # type: ignore[attr-defined]
        self._writer.start()
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._sweep_loop(), name="consoles-sweeper"),
            loop.create_task(self._retention_loop(), name="consoles-retention"),
        ]
        self.started = True

    async def _load_view(self) -> None:
        """Every console from the store into memory (at start, and when a shared store's change feed was lost)."""
        rows, counts = await self.store.load(self._writer.mark_damaged)
        self._entries.clear()
        self._by_state.clear()
        self._recency.clear()
        self._search.clear()
        self._deadlines.clear()
        self._latest.clear()
        for cid, name, state, reported, token_hash, first, last, activity, host in rows:
            self._search.put(cid, name, host)
            e = ConsoleEntry(cid, name, state, reported, token_hash, first, last, counts.get(cid, 0), activity, host)
            self._entries[cid] = e
            self._latest.changed(None, e)
            self._by_state[state] += 1
            self._recency.touch(cid, last, state)
            if state != "inactive":
                self._deadlines.touch(cid, last)

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
        authorize_heartbeat(self._entries.get(console_id), console_id, token, self.auth_mode)

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

    # -- the writer's planner: runs in the event loop, turns a batch of ops into SQL steps ----------------
    def _plan(self, ops: list[Op]) -> Plan:
        planner = BatchPlanner(
            self._sql,
            self._entries,
            self.inactive_after,
            self.auth_mode,
            self.enrollment_token,
            self._shared,
            self.node,
            self.store.flip_inactive,
        ).plan_ops(ops)
        plan, batch = planner.plan, planner.outcome()

        def on_commit(results: list[Any]) -> None:
            self._committed(batch, results)

        def on_fail(exc: BaseException) -> None:
            # Timeouts that could not be written are retried by the next sweep.
            for op in ops:
                if op.kind == "timeout":
                    cid, deadline = op.payload
                    self._timeout_retry[cid] = deadline

        plan.on_commit = on_commit
        plan.on_fail = on_fail
        return plan

    def _committed(self, batch: BatchOutcome, results: list[Any]) -> None:
        """A batch is committed: memory takes its consoles, its callers get their answers, its events go out."""
        work = batch.work
        self._apply(merged(self._entries, work, batch.origins, batch.registered) if self._shared else work)
        for index in batch.flips:
            for cid, old_state, at in results[index]:
                self._flipped(cid, old_state, at)
        self._counters.accepted += batch.beats
        self._counters.registrations += batch.registrations
        for fut, value in batch.answers:
            if fut is None or fut.done():
                continue
            fut.set_result(results[value.index] if isinstance(value, CallResult) else value)
        for event in batch.events:
            self.bus.publish(event)
            self.log.event(event)
        if batch.store_transitions:
            self._publish_store_transitions(results[-1])
        if batch.beats:
            self.bus.publish(ConsoleHeartbeats(count=batch.beats, console_ids=batch.beat_ids))

    def _publish_store_transitions(self, changes: list[Change]) -> None:
        """A shared store's state transitions (pg_events' "state" changes) as the batch's updates made them to the
        rows: published once for the fleet, by this node; memory then holds each console's state as the row."""
        for _, cid, old_state, new_state, reason, at in changes:
            e = self._entries.get(cid)
            if e is not None and e.state != new_state and e.last_seen <= at:
                new = e.copy()
                new.state = new.reported_state = new_state
                self._apply({cid: new})
            event = ConsoleStateChanged(console_id=cid, from_state=old_state, to_state=new_state, reason=reason, at=at)
            self.bus.publish(event)
            self.log.event(event)

    def _flipped(self, cid: str, old_state: str, at: float, remote: bool = False) -> None:
        """The store made console ``cid`` inactive (this node's sweep, or another's when ``remote``)."""
        e = self._entries.get(cid)
        if e is not None and e.state != "inactive":
            new = e.copy()
            new.state = "inactive"
            self._apply({cid: new})
        event = ConsoleStateChanged(
            console_id=cid, from_state=old_state, to_state="inactive", reason="timeout", at=at, remote=remote
        )
        self.bus.publish(event)
        if not remote:
            self.log.event(event)

    def _apply_remote(self, changes: list[Change]) -> None:
        """Another node committed these changes (pg_events.py): update memory, publish them marked remote."""

        def flipped(cid: str, old_state: str, at: float) -> None:
            self._flipped(cid, old_state, at, remote=True)

        events, beats, beat_ids = fold_remote(changes, self._entries, self._apply, flipped)
        for event in events:
            self.bus.publish(event)
        if beats:
            self.bus.publish(ConsoleHeartbeats(count=beats, console_ids=beat_ids, remote=True))

    def _apply(self, work: dict[str, ConsoleEntry | None]) -> None:
        """Make committed changes visible: entries, counts by state, deadlines (in last-seen order)."""
        seen: list[tuple[float, ConsoleEntry, bool]] = []  # (last_seen, console, last_seen changed)
        entries, by_state, retry, latest = self._entries, self._by_state, self._timeout_retry, self._latest
        for cid, new in work.items():
            old = entries.get(cid)
            latest.changed(old, new)
            if old is not None:
                by_state[old.state] -= 1
            if new is None:
                entries.pop(cid, None)
                self._deadlines.discard(cid)
                self._recency.discard(cid)
                self._search.discard(cid)
                retry.pop(cid, None)
                continue
            entries[cid] = new
            self._search.put(cid, new.name, new.hostname)
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
        retry = self._timeout_retry
        # While the store cannot be written, a few waiting timeouts try it and the rest wait for it: planning and
        # failing every one of them each sweep cost the event loop a fifth of a core with 100,000 silent consoles.
        for cid in list(itertools.islice(retry, len(retry) if self.store.problem is None else RETRIES_WHILE_LOST)):
            due.append((cid, retry.pop(cid)))
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
                self.log.write("warning", f"console history pruning failed: {exc}", "consoles_retention_failed")

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
            ids: list[str] = await self._maintenance(self.store.prune_heartbeats_by_age(hb_cutoff, chunk))
            self._forget_rows(ids)
            done["heartbeats_by_age"] += len(ids)
            if len(ids) < chunk:
                break
        limit = self.heartbeats_per_console
        over = [(e.id, e.stored_heartbeats - limit) for e in self._entries.values() if e.stored_heartbeats > limit]
        if "heartbeats" in damaged:
            over = []
        for i in range(0, len(over), 100):
            ids = await self._maintenance(self.store.prune_heartbeats_by_count(over[i : i + 100]))
            self._forget_rows(ids)
            done["heartbeats_by_count"] += len(ids)

        while "transitions" not in damaged:
            n: int = await self._maintenance(self.store.prune_transitions(tr_cutoff, chunk))
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

    # -- reads (answered by ConsoleReads, reads.py) -----------------------------------------------------
    def exists(self, console_id: str) -> bool:
        return self.reads.exists(console_id)

    def state_of(self, console_id: str) -> str | None:
        """The console's current state from memory (None when unknown)."""
        return self.reads.state_of(console_id)

    def view_of(self, console_id: str) -> tuple[str, float, str | None] | None:
        """This node's in-memory view of a console (state, last seen, host name), None when unknown."""
        return self.reads.view_of(console_id)

    def deadline_of(self, console_id: str) -> float | None:
        """When the console goes inactive unless it is heard from (None when inactive or unknown)."""
        return self.reads.deadline_of(console_id)

    def counts_by_state(self) -> dict[str, int]:
        return self.reads.counts_by_state()

    async def list_consoles(
        self,
        state: str | None = None,
        search: str | None = None,
        limit: int = 100,
        offset: int = 0,
        sort: str = "-last_seen",
    ) -> tuple[list[dict[str, Any]], int]:
        """One page of console records (newest seen first by default) and the total matching."""
        return await self.reads.list_consoles(state, search, limit, offset, sort)

    async def get(self, console_id: str) -> dict[str, Any]:
        """One console record (ConsoleNotFound)."""
        return await self.reads.get(console_id)

    async def heartbeats(self, console_id: str, limit: int = 100) -> list[dict[str, Any]]:
        """The console's latest heartbeats, newest first (ConsoleNotFound, ConsoleUnavailable)."""
        return await self.reads.heartbeats(console_id, limit)

    async def transitions(self, console_id: str, limit: int = 100) -> list[dict[str, Any]]:
        """The console's latest state transitions, newest first (ConsoleNotFound, ConsoleUnavailable)."""
        return await self.reads.transitions(console_id, limit)

    def store_status(self) -> dict[str, Any]:
        """The console store's kind, where it is (no password) and whether it can be written now."""
        return self.reads.store_status()

    def damaged_history(self) -> dict[str, str]:
        """History tables found damaged: table -> the database's error."""
        return self.reads.damaged_history()

    async def stats(self) -> dict[str, Any]:
        """Count and latest activity by state (the Spanish console API's statistics query)."""
        return await self.reads.stats()

    # -- counters --------------------------------------------------------------------------------------
    @property
    def writes_in_flight(self) -> int:
        """Changes planned into a batch whose COMMIT has not returned yet."""
        return self._writer.in_flight

    @property
    def most_batches_in_flight(self) -> int:
        """The most write batches that were committing at once (the store's batches_in_flight at most)."""
        return self._writer.most_in_flight

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
