"""The console API's answers as msgspec Structs: one model per shape, encoded by the API, documented in its
/openapi.json from these very classes, and decoded by the TUI's clients with the same types.

The stores read rows into records (dicts, ``consoles.queries``); ``snapshot``/``heartbeat_record``/... turn a
record into its Struct, the one place that happens. Timestamps are ISO-8601 UTC strings on the wire
("2025-12-03T10:30:00.000Z", ``models.iso``).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from supervisor_tui.consoles.models import ConsoleState

IsoTime = Annotated[str, msgspec.Meta(description="ISO-8601 UTC", extra_json_schema={"format": "date-time"})] | None
# What a console reported as its last error: free-form JSON (a string, an object or null in practice).
ErrorValue = Annotated[Any, msgspec.Meta(description="the last error: a string, an object or null")]
SystemInfo = Annotated[
    dict[str, Any] | None, msgspec.Meta(description="system information (free-form; hostname is used for search)")
]
TransitionReason = Literal["heartbeat", "timeout", "register"]


class ConsoleSnapshot(msgspec.Struct, kw_only=True):
    """A console as the admin reads answer it (the list, one console, the TUI's tables)."""

    id: str
    name: str
    state: ConsoleState  # inactive when no heartbeat came for consoles.inactive_after, else what it reported
    reported_state: ConsoleState  # what the console last reported, even once inactive
    system: SystemInfo = None
    hostname: str | None = None
    last_activity: IsoTime = None
    last_error: ErrorValue = None
    current_job: str | None = None
    first_seen: IsoTime
    last_seen: IsoTime
    heartbeats: int
    inactive_at: IsoTime = None  # when it turns inactive without another heartbeat (null once inactive)


class ConsolePage(msgspec.Struct, kw_only=True):
    """One page of ``GET /api/consoles`` and how many consoles matched in all."""

    consoles: list[ConsoleSnapshot]
    total: int
    limit: int
    offset: int


class HeartbeatRecord(msgspec.Struct, kw_only=True):
    """One received heartbeat of a console."""

    received_at: IsoTime
    state: ConsoleState
    last_activity: IsoTime = None
    last_error: ErrorValue = None
    current_job: str | None = None
    system: SystemInfo = None


class ConsoleHeartbeats(msgspec.Struct, kw_only=True):
    """A console's latest heartbeats, newest first."""

    console_id: str
    heartbeats: list[HeartbeatRecord]


class TransitionRecord(msgspec.Struct, kw_only=True):
    """One state change of a console (``from`` is null for its registration)."""

    from_state: ConsoleState | None = msgspec.field(name="from")
    to_state: ConsoleState = msgspec.field(name="to")
    at: IsoTime
    reason: TransitionReason


class ConsoleTransitions(msgspec.Struct, kw_only=True):
    """A console's state transitions, newest first."""

    console_id: str
    transitions: list[TransitionRecord]


class StateStats(msgspec.Struct, kw_only=True):
    """How many consoles are in one state, and the latest activity among them."""

    state: ConsoleState
    count: int
    last_activity: IsoTime


class ConsoleStats(msgspec.Struct, kw_only=True):
    """Count and latest activity by state (the Spanish console API's statistics query)."""

    total: int
    states: list[StateStats]


class RemovedConsole(msgspec.Struct, kw_only=True):
    """The answer to removing a console: its id."""

    removed: str


class RegisteredConsole(msgspec.Struct, kw_only=True):
    """The console as a registration answers it."""

    id: str
    name: str
    state: ConsoleState
    hostname: str | None = None
    last_activity: IsoTime = None
    first_seen: IsoTime = None
    last_seen: IsoTime = None
    inactive_at: IsoTime = None


class Registered(msgspec.Struct, kw_only=True):
    """The answer to a registration (201 for a new console, 200 for a re-registration)."""

    console: RegisteredConsole
    token: Annotated[str, msgspec.Meta(description="send it as Authorization: Bearer on heartbeats")]
    created: bool


class HeartbeatAnswer(msgspec.Struct, kw_only=True):
    """The answer to a heartbeat, once it is committed."""

    ok: bool
    console_id: str
    state: ConsoleState
    received_at: IsoTime


def snapshot(record: dict[str, Any]) -> ConsoleSnapshot:
    """A store's console record as the Struct."""
    return msgspec.convert(record, ConsoleSnapshot)


def snapshots(records: list[dict[str, Any]]) -> list[ConsoleSnapshot]:
    return msgspec.convert(records, list[ConsoleSnapshot])


def heartbeat_records(records: list[dict[str, Any]]) -> list[HeartbeatRecord]:
    return msgspec.convert(records, list[HeartbeatRecord])


def transition_records(records: list[dict[str, Any]]) -> list[TransitionRecord]:
    return msgspec.convert(records, list[TransitionRecord])
