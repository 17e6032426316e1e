"""Plugins registered over Redis, kept in the store's ``fleet_registrations`` table across restarts.

Seed 000's plugins publish ``plugin:registered`` once, when they start; a supervisor restarted after that would
never hear of them again. So each accepted registration is saved as received, and ``load`` gives them back.
Saves and removals are batched: ``save``/``forget`` only note the change, and a flush writes everything noted in
one statement each (one transaction, so one fsync, for a burst of a thousand registrations instead of a thousand).
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from supervisor_tui.core.logs import LogHub
from supervisor_tui.core.store import Store
from supervisor_tui.fleet.messages import ENCODER, Registered

FLUSH_DELAY = 0.05  # seconds changes wait for more to share their transaction
ROWS_PER_STATEMENT = 200


class RegistrationStore:
    """Accepted plugin:registered messages by key and node."""

    def __init__(self, store: Store, logs: LogHub | None = None) -> None:
        self.store = store
        self.logs = logs
        self._pending: dict[tuple[str, str], tuple[str, float] | None] = {}  # None: forget
        self._flushing: asyncio.Task[None] | None = None

    async def load(self) -> list[tuple[bytes, float]]:
        """Every saved message (JSON) with when it was accepted, oldest first."""
        async with self.store.reader.execute(
            "SELECT message, registered_at FROM fleet_registrations ORDER BY registered_at"
        ) as cur:
            return [(str(m).encode(), float(at)) for m, at in await cur.fetchall()]

    def save(self, message: Registered) -> None:
        self._note((message.key, message.node or ""), (ENCODER.encode(message).decode(), time.time()))

    def forget(self, key: str, node: str = "") -> None:
        self._note((key, node), None)

    def _note(self, row: tuple[str, str], value: tuple[str, float] | None) -> None:
        self._pending[row] = value
        if self._flushing is None or self._flushing.done():
            self._flushing = asyncio.create_task(self._flush_soon(), name="fleet-registrations")

    async def _flush_soon(self) -> None:
        await asyncio.sleep(FLUSH_DELAY)
        await self.flush()

    async def flush(self) -> None:
        """Write what was noted (the runtime calls it once more before the store closes)."""
        pending, self._pending = self._pending, {}
        if not pending or not self.store.is_open:
            return
        saves = [(k, n, *v) for (k, n), v in pending.items() if v is not None]
        drops = [(k, n) for (k, n), v in pending.items() if v is None]
        try:
            for i in range(0, len(saves), ROWS_PER_STATEMENT):
                chunk = saves[i : i + ROWS_PER_STATEMENT]
                await self.store.writer.execute(
                    "INSERT INTO fleet_registrations (key, node, message, registered_at) VALUES "
                    + ", ".join(["(?, ?, ?, ?)"] * len(chunk))
                    + " ON CONFLICT(key, node) DO UPDATE SET message = excluded.message, "
                    "registered_at = excluded.registered_at",
                    [v for row in chunk for v in row],
                )
            for i in range(0, len(drops), ROWS_PER_STATEMENT):
                chunk_keys = drops[i : i + ROWS_PER_STATEMENT]
                await self.store.writer.execute(
                    "DELETE FROM fleet_registrations WHERE (key, node) IN (VALUES "
                    + ", ".join(["(?, ?)"] * len(chunk_keys))
                    + ")",
                    [v for row in chunk_keys for v in row],
                )
        except Exception as exc:  # a full disk: the registrations still work, a restart will not remember them
            if self.logs is not None:
                self.logs.warning(f"redis: registrations not saved ({exc})", event="redis_registration")

    async def close(self) -> None:
        task, self._flushing = self._flushing, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.flush()
