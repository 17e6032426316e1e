"""Console changes across the supervisors sharing one PostgreSQL store, over LISTEN/NOTIFY.

Every batch a node commits that registers, removes or changes the state of a console carries, in the same
transaction, NOTIFYs on ``CHANNEL`` describing what changed (PostgreSQL delivers them only if, and once, the
transaction commits). A heartbeat's state change is the one its UPDATE made to the row, told by the batch's
statement itself (pg_statements.one_statement), after the batch's heartbeats. A batch of heartbeats that change
no state (most of them) is told after its COMMIT instead, by ``AfterCommitNotifier`` in a transaction of its own
that does not wait for its WAL flush (one for the batches committed within NOTIFY_LINGER): PostgreSQL
holds one lock for the whole database from a NOTIFY's commit until that commit's WAL is flushed, so NOTIFYs
inside the durable batches made their fsyncs take turns, where batches committing at once share one. What that
costs: the other nodes learn of those heartbeats up to NOTIFY_LINGER later, and a node that dies between a
heartbeat batch's COMMIT and its NOTIFY leaves the other nodes' memory of those
consoles (last seen, host, activity, count) behind until their next heartbeat through any node. The database
is right meanwhile: records are read from it, and an inactivity flip is conditional on its row
(PgConsoleStore.flip_inactive), so a node that missed a heartbeat cannot flip a console that spoke.

Every other node applies the NOTIFYs it receives to its in-memory view of the consoles and publishes them on its
own event bus, marked ``remote``, so /ws/events, the TUI and in-process plugin hooks see changes made through any
node. A payload is JSON under PostgreSQL's 8,000-byte limit: ``{"node": <sender>, "changes": [...]}``, a batch
split over several when needed. A change:

    ["reg", id, name, state, token_hash, first_seen, last_seen, last_activity, hostname]
    ["hb", id, state, last_seen, last_activity, hostname, heartbeats]       (one per console per batch)
    ["state", id, from_state, to_state, reason, at]
    ["rm", id]

The listening connection is the store's own (not the pool's); when it is lost the node reconnects by itself
and reloads every console (what it missed meanwhile is in the table, not in a queue).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any

import msgspec

from supervisor_tui.core.backoff import backoff_delay

if TYPE_CHECKING:  # the driver loads only in a supervisor configured for PostgreSQL
    import asyncpg

CHANNEL = "supervisor_consoles"
NOTIFY_SQL = f"SELECT pg_notify('{CHANNEL}', $1)"
# A step whose payloads PgConsoleStore.commit hands to its AfterCommitNotifier once the rest is committed.
NOTIFY_AFTER_COMMIT = "-- notify after commit"
# Its own transaction, which does not wait for its WAL flush (set_config(..., true): for this transaction
# only, the session keeps synchronous_commit on): nothing in it needs to survive a crash.
_NOTIFY_ALL_SQL = (
    "SELECT set_config('synchronous_commit', 'off', true), "
    f"(SELECT count(pg_notify('{CHANNEL}', p)) FROM unnest($1::text[]) AS n(p))"
)
_CLOSE_GRACE = 2.0  # seconds a closing store gives its notifier to send what is pending
MAX_PAYLOAD = 7000  # bytes; PostgreSQL refuses 8000 and more
# Seconds an after-commit send waits to take the payloads of the batches committing meanwhile: one NOTIFY
# transaction (a commit and a round trip) for many batches where each had its own, and the other nodes learn of
# a heartbeat that changed no state that much later.
NOTIFY_LINGER = 0.01

Change = list[Any]


_encode = msgspec.json.Encoder().encode


def payload_head(node: str) -> str:
    """How every payload ``node`` sends begins (its listener skips them by it, without decoding them)."""
    return f'{{"node": {json.dumps(node)}, "changes": ['


def payloads(node: str, changes: list[Change]) -> list[str]:
    """``changes`` as NOTIFY payloads of at most MAX_PAYLOAD bytes (UTF-8) each."""
    out: list[str] = []
    head = payload_head(node).encode()
    part: list[bytes] = []
    size = len(head) + 2
    for change in changes:
        text = _encode(change)  # one call per change (json.dumps was a tenth of the batch planning)
        if part and size + len(text) + 1 > MAX_PAYLOAD:
            out.append((head + b",".join(part) + b"]}").decode())
            part, size = [], len(head) + 2
        part.append(text)
        size += len(text) + 1
    if part:
        out.append((head + b",".join(part) + b"]}").decode())
    return out


def decode(payload: str) -> tuple[str, list[Change]]:
    """(sender node, changes) of one payload; ValueError when it is not one of ours."""
    data = json.loads(payload)
    if not isinstance(data, dict) or not isinstance(data.get("changes"), list):
        raise ValueError("not a console change payload")
    return str(data.get("node")), list(data["changes"])


class AfterCommitNotifier:
    """Sends the payloads of committed heartbeat batches, in order, from one task: a send waits ``linger``
    seconds, then takes everything that piled up meanwhile (and while the last send was on its way). A send that
    fails (server lost) is tried again; at most ``max_pending`` payloads wait, the oldest dropped beyond (the
    other nodes catch up at those consoles' next heartbeats)."""

    def __init__(
        self,
        connection: Callable[[], AbstractAsyncContextManager[asyncpg.Connection]],
        max_pending: int = 2000,
        linger: float = NOTIFY_LINGER,
    ) -> None:
        self._connection = connection  # a connection for one send (the store's own: no pool acquire per batch)
        self._max_pending = max_pending
        self._linger = linger
        self._pending: list[str] = []
        self._task: asyncio.Task[None] | None = None
        self.dropped = 0  # payloads dropped as the oldest beyond max_pending

    def send(self, payloads: list[str]) -> None:
        self._pending += payloads
        self._keep_newest()
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="consoles-notifier")

    def _keep_newest(self) -> None:
        excess = max(0, len(self._pending) - self._max_pending)
        del self._pending[:excess]
        self.dropped += excess

    async def _run(self) -> None:
        failures = 0
        while self._pending:
            if self._linger:
                await asyncio.sleep(self._linger)
            batch, self._pending = self._pending, []
            try:
                async with self._connection() as conn:
                    await conn.fetchval(_NOTIFY_ALL_SQL, batch)
                failures = 0
            except asyncio.CancelledError:
                raise
            except Exception:  # lost server or closed pool: keep them, in order, and try again
                self._pending[:0] = batch
                self._keep_newest()
                await asyncio.sleep(backoff_delay(failures, 0.05, 2.0))
                failures += 1

    async def close(self) -> None:
        """Send what is pending (for at most _CLOSE_GRACE seconds), then stop."""
        task, self._task = self._task, None
        if task is None:
            return
        with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError, Exception):
            await asyncio.wait_for(asyncio.shield(task), _CLOSE_GRACE)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task


