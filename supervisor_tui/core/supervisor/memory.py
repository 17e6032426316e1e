"""What the supervisor remembers per plugin while it runs, kept in step with the database (core.plugin_state)."""

from __future__ import annotations

import sqlite3

from supervisor_tui.core.logs import LogHub
from supervisor_tui.core.plugin_state import PluginStateStore


class PluginMemory:
    """Desired states, environment overrides and replica counts by key, as loaded and as the operator changed them.

    ``unsaved`` says why a desired state will not survive a restart (the database refused it); ``removed`` holds
    keys removed without purge (a reload does not bring them back; a restart does)."""

    def __init__(self, state: PluginStateStore, logs: LogHub) -> None:
        self.state = state
        self.logs = logs
        self.desired: dict[str, str] = {}
        self.unsaved: dict[str, str] = {}
        self.overrides: dict[str, dict[str, str]] = {}
        self.replicas: dict[str, int] = {}
        self.removed: set[str] = set()

    async def load(self) -> None:
        self.desired, self.overrides = await self.state.load()
        self.replicas = await self.state.load_replicas()

    async def set_desired(self, key: str, desired: str) -> None:
        """Remember what the operator wants. A database that cannot be written (full disk) does not stop the
        action: it is logged, and ``unsaved`` says a restart forgets it."""
        if self.desired.get(key) == desired and key not in self.unsaved:
            return
        self.desired[key] = desired
        try:
            await self.state.save_desired(key, desired)
        except sqlite3.Error as exc:
            self.unsaved[key] = (
                f"{key} is {desired} now, but that could not be saved in the database ({exc}): "
                "a supervisor restart will not remember it"
            )
            self.logs.warning(self.unsaved[key], event="desired_state_unsaved", plugin=key, desired=desired)
        else:
            self.unsaved.pop(key, None)

    async def forget(self, key: str) -> None:
        """A purged plugin: nothing about it is remembered any more."""
        await self.state.forget(key)
        self.desired.pop(key, None)
        self.replicas.pop(key, None)
        self.overrides.pop(key, None)
