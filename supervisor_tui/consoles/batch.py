"""The batch planner: one group commit's queued console changes -> the SQL it writes and what follows its COMMIT.

    planner = BatchPlanner(entries, inactive_after, admission)   # the committed consoles, read only
    batch = planner.plan(ops)    # ops: heartbeat, timeout, register, remove, maintenance (writer.Op)
    batch.plan.steps             # one transaction for the GroupCommitWriter
    batch.refused                # (op, error): answered at once, nothing of them is written
    batch.consoles               # console id -> its entry after the batch (None: removed), applied after COMMIT
    batch.answers                # (op, value) resolved after COMMIT (CallResult(i): the i-th call's result)
    batch.events, batch.heartbeats, batch.heard_from, batch.registrations

It runs in the event loop and never touches a database, so its rules are testable on their own:

- A heartbeat of a console that is not registered (or was removed earlier in the batch) is refused
  (ConsoleNotFound). Every accepted heartbeat is one history row; the heartbeats of one console in one batch are
  one UPDATE of its row, with what sending them one by one would leave (the last state, error and job; the last
  system, hostname and activity given) and its count raised by all of them. Only the indexed columns whose
  value changes (state, last_activity, hostname) are written: each costs an index update.
- A state change is a transition row and a ConsoleStateChanged event, dated when it happened (the heartbeat's
  arrival, the registration, or the deadline for a timeout).
- A timeout makes a console inactive unless it is gone, already inactive or was heard from since the deadline
  was taken. Timeouts are written before the batch's heartbeat updates: a console that timed out and then spoke
  in the same batch ends in its reported state.
- A registration is refused by the admission rules, or creates the console, or updates it with a token.
  Registrations, removals and maintenance calls first write what is pending, so statements run in queue order.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import msgspec

from supervisor_tui.consoles.admission import Admission, hash_console_token
from supervisor_tui.consoles.errors import ConsoleForbidden, ConsoleNotFound, ConsoleUnauthorized
from supervisor_tui.consoles.models import HeartbeatInput, RegistrationInput, iso
from supervisor_tui.consoles.writer import Op, Plan
from supervisor_tui.core.events import ConsoleRegistered, ConsoleRemoved, ConsoleStateChanged

INSERT_HEARTBEAT = (
    "INSERT INTO heartbeats (console_id, received_at, state, last_activity, last_error, current_job, system) "
    "VALUES (?, ?, ?, ?, ?, ?, ?)"
)
# A heartbeat rewrites only the indexed columns that changed (state, last_activity, hostname): most heartbeats
# repeat them, and every indexed column written costs an index update in the same fsync'd transaction.
_HEARTBEAT_SET = (
    "system = COALESCE(?, system), last_error = ?, current_job = ?, last_seen = ?, heartbeats = heartbeats + ?"
)
UPDATE_FROM_HEARTBEAT: dict[tuple[bool, bool, bool], str] = {
    (state, activity, host): "UPDATE consoles SET "
    + ("state = ?, reported_state = ?, " if state else "")
    + ("last_activity = ?, " if activity else "")
    + ("hostname = ?, " if host else "")
    + _HEARTBEAT_SET
    + " WHERE id = ?"
    for state in (False, True)
    for activity in (False, True)
    for host in (False, True)
}
UPDATE_TIMEOUT = "UPDATE consoles SET state = 'inactive' WHERE id = ?"
INSERT_TRANSITION = "INSERT INTO transitions (console_id, from_state, to_state, at, reason) VALUES (?, ?, ?, ?, ?)"
INSERT_CONSOLE = (
    "INSERT INTO consoles (id, name, state, reported_state, system, hostname, last_activity, last_error, "
    "current_job, token_hash, first_seen, last_seen, heartbeats) VALUES (?, ?, ?, ?, ?, ?, ?, NULL, NULL, ?, ?, ?, 0)"
)
UPDATE_REGISTRATION = (
    "UPDATE consoles SET name = ?, state = ?, reported_state = ?, system = COALESCE(?, system), "
    "hostname = COALESCE(?, hostname), last_activity = COALESCE(?, last_activity), last_error = NULL, "
    "current_job = NULL, token_hash = ?, last_seen = ? WHERE id = ?"
)
DELETE_CONSOLE = "DELETE FROM consoles WHERE id = ?"


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
class HeartbeatOp:
    """The payload of a queued heartbeat."""

    console_id: str
    hb: HeartbeatInput
    received_at: float


@dataclass(slots=True)
class RegisterOp:
    """The payload of a queued registration, with the credentials it came with."""

    reg: RegistrationInput
    token: str | None
    enrollment: str | None
    received_at: float


@dataclass(frozen=True, slots=True)
class CallResult:
    """An answer that is the result of the batch's ``index``-th maintenance call."""

    index: int