class ChangeListener:
    """LISTENs on CHANNEL over its own connection; calls ``on_changes`` for other nodes' payloads and
    ``on_reconnect`` after a lost connection came back (the caller reloads its view)."""

    def __init__(
        self,
        dsn: str,
        node: str,
        on_changes: Callable[[list[Change]], None],
        on_reconnect: Callable[[], Any],
        on_problem: Callable[[str | None], None],
    ) -> None:
        self._dsn = dsn
        self._node = node
        self._own = payload_head(node)
        self._on_changes = on_changes
        self._on_reconnect = on_reconnect
        self._on_problem = on_problem
        self._conn: asyncpg.Connection | None = None
        self._task: asyncio.Task[None] | None = None
        self._lost = asyncio.Event()
        self._closing = False

    async def start(self) -> None:
        await self._connect()
        self._task = asyncio.get_running_loop().create_task(self._keep(), name="consoles-listener")

    async def _connect(self) -> None:
        import asyncpg

        conn = await asyncpg.connect(self._dsn, timeout=10)
        conn.add_termination_listener(lambda _conn: self._lost.set())
        await conn.add_listener(CHANNEL, self._notified)
        self._conn = conn
        self._lost.clear()

    def _notified(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        if payload.startswith(self._own):  # this node's own changes, every batch's: not decoded for nothing
            return
        try:
            node, changes = decode(payload)
        except ValueError:
            return
        if node != self._node:
            self._on_changes(changes)

    async def _keep(self) -> None:
        """Reconnect after a lost connection (backing off up to 5 s), then have the caller reload."""
        while not self._closing:
            await self._lost.wait()
            if self._closing:
                return
            failures = 0
            while not self._closing:
                try:
                    await self._connect()
                    break
                except Exception as exc:  # the server is still away: say so, try again
                    self._on_problem(f"console changes from other nodes are not received: {exc}")
                    await asyncio.sleep(backoff_delay(failures, 0.2, 5.0))
                    failures += 1
            if self._closing:
                return
            self._on_problem(None)
            result = self._on_reconnect()
            if asyncio.iscoroutine(result):
                await result

    async def close(self) -> None:
        self._closing = True
        self._lost.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        if self._conn is not None and not self._conn.is_closed():
            with contextlib.suppress(Exception):
                await self._conn.close(timeout=2)
