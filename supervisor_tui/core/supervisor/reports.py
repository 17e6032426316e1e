"""What every kind of plugin reports to the supervisor: its state changes and health flips, on the bus and in the
logs, and each state change to whoever waits on plugin states (the orchestrator's dependents)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from supervisor_tui.core.events import EventBus, PluginHealthChanged, PluginStateChanged
from supervisor_tui.core.logs import SUPERVISOR_SOURCE, LogHub
from supervisor_tui.core.supervisor.managed import ManagedPlugin

_LEVELS = {"FATAL": "error", "FAILED": "error", "BACKOFF": "warning", "EXITED": "warning"}


class PluginReports:
    """Publishes plugin state changes and health flips. ``on_state(key, new_state)`` hears every state change
    first (the orchestrator: dependents waiting for a state look again)."""

    def __init__(self, bus: EventBus, logs: LogHub, on_state: Callable[[str, str], None]) -> None:
        self.bus = bus
        self.logs = logs
        self.on_state = on_state

    def record_state_change(self, plugin: ManagedPlugin, old: str, new: str, reason: str) -> None:
        """A state change of any kind of plugin: on the bus and in the logs."""
        snap = plugin.snapshot()
        self.on_state(plugin.key, new)
        self.bus.publish(PluginStateChanged(plugin.key, old, new, reason, snap.pid, snap.port))
        fields: dict[str, Any] = {"plugin": plugin.key, "from": old, "to": new, "reason": reason}
        message = f"{plugin.key}: {old} -> {new}: {reason}"
        if new in ("STARTING", "RUNNING"):
            fields["pid"], fields["port"] = snap.pid, snap.port
            if new == "RUNNING":
                message += f" (pid {snap.pid}, port {snap.port})"
        self.logs.write(
            SUPERVISOR_SOURCE, "supervisor", message, _LEVELS.get(new, "info"), event="plugin_state", **fields
        )

    def publish_health(self, key: str, healthy: bool, detail: str) -> None:
        """A health flip of any kind of plugin: on the bus and in the logs."""
        self.bus.publish(PluginHealthChanged(key=key, healthy=healthy, detail=detail))
        word = "healthy" if healthy else "UNHEALTHY"
        self.logs.write(
            SUPERVISOR_SOURCE,
            "supervisor",
            f"{key}: {word}: {detail}",
            "info" if healthy else "warning",
            event="plugin_health",
            plugin=key,
            healthy=healthy,
            reason=detail,
        )
