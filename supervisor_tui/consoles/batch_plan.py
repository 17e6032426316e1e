"""BatchPlanner: one batch of the group-commit writer's ops -> the SQL steps of its transaction, the answers
its callers get once it is committed, the events to publish, and the consoles as memory will hold them.

Pure: it reads the service's memory (``entries``) and never changes it; the service applies ``work`` after the
COMMIT (service.py), so memory and database agree. Runs in the event loop, once per batch.

Step order inside a batch: pending timeouts, heartbeat rows and console updates, transitions, flushed before a
registration, a removal or a maintenance step, so each of those sees the rows queued before it.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from supervisor_tui.consoles.console_entry import ConsoleEntry, working_copy
from supervisor_tui.consoles.console_store import ConsoleSQL, FlipInactive
from supervisor_tui.consoles.console_tokens import hash_console_token, registration_token
from supervisor_tui.consoles.errors import ConsoleForbidden, ConsoleNotFound, ConsoleUnauthorized
from supervisor_tui.consoles.fleet_merge import Work, changes_of
from supervisor_tui.consoles.models import HeartbeatInput, RegistrationInput, iso
from supervisor_tui.consoles.pg_events import NOTIFY_AFTER_COMMIT, NOTIFY_SQL, payloads
from supervisor_tui.consoles.writer import Op, Plan
from supervisor_tui.core.events import ConsoleRegistered, ConsoleRemoved, ConsoleStateChanged

# A shared store's conditional inactivity flip: (console id, deadline) pairs -> a "call" step.


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
class HeartbeatOp:
    console_id: str
    hb: HeartbeatInput
    received_at: float


@dataclass(slots=True)
class RegisterOp:
    reg: RegistrationInput
    token: str | None
    enrollment: str | None
    received_at: float


@dataclass(frozen=True, slots=True)
class CallResult:
    """An answer that is the result of the batch's ``index``-th "call" step (known only after COMMIT)."""

    index: int


@dataclass(slots=True)
class BatchOutcome:
    """What the service does once a batch is committed: its consoles into memory, its answers, its events.

    Apart from the Plan on purpose: the plan's on_commit holds this, and a plan reachable from it again would be a
    reference cycle, every batch (and what it holds) then left for the garbage collector, whose passes over the
    in-memory consoles show in the ingest's p99.
    """

    work: Work
    origins: dict[str, ConsoleEntry | None]
    registered: set[str]
    events: list[Any]
    answers: list[tuple[asyncio.Future[Any] | None, Any]]
    flips: list[int]
    beats: int
    beat_ids: tuple[str, ...]
    registrations: int
    store_transitions: bool  # the commit's last result is the state transitions the store decided (pg_events')


def console_of(op: Op) -> str | None:
    """The console a heartbeat changes (the writer's key: several batches in flight never share one)."""
    if op.kind != "heartbeat":
        return None
    payload: HeartbeatOp = op.payload
    return payload.console_id


def _fail(fut: asyncio.Future[Any] | None, exc: Exception) -> None:
    if fut is not None and not fut.done():
        fut.set_exception(exc)
        fut.exception()  # answered now: the loop must not warn that nobody retrieved it