class HeartbeatUpdate(msgspec.Struct, gc=False):
    """A console's heartbeats of one batch folded into one UPDATE of its row (no gc: it holds no containers).

    The ``old_*`` fields are what the row held before: only the indexed columns that change are written."""

    console_id: str
    state: str
    system_json: str | None
    hostname: str | None
    last_activity: float | None
    last_error_json: str | None
    current_job: str | None
    last_seen: float
    count: int
    old_state: str
    old_activity: float | None
    old_hostname: str | None

    def add(self, hb: HeartbeatInput, received_at: float) -> None:
        """One more heartbeat of the console: its values win, except the ones it does not give."""
        self.state = hb.state
        if hb.system_json is not None:
            self.system_json = hb.system_json
        if hb.hostname is not None:
            self.hostname = hb.hostname
        if hb.last_activity is not None:
            self.last_activity = hb.last_activity
        self.last_error_json, self.current_job, self.last_seen = hb.last_error_json, hb.current_job, received_at
        self.count += 1

    def statement(self) -> tuple[tuple[bool, bool, bool], tuple[Any, ...]]:
        """The UPDATE_FROM_HEARTBEAT key (which indexed columns change) and the row of parameters for it."""
        state_changed = self.state != self.old_state
        activity_changed = self.last_activity is not None and self.last_activity != self.old_activity
        host_changed = self.hostname is not None and self.hostname != self.old_hostname
        row = (
            ((self.state, self.state) if state_changed else ())
            + ((self.last_activity,) if activity_changed else ())
            + ((self.hostname,) if host_changed else ())
            + (self.system_json, self.last_error_json, self.current_job, self.last_seen, self.count, self.console_id)
        )
        return (state_changed, activity_changed, host_changed), row


@dataclass(slots=True)
class PlannedBatch:
    """What one batch writes (``plan``) and what to make of it once committed (see the module docstring)."""

    plan: Plan = field(default_factory=Plan)
    consoles: dict[str, ConsoleEntry | None] = field(default_factory=dict)
    refused: list[tuple[Op, Exception]] = field(default_factory=list)
    answers: list[tuple[Op, Any]] = field(default_factory=list)
    events: list[Any] = field(default_factory=list)
    heartbeats: int = 0
    heard_from: dict[str, None] = field(default_factory=dict)  # ids of the consoles that sent them, in order
    registrations: int = 0


class BatchPlanner:
    """Plans batches over the committed consoles ``entries``, which it reads and never changes."""

    def __init__(self, entries: Mapping[str, ConsoleEntry], inactive_after: float, admission: Admission) -> None:
        self.entries = entries
        self.inactive_after = inactive_after
        self.admission = admission

    def plan(self, ops: list[Op]) -> PlannedBatch:
        return _Planning(self, PlannedBatch()).run(ops)


