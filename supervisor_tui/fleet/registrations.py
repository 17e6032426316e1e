"""Plugins registered over Redis, kept in the store's ``fleet_registrations`` table across restarts.

Seed 000's plugins publish ``plugin:registered`` once, when they start; a supervisor restarted after that would
never hear of them again. So each accepted registration is saved as received, and ``load`` gives them back.
"""

from __future__ import annotations

import time

from supervisor_tui.core.store import Store
from supervisor_tui.fleet.messages import ENCODER, Registered


class RegistrationStore:
    """Accepted plugin:registered messages by key and node."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def load(self) -> list[tuple[bytes, float]]:
        """Every saved message (JSON) with when it was accepted, oldest first."""
        async with self.store.reader.execute(
            "SELECT message, registered_at FROM fleet_registrations ORDER BY registered_at"
        ) as cur:
            return [(str(m).encode(), float(at)) for m, at in await cur.fetchall()]

    async def save(self, message: Registered) -> None:
        await self.store.writer.execute(
            "INSERT INTO fleet_registrations (key, message, node, registered_at) VALUES (?, ?, ?, ?) "
            "ON CONFLICT(key, node) DO UPDATE SET message = excluded.message, registered_at = excluded.registered_at",
            (message.key, ENCODER.encode(message).decode(), message.node or "", time.time()),
        )

    async def forget(self, key: str, node: str = "") -> None:
        if self.store.is_open:
            await self.store.writer.execute("DELETE FROM fleet_registrations WHERE key = ? AND node = ?", (key, node))