class BatchPlanner:
    """Plans one batch: ``BatchPlanner(...).plan_ops(ops)``, then ``plan`` (the steps) and ``outcome()`` (answers,
    events, work, counters; also readable here). See the module docstring."""

    def __init__(
        self,
        sql: ConsoleSQL,
        entries: dict[str, ConsoleEntry],
        inactive_after: float,
        auth_mode: str = "token",
        enrollment_token: str | None = None,
        shared: bool = False,
        node: str = "",
        flip_inactive: FlipInactive | None = None,
    ) -> None:
        self.sql = sql
        self.entries = entries
        self.inactive_after = inactive_after
        self.auth_mode = auth_mode
        self.enrollment_token = enrollment_token
        # A shared store may be changed by other nodes: inactivity is flipped by the store, once for the fleet
        # (``flip_inactive``), and the batch's changes are told to the other nodes (NOTIFY, as ``node``).
        self.shared = shared
        self.node = node
        self.flip_inactive = flip_inactive
        self.plan = Plan()
        self.work: Work = {}
        self.origins: dict[str, ConsoleEntry | None] = {}  # what each copy in work was made from
        self.registered: set[str] = set()
        self.events: list[Any] = []
        self.answers: list[tuple[asyncio.Future[Any] | None, Any]] = []
        self.flips: list[int] = []  # indices of the flip steps' results
        self.beats = 0
        self.beat_ids: dict[str, None] = {}
        self.registrations = 0
        self.store_transitions = False  # the commit's last result: the state transitions the store decided
        self.beats_of: dict[str, int] = {}  # heartbeats per console, for the other nodes (shared stores only)
        # Rows waiting for the next flush.
        self._timeouts: list[tuple[Any, ...]] = []
        self._shared_timeouts: list[tuple[str, float]] = []
        self._hb_rows: list[tuple[Any, ...]] = []
        self._updates: dict[str, list[Any]] = {}
        self._trans: list[tuple[Any, ...]] = []

    def plan_ops(self, ops: list[Op]) -> BatchPlanner:
        heartbeat = self._heartbeat  # nearly every op of a batch: bound once
        for op in ops:
            kind = op.kind
            if kind == "heartbeat":
                heartbeat(op.payload, op.future)
            elif kind == "timeout":
                self._timeout(*op.payload)
            elif kind == "register":
                self._register(op.payload, op.future)
            elif kind == "remove":
                self._remove(op.payload, op.future)
            elif kind == "maintenance":
                self._flush()
                self.answers.append((op.future, CallResult(self.plan.call(op.payload))))
        self._flush()
        if self.shared and (self.events or self.beats_of):
            changes = changes_of(self.events, self.work, self.beats_of)
            # Registrations, removals and state changes are told in their own transaction (delivered only if it
            # commits); heartbeats alone after it (pg_events.py says why, and what that costs).
            notify = NOTIFY_SQL if self.events else NOTIFY_AFTER_COMMIT
            self.plan.many(notify, [(p,) for p in payloads(self.node, changes)])
        return self

    def outcome(self) -> BatchOutcome:
        """What the planned batch does once committed (after ``plan_ops``)."""
        return BatchOutcome(
            self.work,
            self.origins,
            self.registered,
            self.events,
            self.answers,
            self.flips,
            self.beats,
            tuple(self.beat_ids),
            self.registrations,
            self.store_transitions,
        )

    def _current(self, cid: str) -> ConsoleEntry | None:
        return working_copy(self.work, self.entries, cid, self.origins)

    def _transition(self, cid: str, old: str | None, new: str, at: float, reason: str) -> None:
        self._trans.append((cid, old, new, at, reason))
        self.events.append(ConsoleStateChanged(console_id=cid, from_state=old, to_state=new, reason=reason, at=at))

    def _heartbeat(self, p: HeartbeatOp, fut: asyncio.Future[Any] | None) -> None:
        cid, work = p.console_id, self.work
        e = work[cid] if cid in work else working_copy(work, self.entries, cid, self.origins)
        if e is None:
            _fail(fut, ConsoleNotFound(f"console {p.console_id!r} is not registered: register it first"))
            return
        hb, at = p.hb, p.received_at
        u = self._updates.get(e.id)
        if u is None:
            # The console's one UPDATE of the batch: the latest values, the count, and what memory held before.
            self._updates[e.id] = [
                hb.state,
                hb.system_json,
                hb.hostname,
                hb.last_activity,
                hb.last_error_json,
                hb.current_job,
                at,
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
            u[4], u[5], u[6] = hb.last_error_json, hb.current_job, at
            u[7] += 1
        if e.state != hb.state and not self.shared:  # a shared store decides it (state_transitions)
            self._transition(e.id, e.state, hb.state, at, "heartbeat")
        e.state = e.reported_state = hb.state
        e.last_seen = at
        if hb.last_activity is not None:
            e.last_activity = hb.last_activity
        if hb.hostname is not None:
            e.hostname = hb.hostname
        e.stored_heartbeats += 1
        self._hb_rows.append((e.id, at, hb.state, hb.last_activity, hb.last_error_json, hb.current_job, hb.system_json))
        self.beats += 1
        self.beat_ids[e.id] = None
        if self.shared:
            self.beats_of[e.id] = self.beats_of.get(e.id, 0) + 1
        self.answers.append((fut, HeartbeatAck(e.id, hb.state, at)))

    def _timeout(self, cid: str, deadline: float) -> None:
        # Looked at, not copied into the batch's work: a copy would be written back to memory on commit,
        # over what another node may have changed meanwhile (a shared store flips it, or not, itself).
        e = self.work[cid] if cid in self.work else self.entries.get(cid)
        if e is None or e.state == "inactive" or e.last_seen + self.inactive_after > deadline + 1e-6:
            return  # removed, already inactive, or heard from since the deadline was taken
        if self.shared:
            self._shared_timeouts.append((cid, deadline))
            return
        e = self._current(cid)
        assert e is not None
        self._transition(cid, e.state, "inactive", deadline, "timeout")
        e.state = "inactive"
        self._timeouts.append((cid,))

    def _register(self, r: RegisterOp, fut: asyncio.Future[Any] | None) -> None:
        e = self._current(r.reg.id)
        try:
            token = registration_token(e, r.token, r.enrollment, self.auth_mode, self.enrollment_token)
        except (ConsoleUnauthorized, ConsoleForbidden) as exc:
            _fail(fut, exc)
            return
        self._flush()
        sql, reg, now = self.sql, r.reg, r.received_at
        th = hash_console_token(token)
        if e is None:
            row = (reg.id, reg.name, reg.state, reg.state, reg.system_json, reg.hostname, reg.last_activity, th, now)
            self.plan.many(sql.insert_console, [(*row, now)])
            self._transition(reg.id, None, reg.state, now, "register")
            e = self.work[reg.id] = ConsoleEntry(
                reg.id, reg.name, reg.state, reg.state, th, now, now, 0, reg.last_activity, reg.hostname
            )
            created = True
        else:
            update = (reg.name, reg.state, reg.state, reg.system_json, reg.hostname, reg.last_activity, th, now, reg.id)
            self.plan.many(sql.update_registration, [update])
            if self.shared:  # the row may have changed since memory heard: the store decides
                self._store_decides_transitions()
            elif e.state != reg.state:
                self._transition(reg.id, e.state, reg.state, now, "register")
            e.name, e.state, e.reported_state, e.token_hash, e.last_seen = reg.name, reg.state, reg.state, th, now
            if reg.last_activity is not None:
                e.last_activity = reg.last_activity
            if reg.hostname is not None:
                e.hostname = reg.hostname
            created = False
        self.plan.history("transitions", sql.insert_transition, self._trans)
        self._trans = []
        self.registrations += 1
        self.registered.add(reg.id)
        self.events.append(ConsoleRegistered(console_id=reg.id, name=reg.name, state=reg.state))
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
        self.answers.append((fut, Registration(record, token, created)))

    def _remove(self, cid: str, fut: asyncio.Future[Any] | None) -> None:
        if self._current(cid) is None:
            self.answers.append((fut, False))
            return
        self._flush()
        self.plan.many(self.sql.delete_console, [(cid,)])
        if self.sql.delete_heartbeats is not None:
            self.plan.many(self.sql.delete_heartbeats, [(cid,)])
        self.work[cid] = None
        self.beat_ids.pop(cid, None)
        self.events.append(ConsoleRemoved(console_id=cid))
        self.answers.append((fut, True))

    def _store_decides_transitions(self) -> None:
        """The store records the state changes the steps before this one made (a shared store's)."""
        assert self.sql.state_transitions is not None, "a shared store decides the state transitions"
        self.plan.many(self.sql.state_transitions, [(self.node,)])
        self.store_transitions = True

    def _flush(self) -> None:
        """The pending rows as steps. Timeouts before heartbeat updates: a console that timed out and then spoke
        in the same batch must end in its reported state."""
        plan, sql, shared = self.plan, self.sql, self.shared
        plan.many(sql.update_timeout, self._timeouts)
        if self._shared_timeouts:
            assert self.flip_inactive is not None, "a shared store flips inactivity itself"
            self.flips.append(plan.call(self.flip_inactive(self._shared_timeouts[:], self.inactive_after, self.node)))
            self._shared_timeouts.clear()
        plan.history("heartbeats", sql.insert_heartbeat, self._hb_rows)
        by_kind: dict[tuple[bool, bool, bool], list[tuple[Any, ...]]] = {}
        for u in self._updates.values():
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
        if shared and by_kind:
            # Another node may have changed these consoles since memory heard: the state changes are the ones the
            # updates made to the rows, which the store records, tells the other nodes and returns.
            self._store_decides_transitions()
        plan.history("transitions", sql.insert_transition, self._trans)
        # The steps keep the lists they were given: the next rows go into new ones.
        self._timeouts, self._hb_rows, self._trans = [], [], []
        self._updates.clear()
