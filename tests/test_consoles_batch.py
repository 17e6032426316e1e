"""The batch planner's rules (state transitions, history rows, one update per console, refusals, statement
order) on in-memory consoles, and several changes of one console in one group commit written as if they had
come one by one."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import httpx
from fixtures.consoles.harness import served_consoles

from supervisor_tui.consoles.admission import Admission, hash_console_token
from supervisor_tui.consoles.batch import (
    DELETE_CONSOLE,
    INSERT_CONSOLE,
    INSERT_HEARTBEAT,
    INSERT_TRANSITION,
    UPDATE_FROM_HEARTBEAT,
    UPDATE_REGISTRATION,
    UPDATE_TIMEOUT,
    BatchPlanner,
    CallResult,
    ConsoleEntry,
    HeartbeatAck,
    HeartbeatOp,
    PlannedBatch,
    RegisterOp,
)
from supervisor_tui.consoles.errors import ConsoleNotFound, ConsoleUnauthorized
from supervisor_tui.consoles.models import decode_heartbeat, decode_registration, iso
from supervisor_tui.consoles.writer import Op
from supervisor_tui.core.events import ConsoleRemoved


async def test_heartbeats_of_one_console_in_one_batch_keep_the_last_hostname_given(tmp_path: Path) -> None:
    async with served_consoles(tmp_path) as srv:
        await srv.service.register(decode_registration(b'{"id": "h", "name": "H"}', False))
        named = decode_heartbeat(b'{"state": "busy", "system": {"hostname": "render-7"}}', False)
        unnamed = decode_heartbeat(b'{"state": "busy", "system": {"cpus": 8}}', False)
        # Queued before the writer wakes: one batch, one UPDATE of the console's row.
        await asyncio.gather(srv.service.submit_heartbeat("h", named), srv.service.submit_heartbeat("h", unnamed))
        async with httpx.AsyncClient(base_url=srv.url) as client:
            record = (await client.get("/api/consoles/h", headers=srv.admin)).json()
            found = (await client.get("/api/consoles", params={"q": "render-7"}, headers=srv.admin)).json()
        # One by one, the second heartbeat (a system without a hostname) would not have cleared the first's.
        assert record["hostname"] == "render-7"
        assert record["system"] == {"cpus": 8} and record["heartbeats"] == 2
        assert [c["id"] for c in found["consoles"]] == ["h"]


# -- the planner's rules, without a database ---------------------------------------------------------------------
T0 = 1_700_000_000.0
OPEN = Admission("token", "")


def console(cid: str, state: str = "idle", last_seen: float = T0, **more: Any) -> ConsoleEntry:
    return ConsoleEntry(cid, cid.upper(), state, state, hash_console_token(f"tok-{cid}"), T0, last_seen, **more)


def beat(cid: str, body: str, at: float) -> Op:
    return Op("heartbeat", HeartbeatOp(cid, decode_heartbeat(body.encode(), False), at))


def registration(body: str, at: float, token: str | None = None) -> Op:
    return Op("register", RegisterOp(decode_registration(body.encode(), False), token, None, at))


def planned(entries: dict[str, ConsoleEntry], *ops: Op, inactive_after: float = 60.0) -> PlannedBatch:
    return BatchPlanner(entries, inactive_after, OPEN).plan(list(ops))


def statements(batch: PlannedBatch) -> list[tuple[str, Any]]:
    """(the SQL, its rows) of every step, in order; a maintenance call as ("call", the function)."""
    out: list[tuple[str, Any]] = []
    for kind, what, rows in batch.plan.steps:
        out.append(("call", what) if kind == "call" else (what[1] if kind == "history" else what, rows))
    return out


def test_several_heartbeats_of_one_console_are_one_row_each_and_one_update() -> None:
    entries = {"a": console("a", hostname="old-host", last_activity=T0 - 5)}
    batch = planned(
        entries,
        beat("a", '{"state": "busy", "system": {"hostname": "new-host"}, "current_job": "j1"}', T0 + 1),
        beat("a", '{"state": "busy", "system": {"cpus": 2}, "last_activity": "2023-11-14T22:13:25Z"}', T0 + 2),
        beat("a", '{"state": "error", "last_error": "disk full"}', T0 + 3),
    )
    (hb_sql, hb_rows), (update_sql, [update]), (tr_sql, transitions) = statements(batch)
    assert hb_sql == INSERT_HEARTBEAT and [r[:3] for r in hb_rows] == [
        ("a", T0 + 1, "busy"),
        ("a", T0 + 2, "busy"),
        ("a", T0 + 3, "error"),
    ]
    # State, activity and host all changed: the statement that writes all three.
    assert update_sql == UPDATE_FROM_HEARTBEAT[(True, True, True)]
    assert update == ("error", "error", T0 + 5, "new-host", '{"cpus":2}', '"disk full"', None, T0 + 3, 3, "a")
    assert tr_sql == INSERT_TRANSITION
    assert transitions == [("a", "idle", "busy", T0 + 1, "heartbeat"), ("a", "busy", "error", T0 + 3, "heartbeat")]
    assert [(e.from_state, e.to_state) for e in batch.events] == [("idle", "busy"), ("busy", "error")]
    assert [ack for _, ack in batch.answers] == [
        HeartbeatAck("a", "busy", T0 + 1),
        HeartbeatAck("a", "busy", T0 + 2),
        HeartbeatAck("a", "error", T0 + 3),
    ]
    assert (batch.heartbeats, list(batch.heard_from), batch.refused) == (3, ["a"], [])
    after = batch.consoles["a"]
    assert after is not None and (after.state, after.last_seen, after.hostname, after.stored_heartbeats) == (
        "error",
        T0 + 3,
        "new-host",
        3,
    )
    # The committed entry is only read: memory changes after the COMMIT.
    assert (entries["a"].state, entries["a"].stored_heartbeats) == ("idle", 0)


def test_a_heartbeat_repeating_the_indexed_columns_does_not_write_them() -> None:
    entries = {"a": console("a", "busy", hostname="h", last_activity=T0 + 5)}
    batch = planned(
        entries,
        beat("a", '{"state": "busy", "system": {"hostname": "h"}, "last_activity": "2023-11-14T22:13:25Z"}', T0),
    )
    _, (update_sql, [update]) = statements(batch)
    assert update_sql == UPDATE_FROM_HEARTBEAT[(False, False, False)]
    assert update == ('{"hostname":"h"}', None, None, T0, 1, "a")
    assert batch.events == []


def test_a_heartbeat_of_an_unknown_or_just_removed_console_is_refused_and_writes_nothing() -> None:
    entries = {"gone": console("gone")}
    unknown, removal, late = (
        beat("nobody", '{"state": "busy"}', T0),
        Op("remove", "gone"),
        beat("gone", '{"state": "busy"}', T0),
    )
    batch = planned(entries, beat("gone", '{"state": "idle"}', T0), unknown, removal, late)
    assert [(op, type(exc)) for op, exc in batch.refused] == [(unknown, ConsoleNotFound), (late, ConsoleNotFound)]
    assert [sql for sql, _ in statements(batch)] == [
        INSERT_HEARTBEAT,
        UPDATE_FROM_HEARTBEAT[(False, False, False)],
        DELETE_CONSOLE,
    ]
    assert batch.consoles["gone"] is None and batch.heard_from == {} and batch.heartbeats == 1
    assert [type(e) for e in batch.events] == [ConsoleRemoved]
    assert (batch.answers[-1][0], batch.answers[-1][1]) == (removal, True)
    assert planned({}, Op("remove", "gone")).answers[0][1] is False


def test_a_timeout_is_dated_at_the_deadline_and_written_before_a_later_heartbeat() -> None:
    entries = {"a": console("a", "busy"), "b": console("b", "busy", last_seen=T0 + 30), "c": console("c", "inactive")}
    deadline = T0 + 10
    batch = planned(
        entries,
        Op("timeout", ("a", deadline)),
        Op("timeout", ("b", deadline)),  # heard from since the deadline was taken
        Op("timeout", ("c", deadline)),  # already inactive
        beat("a", '{"state": "busy"}', T0 + 20),
        inactive_after=10.0,
    )
    (timeout_sql, timeouts), _, (update_sql, [update]), (_, transitions) = statements(batch)
    assert (timeout_sql, timeouts) == (UPDATE_TIMEOUT, [("a",)])
    # Back from inactive in the same batch: its state is written after the timeout, so it ends busy.
    assert update_sql == UPDATE_FROM_HEARTBEAT[(True, False, False)] and update[:2] == ("busy", "busy")
    assert transitions == [
        ("a", "busy", "inactive", deadline, "timeout"),
        ("a", "inactive", "busy", T0 + 20, "heartbeat"),
    ]
    assert batch.consoles["b"] is not None and batch.consoles["b"].state == "busy"


def test_registration_creates_a_console_or_needs_its_token_to_update_it() -> None:
    entries = {"a": console("a")}
    new = registration('{"id": "n", "name": "New", "state": "busy"}', T0)
    stranger = registration('{"id": "a", "name": "Taken"}', T0)
    again = registration('{"id": "a", "name": "Renamed", "state": "busy"}', T0 + 1, token="tok-a")
    batch = planned(entries, beat("a", '{"state": "idle"}', T0), new, stranger, again)
    assert [(op, type(exc)) for op, exc in batch.refused] == [(stranger, ConsoleUnauthorized)]
    sqls = [sql for sql, _ in statements(batch)]
    # The pending heartbeat is written before the registrations, each with its own transition rows.
    assert sqls == [
        INSERT_HEARTBEAT,
        UPDATE_FROM_HEARTBEAT[(False, False, False)],
        INSERT_CONSOLE,
        INSERT_TRANSITION,
        UPDATE_REGISTRATION,
        INSERT_TRANSITION,
    ]
    created, updated = (value for op, value in batch.answers if op in (new, again))
    assert created.created and created.console["state"] == "busy" and created.token
    assert not updated.created and updated.token == "tok-a" and updated.console["inactive_at"] == iso(T0 + 61)
    renamed = batch.consoles["a"]
    assert renamed is not None and (renamed.name, renamed.state, renamed.last_seen) == ("Renamed", "busy", T0 + 1)
    assert batch.registrations == 2
    assert [type(e).__name__ for e in batch.events] == [
        "ConsoleStateChanged",
        "ConsoleRegistered",
        "ConsoleStateChanged",
        "ConsoleRegistered",
    ]


def test_a_maintenance_call_runs_after_what_was_queued_before_it() -> None:
    def count(conn: sqlite3.Connection) -> int:
        return 0

    call = Op("maintenance", count)
    batch = planned({"a": console("a")}, beat("a", '{"state": "idle"}', T0), call)
    assert [sql for sql, _ in statements(batch)] == [
        INSERT_HEARTBEAT,
        UPDATE_FROM_HEARTBEAT[(False, False, False)],
        "call",
    ]
    assert batch.answers[-1] == (call, CallResult(0))


def test_a_later_heartbeat_without_a_hostname_keeps_the_one_given_before() -> None:
    batch = planned(
        {"a": console("a")},
        beat("a", '{"state": "idle", "system": {"hostname": "render-7"}}', T0),
        beat("a", '{"state": "idle", "system": {"cpus": 8}}', T0 + 1),
    )
    _, (update_sql, [update]) = statements(batch)
    assert update_sql == UPDATE_FROM_HEARTBEAT[(False, False, True)] and update[0] == "render-7"
