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
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import heapq
import hmac
import secrets
import sqlite3
import time
from collections import Counter
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

from supervisor_tui.config import Settings
from supervisor_tui.consoles.console_store import ConsoleStore
from supervisor_tui.consoles.errors import (
    ConsoleForbidden,
    ConsoleNotFound,
    ConsoleUnauthorized,
    ConsoleUnavailable,
)
from supervisor_tui.consoles.models import ALL_STATES, HeartbeatInput, RegistrationInput, iso
from supervisor_tui.consoles.pg_events import NOTIFY_SQL, Change, payloads
from supervisor_tui.consoles.recency import Recency
from supervisor_tui.consoles.search import SearchKeys, page_by_last_seen, page_by_name
from supervisor_tui.consoles.sqlite_store import SqliteConsoleStore
from supervisor_tui.consoles.sweeper import Deadlines
from supervisor_tui.consoles.writer import GroupCommitWriter, Op, Plan, WriteFailed, WriterClosed, is_damage
from supervisor_tui.core.events import (
    ConsoleHeartbeats,
    ConsoleRegistered,
    ConsoleRemoved,
    ConsoleStateChanged,
    EventBus,
)
from supervisor_tui.core.logs import LogHub
from supervisor_tui.core.private import new_token
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


def hash_console_token(token: str) -> str:
    """What is stored for a console's token (the same SHA-256 hex the server uses for every token)."""
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(slots=True)
class ConsoleEntry:
    """What the ingest path needs to know about a console, kept in memory."""

    id: str
    name: str
    state: str
    reported_state: str
    token_hash: str | None
    first_seen: float
    last_seen: float
    stored_heartbeats: int = 0  # rows in the heartbeats table (for the per-console retention limit)
    last_activity: float | None = None
    hostname: str | None = None

    def copy(self) -> ConsoleEntry:
        return ConsoleEntry(
            self.id,
            self.name,
            self.state,
            self.reported_state,
            self.token_hash,
            self.first_seen,
            self.last_seen,
            self.stored_heartbeats,
            self.last_activity,
            self.hostname,
        )


@dataclass(frozen=True, slots=True)
class HeartbeatAck:
    """A committed heartbeat."""

    console_id: str
    state: str
    received_at: float


@dataclass(frozen=True, slots=True)
class Registration:
    """A committed registration: the record, the console's token, and whether the console is new."""

    console: dict[str, Any]
    token: str
    created: bool


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


@dataclass(slots=True)
class _HeartbeatOp:
    console_id: str
    hb: HeartbeatInput
    received_at: float


@dataclass(slots=True)
class _RegisterOp:
    reg: RegistrationInput
    token: str | None
    enrollment: str | None
    received_at: float


def _unavailable(exc: WriteFailed) -> ConsoleUnavailable:
    return ConsoleUnavailable(f"{exc}; nothing was recorded, retry later")


def _console_of(op: Op) -> str | None:
    """The console a heartbeat changes (the writer's key: several batches in flight never share one)."""
    if op.kind != "heartbeat":
        return None
    payload: _HeartbeatOp = op.payload
    return payload.console_id


def _first(item: tuple[float, ConsoleEntry, bool]) -> float:
    return item[0]


def _working_copy(
    work: dict[str, ConsoleEntry | None],
    entries: dict[str, ConsoleEntry],
    cid: str,
    origins: dict[str, ConsoleEntry | None] | None = None,
) -> ConsoleEntry | None:
    """The batch's own copy of console ``cid`` (made on first use), or None when it is unknown or removed;
    ``origins`` keeps what each copy was made from."""
    if cid in work:
        return work[cid]
    e = entries.get(cid)
    work[cid] = e2 = e.copy() if e is not None else None
    if origins is not None:
        origins[cid] = e
    return e2


