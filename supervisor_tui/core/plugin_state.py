"""What the supervisor remembers about each plugin across restarts, in the store's ``plugin_state`` and
``plugin_overrides`` tables.

    state = PluginStateStore(store)
    desired, overrides = await state.load()          # {"web": "stopped"}, {"web": {"TOKEN": "..."}}
    await state.save_desired("web", "running")       # sqlite3.Error when the database refuses it
    await state.save_pid("web", "running", pid, created); await state.clear_pid("web")
    await state.spawned(); await state.clear_pids()   # [("web", pid, created)]: a previous run's processes
    await state.save_overrides("web", {"TOKEN": "..."}); await state.forget("web")
    await state.save_replicas("web", 3); await state.load_replicas()   # {"web": 3}

Writes go through the store's single writer. The pid of a plugin's process is kept so the next run can stop
what a killed supervisor left behind (see ``Supervisor.clean_orphans``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping

from supervisor_tui.core.store import Store


class PluginStateStore:
    """Desired states, environment overrides and spawned pids of plugins, by key."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def load(self) -> tuple[dict[str, str], dict[str, dict[str, str]]]:
        """Desired states and environment overrides by key; an override that does not decode is skipped."""
        async with self.store.reader.execute("SELECT key, desired FROM plugin_state") as cur:
            desired = {str(k): str(d) for k, d in await cur.fetchall()}
        overrides: dict[str, dict[str, str]] = {}
        async with self.store.reader.execute("SELECT key, env FROM plugin_overrides") as cur:
            for key, env in await cur.fetchall():
                try:
                    value = json.loads(env)
                    overrides[str(key)] = {str(k): str(v) for k, v in value.items()}
                except (ValueError, AttributeError):
                    continue
        return desired, overrides

    async def save_desired(self, key: str, desired: str) -> None:
        """Remember "running" or "stopped" for ``key``."""
        await self.store.writer.execute(
            "INSERT INTO plugin_state (key, desired, updated_at) VALUES (?, ?, ?) "
            "ON CONFLICT(key) DO UPDATE SET desired = excluded.desired, updated_at = excluded.updated_at",
            (key, desired, time.time()),
        )

    async def load_replicas(self) -> dict[str, int]:
        """The replica counts operators scaled plugins to, by key (keys never scaled are absent)."""
        async with self.store.reader.execute(
            "SELECT key, replicas FROM plugin_state WHERE replicas IS NOT NULL"
        ) as cur:
            return {str(k): int(n) for k, n in await cur.fetchall()}

    async def save_replicas(self, key: str, replicas: int, desired: str) -> None:
        """Remember that the operator scaled ``key`` to ``replicas`` (``desired`` for a key seen for the first
        time)."""
        await self.store.writer.execute(
            "INSERT INTO plugin_state (key, desired, replicas, updated_at) VALUES (?, ?, ?, ?) "
            "ON CONFLICT(key) DO UPDATE SET replicas = excluded.replicas, updated_at = excluded.updated_at",
            (key, desired, replicas, time.time()),
        )

    async def save_pid(self, key: str, desired: str, pid: int, started: float) -> None:
        """The process just spawned for ``key`` (``started``: its creation time, so a reused pid is not it);
        ``desired`` is stored for a key seen for the first time."""
        await self.store.writer.execute(
            "INSERT INTO plugin_state (key, desired, pid, pid_started, updated_at) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT(key) DO UPDATE SET pid = excluded.pid, pid_started = excluded.pid_started, "
            "updated_at = excluded.updated_at",
            (key, desired, pid, started, time.time()),
        )

    async def clear_pid(self, key: str) -> None:
        """``key``'s process is gone. Nothing to do once the store is closed (exits reported while closing)."""
        if self.store.is_open:
            await self.store.writer.execute(
                "UPDATE plugin_state SET pid = NULL, pid_started = NULL, updated_at = ? WHERE key = ?",
                (time.time(), key),
            )

    async def spawned(self) -> list[tuple[str, int, float | None]]:
        """The processes recorded as spawned and not seen to exit: (key, pid, creation time), by instance key."""
        async with self.store.reader.execute(
            "SELECT key, pid, pid_started FROM plugin_state WHERE pid IS NOT NULL"
        ) as cur:
            rows = await cur.fetchall()
        return [(str(key), int(pid), float(started) if started else None) for key, pid, started in rows]

    async def clear_pids(self) -> None:
        """Every recorded process is gone (stopped by the orphan cleanup)."""
        await self.store.writer.execute("UPDATE plugin_state SET pid = NULL, pid_started = NULL")

    async def save_overrides(self, key: str, env: Mapping[str, str]) -> None:
        """Replace ``key``'s environment overrides."""
        await self.store.writer.execute(
            "INSERT INTO plugin_overrides (key, env, updated_at) VALUES (?, ?, ?) "
            "ON CONFLICT(key) DO UPDATE SET env = excluded.env, updated_at = excluded.updated_at",
            (key, json.dumps(dict(env), sort_keys=True), time.time()),
        )

    async def forget(self, key: str) -> None:
        """Drop everything remembered about ``key`` (a purged plugin)."""
        # Its replicas' pid rows ("web#1", ...) too; substr, not LIKE, as "_" in a key is a LIKE wildcard.
        await self.store.writer.execute(
            "DELETE FROM plugin_state WHERE key = ? OR substr(key, 1, ?) = ?", (key, len(key) + 1, key + "#")
        )
        await self.store.writer.execute("DELETE FROM plugin_overrides WHERE key = ?", (key,))
