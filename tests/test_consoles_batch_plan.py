"""The batch planner alone: a batch of ops in, the transaction's steps, the callers' answers, the events and the
consoles as memory will hold them out. Pure (no database, no writer): milliseconds per test."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest

from supervisor_tui.consoles.batch_plan import (
    BatchPlanner,
    CallResult,
    HeartbeatAck,
    HeartbeatOp,
    RegisterOp,
    Registration,
)
from supervisor_tui.consoles.console_entry import ConsoleEntry
from supervisor_tui.consoles.console_tokens import hash_console_token
from supervisor_tui.consoles.errors import ConsoleForbidden, ConsoleNotFound, ConsoleUnauthorized
from supervisor_tui.consoles.models import HeartbeatInput, RegistrationInput
from supervisor_tui.consoles.pg_events import NOTIFY_AFTER_COMMIT
from supervisor_tui.consoles.pg_statements import PG_SQL
from supervisor_tui.consoles.sqlite_store import SQLITE_SQL as SQL
from supervisor_tui.consoles.writer import Op
from supervisor_tui.core.events import ConsoleRegistered, ConsoleRemoved, ConsoleStateChanged

TOKEN = "console-token"


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()  # only to make futures: nothing runs on it
    yield loop
    loop.close()


def _entries() -> dict[str, ConsoleEntry]:
    return {
        "c1": ConsoleEntry("c1", "one", "active", "active", hash_console_token(TOKEN), 10.0, 100.0, 5, 90.0, "h1"),
        "c2": ConsoleEntry("c2", "two", "idle", "idle", hash_console_token(TOKEN), 10.0, 50.0, 0, None, None),
    }


def _hb(state: str = "active", host: str | None = None, activity: float | None = None) -> HeartbeatInput:
    return HeartbeatInput(state, None, host, activity, None, "job")


def _beat(cid: str, at: float, hb: HeartbeatInput, loop: asyncio.AbstractEventLoop | None = None) -> Op:
    return Op("heartbeat", HeartbeatOp(cid, hb, at), loop.create_future() if loop else None)


def _reg(cid: str, token: str | None, at: float, loop: asyncio.AbstractEventLoop, state: str = "busy") -> Op:
    reg = RegistrationInput(cid, f"name-{cid}", state, None, "host", None)
    return Op("register", RegisterOp(reg, token, None, at), loop.create_future())


def _sqls(batch: BatchPlanner) -> list[Any]:
    return [what[1] if kind == "history" else what for kind, what, _ in batch.plan.steps]


def test_heartbeats_of_one_console_make_one_update_and_a_row_each() -> None:
    entries = _entries()
    before = entries["c1"].copy()
    ops = [_beat("c1", 200.0, _hb("busy", host="h2")), _beat("c1", 201.0, _hb("busy"))]
    batch = BatchPlanner(SQL, entries, inactive_after=30.0).plan_ops(ops)

    update = SQL.update_from_heartbeat[(True, False, True)]
    assert _sqls(batch) == [SQL.insert_heartbeat, update, SQL.insert_transition]
    _, _, rows = batch.plan.steps[0]
    assert [r[:3] for r in rows] == [("c1", 200.0, "busy"), ("c1", 201.0, "busy")]
    # One UPDATE: the latest values, two heartbeats counted, and the host of the first (the second has none).
    assert batch.plan.steps[1][2] == [("busy", "busy", "h2", None, None, "job", 201.0, 2, "c1")]
    assert batch.plan.steps[2][2] == [("c1", "active", "busy", 200.0, "heartbeat")]
    assert [a for _, a in batch.answers] == [HeartbeatAck("c1", "busy", 200.0), HeartbeatAck("c1", "busy", 201.0)]
    [event] = batch.events
    assert isinstance(event, ConsoleStateChanged)
    assert (event.console_id, event.from_state, event.to_state, event.reason, event.at) == (
        "c1",
        "active",
        "busy",
        "heartbeat",
        200.0,
    )
    work = batch.work["c1"]
    assert work is not None and (work.state, work.last_seen, work.hostname, work.stored_heartbeats) == (
        "busy",
        201.0,
        "h2",
        7,
    )
    assert (batch.beats, list(batch.beat_ids)) == (2, ["c1"])
    assert entries["c1"] == before  # memory changes only after COMMIT, by the service


def test_a_heartbeat_of_an_unknown_console_is_refused_and_writes_nothing(loop: asyncio.AbstractEventLoop) -> None:
    op = _beat("nope", 200.0, _hb(), loop)
    batch = BatchPlanner(SQL, _entries(), inactive_after=30.0).plan_ops([op])
    assert batch.plan.steps == [] and batch.answers == [] and batch.beats == 0
    assert op.future is not None and isinstance(op.future.exception(), ConsoleNotFound)


def test_a_console_that_timed_out_and_spoke_in_the_same_batch_ends_in_its_reported_state() -> None:
    ops = [Op("timeout", ("c2", 80.0)), _beat("c2", 90.0, _hb("active"))]
    batch = BatchPlanner(SQL, _entries(), inactive_after=30.0).plan_ops(ops)
    assert _sqls(batch)[:2] == [SQL.update_timeout, SQL.insert_heartbeat]
    assert batch.plan.steps[0][2] == [("c2",)]
    assert [(e.from_state, e.to_state, e.reason) for e in batch.events] == [
        ("idle", "inactive", "timeout"),
        ("inactive", "active", "heartbeat"),
    ]
    work = batch.work["c2"]
    assert work is not None and work.state == "active"


def test_a_timeout_of_a_console_heard_from_since_its_deadline_is_dropped() -> None:
    # c1 was last seen at 100: a deadline taken at 110 (when it had been seen at 80) is stale.
    batch = BatchPlanner(SQL, _entries(), inactive_after=30.0).plan_ops([Op("timeout", ("c1", 110.0))])
    assert batch.plan.steps == [] and batch.events == [] and batch.work == {}


def test_registering_a_new_console_and_re_registering_with_and_without_its_token(
    loop: asyncio.AbstractEventLoop,
) -> None:
    new, again, no_token, wrong = (
        _reg("c9", None, 300.0, loop),
        _reg("c1", TOKEN, 301.0, loop),
        _reg("c2", None, 302.0, loop),
        _reg("c2", "another", 303.0, loop),
    )
    batch = BatchPlanner(SQL, _entries(), inactive_after=30.0).plan_ops([new, again, no_token, wrong])

    kinds = _sqls(batch)
    assert kinds == [SQL.insert_console, SQL.insert_transition, SQL.update_registration, SQL.insert_transition]
    [created_row] = batch.plan.steps[0][2]
    fresh = batch.answers[0][1]
    assert isinstance(fresh, Registration) and fresh.created and fresh.token
    assert created_row[:4] == ("c9", "name-c9", "busy", "busy") and created_row[7] == hash_console_token(fresh.token)
    assert fresh.console["inactive_at"] == "1970-01-01T00:05:30.000Z"
    assert batch.answers[1][1] == Registration(batch.answers[1][1].console, TOKEN, False)  # its token kept
    assert batch.registered == {"c9", "c1"} and batch.registrations == 2
    assert [type(e) for e in batch.events] == [ConsoleStateChanged, ConsoleRegistered] * 2
    assert no_token.future is not None and isinstance(no_token.future.exception(), ConsoleUnauthorized)
    assert wrong.future is not None and isinstance(wrong.future.exception(), ConsoleForbidden)
    assert "c2" in batch.work and batch.work["c2"] == _entries()["c2"]  # looked at, not changed


def test_a_new_console_needs_the_enrollment_token(loop: asyncio.AbstractEventLoop) -> None:
    without, wrong, right = _reg("n1", None, 1.0, loop), _reg("n2", "bad", 1.0, loop), _reg("n3", "enrol", 1.0, loop)
    batch = BatchPlanner(SQL, {}, 30.0, enrollment_token="enrol").plan_ops([without, wrong, right])
    assert without.future is not None and isinstance(without.future.exception(), ConsoleUnauthorized)
    assert wrong.future is not None and isinstance(wrong.future.exception(), ConsoleForbidden)
    [(_, answer)] = batch.answers
    assert isinstance(answer, Registration) and answer.created and answer.token != "enrol"
    assert set(batch.work) == {"n1", "n2", "n3"} and batch.work["n1"] is None and batch.work["n3"] is not None


def test_removal_and_maintenance_flush_the_rows_queued_before_them() -> None:
    def step(conn: Any) -> int:
        return 0

    ops = [
        _beat("c1", 200.0, _hb()),
        Op("remove", "c2"),
        Op("remove", "missing"),
        _beat("c1", 201.0, _hb()),
        Op("maintenance", step),
    ]
    batch = BatchPlanner(SQL, _entries(), inactive_after=30.0).plan_ops(ops)
    update = SQL.update_from_heartbeat[(False, False, False)]
    assert [s[0] for s in batch.plan.steps] == ["history", "many", "many", "history", "many", "call"]
    assert _sqls(batch)[:5] == [SQL.insert_heartbeat, update, SQL.delete_console, SQL.insert_heartbeat, update]
    assert batch.plan.steps[5][1] is step
    assert [a for _, a in batch.answers][1:3] == [True, False]
    assert batch.answers[-1][1] == CallResult(0)
    assert batch.work["c2"] is None
    [event] = batch.events
    assert isinstance(event, ConsoleRemoved) and event.console_id == "c2"


def test_a_shared_store_writes_what_heartbeats_carry_flips_timeouts_itself_and_tells_the_fleet() -> None:
    flips: list[tuple[list[tuple[str, float]], float, str]] = []

    def flip_inactive(due: list[tuple[str, float]], inactive_after: float, node: str) -> Any:
        flips.append((due, inactive_after, node))
        return lambda conn: []

    ops = [Op("timeout", ("c2", 80.0)), _beat("c1", 200.0, _hb("active", host="h1", activity=90.0))]
    batch = BatchPlanner(PG_SQL, _entries(), 30.0, shared=True, node="n1", flip_inactive=flip_inactive).plan_ops(ops)

    assert flips == [([("c2", 80.0)], 30.0, "n1")] and batch.flips == [0]
    assert "c2" not in batch.work  # the store decides; memory follows its answer
    # Unchanged state, activity and host are written all the same: another node may have changed the row.
    assert _sqls(batch)[1:3] == [PG_SQL.insert_heartbeat, PG_SQL.update_from_heartbeat[(True, True, True)]]
    # The store records and tells the state changes its updates make (it answers them after the calls' results).
    assert batch.plan.steps[3] == ("many", PG_SQL.state_transitions, [("n1",)])
    assert batch.outcome().store_transitions
    # The heartbeats are told after the COMMIT, out of the durable transaction (pg_store.py sends them in it when
    # the statement found a state change, ahead of that change).
    kind, sql, rows = batch.plan.steps[-1]
    assert (kind, sql) == ("many", NOTIFY_AFTER_COMMIT)
    message = json.loads(rows[0][0])
    assert message["node"] == "n1" and message["changes"] == [["hb", "c1", "active", 200.0, 90.0, "h1", 1]]
    # A state change is not planned from memory (another node may have made it already): the store decides it.
    batch = BatchPlanner(PG_SQL, _entries(), 30.0, shared=True, node="n1", flip_inactive=flip_inactive).plan_ops(
        [_beat("c1", 201.0, _hb("error"))]
    )
    assert not batch.events
    assert _sqls(batch)[-2:] == [PG_SQL.state_transitions, NOTIFY_AFTER_COMMIT]
    assert PG_SQL.insert_transition not in _sqls(batch)
    assert [c[0] for c in json.loads(batch.plan.steps[-1][2][0][0])["changes"]] == ["hb"]