def _merge_newer(into: ConsoleEntry, new: ConsoleEntry, since: ConsoleEntry | None) -> None:
    """What a console reported in ``new`` (changed from ``since``) over ``into``, when ``new`` is not older: the
    store's rule for rows several nodes write (pg_store.py), so every node's memory ends as the row."""
    if new.last_seen < into.last_seen:
        return
    into.state, into.reported_state, into.last_seen = new.state, new.reported_state, new.last_seen
    if since is None or new.last_activity != since.last_activity:
        into.last_activity = new.last_activity
    if since is None or new.hostname != since.hostname:
        into.hostname = new.hostname


def _changes(events: list[Any], work: dict[str, ConsoleEntry | None], beats_of: dict[str, int]) -> list[Change]:
    """A batch's committed changes as the other nodes of a shared store apply them (pg_events.py)."""
    out: list[Change] = []
    for event in events:
        if isinstance(event, ConsoleRegistered):
            e = work.get(event.console_id)
            if e is not None:
                out.append(
                    ["reg", e.id, e.name, e.state, e.token_hash, e.first_seen, e.last_seen, e.last_activity, e.hostname]
                )
        elif isinstance(event, ConsoleStateChanged):
            out.append(["state", event.console_id, event.from_state, event.to_state, event.reason, event.at])
        elif isinstance(event, ConsoleRemoved):
            out.append(["rm", event.console_id])
    for cid, count in beats_of.items():
        e = work.get(cid)
        if e is not None:
            out.append(["hb", cid, e.state, e.last_seen, e.last_activity, e.hostname, count])
    return out


