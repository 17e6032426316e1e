"""The console store interface: where the consoles domain keeps consoles, heartbeats and transitions.

Two implementations: ``SqliteConsoleStore`` (the supervisor's own database, the embedded default) and
``PgConsoleStore`` (a PostgreSQL shared by several supervisors: the Spanish API's ``consolas``). The service's
planner writes the same rows to either: ``sql`` holds each store's statements for them, one placeholder per row
value in the same order, and ``commit`` runs a batch of them in one transaction. Reads answer the same English
records from either.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

# One step of a batch: ("many", sql, rows) runs executemany; ("call", fn, None) runs fn(connection) and keeps
# its result (maintenance deletes that need RETURNING); ("history", (table, sql), rows) is an executemany that
# a damaged table does not fail the batch for.
Step = tuple[str, Any, Any]

# (state changed, last activity changed, host name changed): which columns a heartbeat's UPDATE rewrites.
HeartbeatUpdateKind = tuple[bool, bool, bool]


@dataclass(frozen=True, slots=True)
class ConsoleSQL:
    """A store's statements for the rows the planner makes (see service.py for each row's values)."""

    insert_heartbeat: str
    update_from_heartbeat: dict[HeartbeatUpdateKind, str]
    update_timeout: str
    insert_transition: str
    insert_console: str
    update_registration: str
    delete_console: str
    # Run after delete_console, for a store whose heartbeats are not deleted with their console by a foreign key.
    delete_heartbeats: str | None = None
    # A shared store's: a step (rows: [(this node's name,)]) after a flush's heartbeat updates or a re-registration,
    # which has the store record and tell the state changes those made to the rows, as the database decided them
    # (other nodes change the rows too); commit's results then end with one more, the list of them (pg_store.py).
    state_transitions: str | None = None


# (id, name, state, reported_state, token_hash, first_seen, last_seen, last_activity, hostname), by last_seen.
ConsoleRow = tuple[str, str, str, str, str | None, float, float, float | None, str | None]


# (console id, deadline) pairs due, inactive_after, this node's name -> a batch step flipping the still-silent ones.
FlipInactive = Callable[[list[tuple[str, float]], float, str], Callable[[Any], Any]]


class ConsoleStore(Protocol):
    """What the consoles domain needs of a store."""

    kind: str  # "sqlite" or "postgresql"
    sql: ConsoleSQL
    # Several supervisors may write it at once: inactivity is flipped by a conditional update (flip_inactive),
    # heartbeats always write the state, and changes go to the other nodes (see pg_events.py).
    shared: bool
    # Write batches that may commit at once on separate connections (1: one after the other).
    batches_in_flight: int
    # Its timestamps keep microseconds (PostgreSQL's timestamptz): memory's answers are rounded as it rounds them.
    timestamps_in_microseconds: bool

    @property
    def flip_inactive(self) -> FlipInactive | None:
        """A shared store's fleet-wide inactivity flip as a batch step; None when one node owns its consoles."""

    @property
    def where(self) -> str:
        """The store as an operator knows it (a path, a DSN with its password masked)."""

    @property
    def problem(self) -> str | None:
        """Why the store cannot be written now (None when it can)."""

    async def load(self, mark_damaged: Callable[[str, str], None]) -> tuple[list[ConsoleRow], dict[str, int]]:
        """Every console (ConsoleRow) and its stored heartbeat count; damaged history is reported, not fatal."""

    async def commit(self, steps: list[Step]) -> list[Any]:
        """Run ``steps`` in one durable transaction; returns the results of its "call" steps (and, after them,
        the state transitions the store decided when ``steps`` has a ``sql.state_transitions`` step)."""

    async def close(self) -> None: ...

    async def list_consoles(
        self, inactive_after: float, state: str | None, limit: int, offset: int, sort: str
    ) -> tuple[list[dict[str, Any]], int]: ...

    async def consoles_by_id(self, inactive_after: float, ids: list[str]) -> list[dict[str, Any]]: ...

    async def get_console(self, console_id: str, inactive_after: float) -> dict[str, Any] | None: ...

    async def heartbeats(self, console_id: str, limit: int) -> list[dict[str, Any]]: ...

    async def transitions(self, console_id: str, limit: int) -> list[dict[str, Any]]: ...

    async def stats(self) -> dict[str, Any]: ...

    # Maintenance steps (run by the writer inside a batch's transaction): each returns a "call" step function.
    def prune_heartbeats_by_age(self, cutoff: float, chunk: int) -> Callable[[Any], Any]:
        """Deletes up to ``chunk`` heartbeats received before ``cutoff``; the step returns their console ids."""

    def prune_heartbeats_by_count(self, excess: list[tuple[str, int]]) -> Callable[[Any], Any]:
        """Deletes each console's oldest ``n`` heartbeats; the step returns the console id of each row deleted."""

    def prune_transitions(self, cutoff: float, chunk: int) -> Callable[[Any], Any]:
        """Deletes up to ``chunk`` transitions before ``cutoff``; the step returns how many."""