class _Planning:
    """One batch being planned: the output, and the rows not yet put into steps."""

    __slots__ = ("admission", "batch", "entries", "hb_rows", "inactive_after", "timeouts", "transitions", "updates")

    def __init__(self, planner: BatchPlanner, batch: PlannedBatch) -> None:
        self.batch = batch
        self.entries, self.inactive_after, self.admission = planner.entries, planner.inactive_after, planner.admission
        self.hb_rows: list[tuple[Any, ...]] = []
        self.updates: dict[str, HeartbeatUpdate] = {}
        self.timeouts: list[tuple[Any, ...]] = []
        self.transitions: list[tuple[Any, ...]] = []

    def run(self, ops: list[Op]) -> PlannedBatch:
        for op in ops:
            kind = op.kind
            if kind == "heartbeat":
                self.heartbeat(op)
            elif kind == "timeout":
                self.timeout(*op.payload)
            elif kind == "register":
                self.register(op)
            elif kind == "remove":
                self.remove(op)
            elif kind == "maintenance":
                self.flush()
                self.batch.answers.append((op, CallResult(self.batch.plan.call(op.payload))))
        self.flush()
        return self.batch

    def current(self, cid: str) -> ConsoleEntry | None:
        """The console as this batch has left it so far (a copy: the committed entry changes after COMMIT)."""
        work = self.batch.consoles
        if cid in work:
            return work[cid]
        e = self.entries.get(cid)
        work[cid] = e2 = e.copy() if e is not None else None
        return e2

    def transition(self, cid: str, old: str | None, new: str, at: float, reason: str) -> None:
        self.transitions.append((cid, old, new, at, reason))
        self.batch.events.append(
            ConsoleStateChanged(console_id=cid, from_state=old, to_state=new, reason=reason, at=at)
        )

    def flush(self) -> None:
        """Put the pending rows into steps, timeouts before heartbeat updates (see the module docstring)."""
        plan = self.batch.plan
        plan.many(UPDATE_TIMEOUT, self.timeouts)
        plan.history("heartbeats", INSERT_HEARTBEAT, self.hb_rows)
        by_kind: dict[tuple[bool, bool, bool], list[tuple[Any, ...]]] = {}
        for update in self.updates.values():
            kind, row = update.statement()
            by_kind.setdefault(kind, []).append(row)
        for kind, rows in by_kind.items():
            plan.many(UPDATE_FROM_HEARTBEAT[kind], rows)
        plan.history("transitions", INSERT_TRANSITION, self.transitions)
        self.timeouts, self.hb_rows, self.transitions = [], [], []
        self.updates.clear()

    def heartbeat(self, op: Op) -> None:
        p: HeartbeatOp = op.payload
        e = self.current(p.console_id)
        if e is None:
            self.batch.refused.append(
                (op, ConsoleNotFound(f"console {p.console_id!r} is not registered: register it first"))
            )
            return
        hb, at = p.hb, p.received_at
        u = self.updates.get(e.id)
        if u is None:
            self.updates[e.id] = HeartbeatUpdate(
                e.id,
                hb.state,
                hb.system_json,
                hb.hostname,
                hb.last_activity,
                hb.last_error_json,
                hb.current_job,
                at,
                1,
                e.state,
                e.last_activity,
                e.hostname,
            )
        else:
            u.add(hb, at)
        if e.state != hb.state:
            self.transition(e.id, e.state, hb.state, at, "heartbeat")
        e.state = e.reported_state = hb.state
        e.last_seen = at
        if hb.last_activity is not None:
            e.last_activity = hb.last_activity
        if hb.hostname is not None:
            e.hostname = hb.hostname
        e.stored_heartbeats += 1
        self.hb_rows.append((e.id, at, hb.state, hb.last_activity, hb.last_error_json, hb.current_job, hb.system_json))
        batch = self.batch
        batch.heartbeats += 1
        batch.heard_from[e.id] = None
        batch.answers.append((op, HeartbeatAck(e.id, hb.state, at)))

    def timeout(self, cid: str, deadline: float) -> None:
        e = self.current(cid)
        if e is None or e.state == "inactive" or e.last_seen + self.inactive_after > deadline + 1e-6:
            return  # removed, already inactive, or heard from since the deadline was taken
        self.transition(cid, e.state, "inactive", deadline, "timeout")
        e.state = "inactive"
        self.timeouts.append((cid,))

    def register(self, op: Op) -> None:
        r: RegisterOp = op.payload
        reg, now = r.reg, r.received_at
        e = self.current(reg.id)
        try:
            token = self.admission.registration_token(e, r.token, r.enrollment)
        except (ConsoleUnauthorized, ConsoleForbidden) as exc:
            self.batch.refused.append((op, exc))
            return
        self.flush()
        plan, th = self.batch.plan, hash_console_token(token)
        if e is None:
            row = (
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
            plan.many(INSERT_CONSOLE, [row])
            self.transition(reg.id, None, reg.state, now, "register")
            e = self.batch.consoles[reg.id] = ConsoleEntry(
                reg.id, reg.name, reg.state, reg.state, th, now, now, 0, reg.last_activity
            )
            created = True
        else:
            fields = (reg.name, reg.state, reg.state, reg.system_json, reg.hostname, reg.last_activity)
            plan.many(UPDATE_REGISTRATION, [(*fields, th, now, reg.id)])
            if e.state != reg.state:
                self.transition(reg.id, e.state, reg.state, now, "register")
            e.name, e.state, e.reported_state, e.token_hash, e.last_seen = reg.name, reg.state, reg.state, th, now
            if reg.last_activity is not None:
                e.last_activity = reg.last_activity
            if reg.hostname is not None:
                e.hostname = reg.hostname
            created = False
        plan.history("transitions", INSERT_TRANSITION, self.transitions)
        self.transitions = []
        self.batch.registrations += 1
        self.batch.events.append(ConsoleRegistered(console_id=reg.id, name=reg.name, state=reg.state))
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
        self.batch.answers.append((op, Registration(record, token, created)))

    def remove(self, op: Op) -> None:
        cid: str = op.payload
        if self.current(cid) is None:
            self.batch.answers.append((op, False))
            return
        self.flush()
        self.batch.plan.many(DELETE_CONSOLE, [(cid,)])
        self.batch.consoles[cid] = None
        self.batch.heard_from.pop(cid, None)
        self.batch.events.append(ConsoleRemoved(console_id=cid))
        self.batch.answers.append((op, True))