class ConsoleService:
    """The consoles domain: see the module docstring for the life cycle."""

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
        self._search = SearchKeys()
        self._timeout_retry: dict[str, float] = {}
        self._writer = GroupCommitWriter(
            self.store, self._plan, batches_in_flight=getattr(self.store, "batches_in_flight", 1), key_of=_console_of
        )
        # Several supervisors share the store (PostgreSQL): this one's name in the changes it tells the others.
        self._shared = self.store.shared
        self.node = secrets.token_hex(8)
        self._writer.on_damaged = self._report_damage
        self._tasks: list[asyncio.Task[None]] = []
        self._counters = _Counters()
        self.started = False

    # -- life cycle --------------------------------------------------------------------------------------
    async def start(self) -> None:
        """Load every console into memory, then start the writer, the inactivity sweeper and retention."""
        await self._load_view()
        if hasattr(self.store, "on_problem"):
            self.store.on_problem = self._report_store_problem
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
        self._deadlines = Deadlines(self.inactive_after)
        for cid, name, state, reported, token_hash, first, last, activity, host in rows:
            self._search.put(cid, name, host)
            e = ConsoleEntry(cid, name, state, reported, token_hash, first, last, counts.get(cid, 0), activity, host)
            self._entries[cid] = e
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
        entry = self._entries.get(console_id)
        if entry is None:
            raise ConsoleNotFound(f"console {console_id!r} is not registered: register it first, then send heartbeats")
        if self.auth_mode == "none":
            return
        if token is None:
            raise ConsoleUnauthorized(
                f"heartbeats for console {console_id!r} must carry its token (Authorization: Bearer <token> "
                "from the registration answer)"
            )
        if entry.token_hash is None or not hmac.compare_digest(hash_console_token(token), entry.token_hash):
            raise ConsoleForbidden(f"that token is not the token of console {console_id!r}")

    async def heartbeat(self, console_id: str, hb: HeartbeatInput) -> HeartbeatAck:
        """Record one heartbeat; returns once it is committed (ConsoleNotFound, ConsoleUnavailable)."""
        result: HeartbeatAck = await self._wait(self.submit_heartbeat(console_id, hb))
        return result

    def submit_heartbeat(self, console_id: str, hb: HeartbeatInput) -> asyncio.Future[Any]:
        """Queue one heartbeat without waiting (ConsoleUnavailable when shutting down): for callers that answer
        from a done-callback; ``acknowledged(future)`` then gives the ack or raises as ``heartbeat`` does."""
        return self._submit("heartbeat", _HeartbeatOp(console_id, hb, time.time()))

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
        fut = self._submit("register", _RegisterOp(reg, token, enrollment_token, time.time()))
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
        plan = Plan()
        sql = self._sql
        shared = self._shared
        shared_timeouts: list[tuple[str, float]] = []  # flipped by the store, once for the fleet
        flips: list[int] = []  # indices of their steps' results
        beats_of: dict[str, int] = {}  # heartbeats per console, for the other nodes (shared stores only)
        work: dict[str, ConsoleEntry | None] = {}
        origins: dict[str, ConsoleEntry | None] = {}  # what each copy in work was made from
        registered: set[str] = set()
        hb_rows: list[tuple[Any, ...]] = []
        updates: dict[str, list[Any]] = {}
        timeouts: list[tuple[Any, ...]] = []
        trans: list[tuple[Any, ...]] = []
        events: list[Any] = []
        answers: list[tuple[asyncio.Future[Any] | None, Any]] = []
        registrations = 0
        beats = 0
        beat_ids: dict[str, None] = {}
        removed: list[str] = []

        def current(cid: str) -> ConsoleEntry | None:
            return _working_copy(work, self._entries, cid, origins)

        def flush() -> None:
            # Timeouts before heartbeat updates: a console that timed out and then spoke in the same batch
            # must end in its reported state.
            plan.many(sql.update_timeout, timeouts[:])
            if shared_timeouts:
                flip = self.store.flip_inactive(shared_timeouts[:], self.inactive_after, self.node)  # type: ignore[attr-defined]
                flips.append(plan.call(flip))
                shared_timeouts.clear()
            plan.history("heartbeats", sql.insert_heartbeat, hb_rows[:])
            by_kind: dict[tuple[bool, bool, bool], list[tuple[Any, ...]]] = {}
            for u in updates.values():
                state, system, host, activity, error, job, seen, count, cid, old_state, old_activity, old_host = u
                # A shared store may have been changed by another node since: memory may be behind the row, so
                # what the heartbeat carries is always written (the store merges it by recency).
                state_changed = state != old_state or shared
                activity_changed = activity is not None and (activity != old_activity or shared)
                host_changed = host is not None and (host != old_host or shared)
                row = (
                    ((state, state) if state_changed else ())
                    + ((activity,) if activity_changed else ())
                    + ((host,) if host_changed else ())
                    + (system, error, job, seen, count, cid)
                )
                by_kind.setdefault((state_changed, activity_changed, host_changed), []).append(row)
            for kind, rows in by_kind.items():
                plan.many(sql.update_from_heartbeat[kind], rows)
            plan.history("transitions", sql.insert_transition, trans[:])
            timeouts.clear()
            hb_rows.clear()
            updates.clear()
            trans.clear()

        def fail(fut: asyncio.Future[Any] | None, exc: Exception) -> None:
            if fut is not None and not fut.done():
                fut.set_exception(exc)
                fut.exception()

        def transition(cid: str, old: str | None, new: str, at: float, reason: str) -> None:
            trans.append((cid, old, new, at, reason))
            events.append(ConsoleStateChanged(console_id=cid, from_state=old, to_state=new, reason=reason, at=at))

        for op in ops:
            if op.kind == "heartbeat":
                p: _HeartbeatOp = op.payload
                e = current(p.console_id)
                if e is None:
                    fail(op.future, ConsoleNotFound(f"console {p.console_id!r} is not registered: register it first"))
                    continue
                hb = p.hb
                u = updates.get(e.id)
                if u is None:
                    u = updates[e.id] = [
                        hb.state,
                        hb.system_json,
                        hb.hostname,
                        hb.last_activity,
                        hb.last_error_json,
                        hb.current_job,
                        p.received_at,
                        1,
                        e.id,
                        e.state,
                        e.last_activity,
                        e.hostname,
                    ]
                else:
                    u[0] = hb.state
                    # A later heartbeat of the batch replaces only what it carries: one without a host name
                    # (or without a system object) must not erase the host name an earlier one reported.
                    if hb.system_json is not None:
                        u[1] = hb.system_json
                    if hb.hostname is not None:
                        u[2] = hb.hostname
                    if hb.last_activity is not None:
                        u[3] = hb.last_activity
                    u[4], u[5], u[6] = hb.last_error_json, hb.current_job, p.received_at
                    u[7] += 1
                if e.state != hb.state:
                    transition(e.id, e.state, hb.state, p.received_at, "heartbeat")
                e.state = e.reported_state = hb.state
                e.last_seen = p.received_at
                if hb.last_activity is not None:
                    e.last_activity = hb.last_activity
                if hb.hostname is not None:
                    e.hostname = hb.hostname
                e.stored_heartbeats += 1
                hb_rows.append(
                    (
                        e.id,
                        p.received_at,
                        hb.state,
                        hb.last_activity,
                        hb.last_error_json,
                        hb.current_job,
                        hb.system_json,
                    )
                )
                beats += 1
                beat_ids[e.id] = None
                if shared:
                    beats_of[e.id] = beats_of.get(e.id, 0) + 1
                answers.append((op.future, HeartbeatAck(e.id, hb.state, p.received_at)))
            elif op.kind == "timeout":
                cid, deadline = op.payload
                # Looked at, not copied into the batch's work: a copy would be written back to memory on commit,
                # over what another node may have changed meanwhile (a shared store flips it, or not, itself).
                e = work[cid] if cid in work else self._entries.get(cid)
                if e is None or e.state == "inactive" or e.last_seen + self.inactive_after > deadline + 1e-6:
                    continue  # removed, already inactive, or heard from since the deadline was taken
                if shared:
                    shared_timeouts.append((cid, deadline))
                    continue
                e = current(cid)
                assert e is not None
                transition(cid, e.state, "inactive", deadline, "timeout")
                e.state = "inactive"
                timeouts.append((cid,))
            elif op.kind == "register":
                r: _RegisterOp = op.payload
                e = current(r.reg.id)
                try:
                    token = self._registration_token(e, r)
                except (ConsoleUnauthorized, ConsoleForbidden) as exc:
                    fail(op.future, exc)
                    continue
                flush()
                reg, now = r.reg, r.received_at
                th = hash_console_token(token)
                if e is None:
                    plan.many(
                        sql.insert_console,
                        [
                            (
                                reg.id,
                                reg.name,
                                reg.state,
                                reg.state,
                                reg.system_json,
                                reg.hostname,
                                reg.last_activity,
                                th,
                                now,
                                now,
                            )
                        ],
                    )
                    transition(reg.id, None, reg.state, now, "register")
                    e = work[reg.id] = ConsoleEntry(
                        reg.id, reg.name, reg.state, reg.state, th, now, now, 0, reg.last_activity, reg.hostname
                    )
                    created = True
                else:
                    plan.many(
                        sql.update_registration,
                        [
                            (
                                reg.name,
                                reg.state,
                                reg.state,
                                reg.system_json,
                                reg.hostname,
                                reg.last_activity,
                                th,
                                now,
                                reg.id,
                            )
                        ],
                    )
                    if e.state != reg.state:
                        transition(reg.id, e.state, reg.state, now, "register")
                    e.name, e.state, e.reported_state, e.token_hash, e.last_seen = (
                        reg.name,
                        reg.state,
                        reg.state,
                        th,
                        now,
                    )
                    if reg.last_activity is not None:
                        e.last_activity = reg.last_activity
                    if reg.hostname is not None:
                        e.hostname = reg.hostname
                    created = False
                plan.history("transitions", sql.insert_transition, trans[:])
                trans.clear()
                registrations += 1
                registered.add(reg.id)
                events.append(ConsoleRegistered(console_id=reg.id, name=reg.name, state=reg.state))
                record = {
                    "id": reg.id,
                    "name": reg.name,
                    "state": reg.state,
                    "hostname": reg.hostname,
                    "last_activity": iso(reg.last_activity),
                    "first_seen": iso(e.first_seen),
                    "last_seen": iso(now),
                    "inactive_at": iso(now + self.inactive_after),
                }
                answers.append((op.future, Registration(record, token, created)))
            elif op.kind == "remove":
                cid = op.payload
                e = current(cid)
                if e is None:
                    answers.append((op.future, False))
                    continue
                flush()
                plan.many(sql.delete_console, [(cid,)])
                work[cid] = None
                beat_ids.pop(cid, None)
                removed.append(cid)
                events.append(ConsoleRemoved(console_id=cid))
                answers.append((op.future, True))
            elif op.kind == "maintenance":
                flush()
                index = plan.call(op.payload)
                answers.append((op.future, ("result", index)))
        flush()
        if shared and (events or beats_of):
            plan.many(NOTIFY_SQL, [(p,) for p in payloads(self.node, _changes(events, work, beats_of))])

        def on_commit(results: list[Any]) -> None:
            self._apply(self._merged(work, origins, registered) if shared else work)
            for index in flips:
                for cid, old_state, at in results[index]:
                    self._flipped(cid, old_state, at)
            self._counters.accepted += beats
            self._counters.registrations += registrations
            for fut, value in answers:
                if fut is None or fut.done():
                    continue
                if isinstance(value, tuple) and len(value) == 2 and value[0] == "result":
                    value = results[value[1]]
                fut.set_result(value)
            for event in events:
                self.bus.publish(event)
                self._log_event(event)
            if beats:
                self.bus.publish(ConsoleHeartbeats(count=beats, console_ids=tuple(beat_ids)))

        def on_fail(exc: BaseException) -> None:
            # Timeouts that could not be written are retried by the next sweep.
            for op in ops:
                if op.kind == "timeout":
                    cid, deadline = op.payload
                    self._timeout_retry[cid] = deadline

        plan.on_commit = on_commit
        plan.on_fail = on_fail
        return plan

    def _merged(
        self, work: dict[str, ConsoleEntry | None], origins: dict[str, ConsoleEntry | None], registered: set[str]
    ) -> dict[str, ConsoleEntry | None]:
        """A committed batch's copies (``work``) merged into what memory holds now: another node's change may
        have been applied while the batch was in flight, and the older copy must not be written over it."""
        merged: dict[str, ConsoleEntry | None] = {}
        for cid, new in work.items():
            now = self._entries.get(cid)
            since = origins.get(cid)
            if now is since or new is None:
                merged[cid] = new  # unchanged meanwhile, or removed by this batch
            elif now is None:
                # Removed by another node after this batch committed (or this batch registered it anew).
                merged[cid] = new if since is None else None
            else:
                e = now.copy()
                if cid in registered:
                    e.name, e.token_hash, e.first_seen = new.name, new.token_hash, min(e.first_seen, new.first_seen)
                e.stored_heartbeats += new.stored_heartbeats - (since.stored_heartbeats if since is not None else 0)
                _merge_newer(e, new, since)
                merged[cid] = e
        return merged

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
            self._log_event(event)

    def _apply_remote(self, changes: list[Change]) -> None:
        """Another node committed these changes (pg_events.py): update memory, publish them marked remote."""
        work: dict[str, ConsoleEntry | None] = {}
        events: list[Any] = []
        beats = 0
        beat_ids: dict[str, None] = {}

        def current(cid: str) -> ConsoleEntry | None:
            return _working_copy(work, self._entries, cid)

        for change in changes:
            try:
                kind, cid = change[0], str(change[1])
                if kind == "reg":
                    _, _, name, state, token_hash, first, last, activity, host = change
                    old = current(cid)
                    new = ConsoleEntry(cid, name, state, state, token_hash, first, last, 0, activity, host)
                    if old is None:
                        work[cid] = new
                    else:
                        old.name, old.token_hash, old.first_seen = name, token_hash, min(old.first_seen, first)
                        _merge_newer(old, new, None)
                    events.append(ConsoleRegistered(console_id=cid, name=name, state=state, remote=True))
                elif kind == "hb":
                    _, _, state, last, activity, host, count = change
                    e = current(cid)
                    if e is None:
                        continue
                    if last >= e.last_seen:  # an older heartbeat committed late changes only the count
                        e.state = e.reported_state = state
                        e.last_seen = last
                        if activity is not None:
                            e.last_activity = activity
                        if host is not None:
                            e.hostname = host
                    e.stored_heartbeats += int(count)
                    beats += int(count)
                    beat_ids[cid] = None
                elif kind == "state":
                    _, _, old_state, new_state, reason, at = change
                    if reason == "timeout":
                        self._apply(work)
                        work = {}
                        self._flipped(cid, old_state, at, remote=True)
                        continue
                    events.append(
                        ConsoleStateChanged(
                            console_id=cid, from_state=old_state, to_state=new_state, reason=reason, at=at, remote=True
                        )
                    )
                elif kind == "rm":
                    work[cid] = None
                    beat_ids.pop(cid, None)
                    events.append(ConsoleRemoved(console_id=cid, remote=True))
            except (ValueError, TypeError, IndexError):  # not a change this version knows: skip it
                continue
        self._apply(work)
        for event in events:
            self.bus.publish(event)
        if beats:
            self.bus.publish(ConsoleHeartbeats(count=beats, console_ids=tuple(beat_ids), remote=True))

    def _registration_token(self, e: ConsoleEntry | None, r: _RegisterOp) -> str:
        """The token the console will use from now on, or raise when it may not (re-)register."""
        presented = r.token
        if e is not None:
            valid = (
                presented is not None
                and e.token_hash is not None
                and hmac.compare_digest(hash_console_token(presented), e.token_hash)
            )
            if valid:
                assert presented is not None
                return presented
            if self.auth_mode == "none":
                return new_token()
            if presented is None:
                raise ConsoleUnauthorized(
                    f"console {e.id!r} is already registered: re-registering needs its token (Authorization: Bearer)"
                )
            raise ConsoleForbidden(f"console {e.id!r} is already registered with a different token")
        if self.enrollment_token:
            offered = r.enrollment if r.enrollment is not None else presented
            if offered is None:
                raise ConsoleUnauthorized(
                    "registering a new console needs the enrollment token "
                    "(X-Enrollment-Token header or Authorization: Bearer)"
                )
            if not hmac.compare_digest(offered.encode(), self.enrollment_token.encode()):
                raise ConsoleForbidden("that is not the enrollment token")
        return new_token()

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

    # -- reads -------------------------------------------------------------------------------------------
    def exists(self, console_id: str) -> bool:
        return console_id in self._entries

    def state_of(self, console_id: str) -> str | None:
        """The console's current state from memory (None when unknown)."""
        e = self._entries.get(console_id)
        return None if e is None else e.state

    def view_of(self, console_id: str) -> tuple[str, float, str | None] | None:
        """This node's in-memory view of a console (state, last seen, host name), None when unknown."""
        e = self._entries.get(console_id)
        return None if e is None else (e.state, e.last_seen, e.hostname)

    @property
    def writes_in_flight(self) -> int:
        """Changes planned into a batch whose COMMIT has not returned yet."""
        return self._writer.in_flight

    @property
    def most_batches_in_flight(self) -> int:
        """The most write batches that were committing at once (the store's batches_in_flight at most)."""
        return self._writer.most_in_flight

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

        Sorted by last seen, or searching, the page's ids come from memory (the last-seen order of recency.py,
        the names and hosts of search.py) and only those rows are read from the store.
        """
        if search:
            matched = self._search.matches(search)
            if state is not None:
                entries = self._entries
                matched = [cid for cid in matched if entries[cid].state == state]
            if sort in ("-last_seen", "last_seen") and len(matched) * 8 < len(self._entries):
                # A few matches: sorted among themselves (walking every console's order would cost more).
                entries, sign = self._entries, -1.0 if sort == "-last_seen" else 1.0
                ids = heapq.nsmallest(offset + limit, matched, key=lambda cid: (sign * entries[cid].last_seen, cid))
                ids = ids[offset:]
            elif sort in ("-last_seen", "last_seen"):
                # Most consoles match: the last-seen order, walked only as far as the page.
                walk = self._recency.walk(state, newest_first=sort == "-last_seen")
                ids = page_by_last_seen(walk, set(matched), limit, offset)
            else:
                entries = self._entries
                ids = page_by_name(matched, lambda cid: entries[cid].name, limit, offset, sort == "-name")
            return await self.store.consoles_by_id(self.inactive_after, ids), len(matched)
        if sort in ("-last_seen", "last_seen"):
            ids = self._recency.page(state, limit, offset, newest_first=sort == "-last_seen")
            total = len(self._entries) if state is None else self._by_state.get(state, 0)
            return await self.store.consoles_by_id(self.inactive_after, ids), total
        return await self.store.list_consoles(self.inactive_after, state, search, limit, offset, sort)

    async def get(self, console_id: str) -> dict[str, Any]:
        """One console record (ConsoleNotFound)."""
        record = await self.store.get_console(console_id, self.inactive_after)
        if record is None:
            raise ConsoleNotFound(f"no console {console_id!r}")
        return record

    async def heartbeats(self, console_id: str, limit: int = 100) -> list[dict[str, Any]]:
        """The console's latest heartbeats, newest first (ConsoleNotFound)."""
        if console_id not in self._entries:
            raise ConsoleNotFound(f"no console {console_id!r}")
        return await self._history("heartbeats", self.store.heartbeats(console_id, limit))

    async def transitions(self, console_id: str, limit: int = 100) -> list[dict[str, Any]]:
        """The console's latest state transitions, newest first (ConsoleNotFound)."""
        if console_id not in self._entries:
            raise ConsoleNotFound(f"no console {console_id!r}")
        return await self._history("transitions", self.store.transitions(console_id, limit))

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

    def store_status(self) -> dict[str, Any]:
        """The console store's kind, where it is (no password) and whether it can be written now."""
        problem = self.store.problem
        return {"kind": self.store.kind, "where": self.store.where, "available": problem is None, "problem": problem}

    def _report_store_problem(self, problem: str | None) -> None:
        """Said once when the store is lost (heartbeats answer 503 meanwhile) and once when it is back; the log
        line reaches the TUI's log pane and every log follower."""
        if problem is not None:
            self._log(
                "error",
                f"the console store is lost ({problem}): heartbeats answer 503 until it is back",
                "console_store_lost",
            )
        else:
            self._log("info", f"the console store {self.store.where} is reachable again", "console_store_back")

    def damaged_history(self) -> dict[str, str]:
        """History tables found damaged (their rows are no longer written): table -> the database's error."""
        return dict(self._writer.damaged)

    def _report_damage(self, table: str, error: str) -> None:
        self._log(
            "error",
            f"console history table {table} in {self.store.where} is damaged ({error}): heartbeats and "
            f"registrations are still recorded, but no more {table} history; repair the database with the "
            "supervisor stopped (sqlite3 .recover)",
            "history_damaged",
            table=table,
        )

    async def stats(self) -> dict[str, Any]:
        """Count and latest activity by state (the Spanish console API's statistics query)."""
        return await self.store.stats()

    # -- logging -----------------------------------------------------------------------------------------
    def _log(self, level: str, message: str, event: str, **fields: Any) -> None:
        if self.logs is not None:
            self.logs.write("supervisor", "supervisor", message, level, event=event, **fields)

    def _log_event(self, event: Any) -> None:
        if self.logs is None:
            return
        if isinstance(event, ConsoleRegistered):
            self._log(
                "info",
                f"console {event.console_id} ({event.name}) registered, {event.state}",
                "console_registered",
                console=event.console_id,
            )
        elif isinstance(event, ConsoleRemoved):
            self._log("info", f"console {event.console_id} removed", "console_removed", console=event.console_id)
        elif isinstance(event, ConsoleStateChanged) and event.reason != "register":
            if event.to_state == "inactive":
                self._log(
                    "warning",
                    f"console {event.console_id} inactive: no heartbeat for {self.inactive_after:g}s "
                    f"(since {iso(event.at - self.inactive_after)})",
                    "console_inactive",
                    console=event.console_id,
                )
            elif event.from_state == "inactive":
                self._log(
                    "info",
                    f"console {event.console_id} is back, {event.to_state}",
                    "console_back",
                    console=event.console_id,
                )
            elif event.to_state == "error":
                self._log(
                    "warning", f"console {event.console_id} reports an error", "console_error", console=event.console_id
                )
