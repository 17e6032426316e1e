"""What an in-process plugin implements: ``PluginInterface`` (metadata, lifecycle, status) and the hooks it may define.

Plugin authors import ``PluginInterface`` from ``supervisor_tui.plugins.inprocess`` (docs/plugins.md); it lives
here so that the interface, the part users code against, reads apart from the machinery that runs it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# Every hook a plugin may define (all optional), in the words of docs/plugins.md.
HOOKS = (
    "on_plugin_registered",  # (key, kind)
    "on_plugin_unregistered",  # (key, reason)
    "on_plugin_state_changed",  # (key, from_state, to_state, reason)
    "on_plugin_started",  # (key, reason)
    "on_plugin_stopped",  # (key, reason)
    "on_plugin_crashed",  # (key, reason)
    "on_plugin_fatal",  # (key, reason)
    "on_plugin_health_changed",  # (key, healthy, detail)
    "on_console_registered",  # (console_id, name, state)
    "on_console_state_changed",  # (console_id, from_state, to_state, reason)
    "on_console_inactive",  # (console_id, since)
    "on_console_heartbeat",  # (count, console_ids) - coalesced
    "on_operator_action",  # (action: dict) - who did what, from where
    "on_operation_failed",  # (operation, error, context)
    "on_shutdown",  # () - the supervisor is shutting down
)
COALESCED_HOOK = "on_console_heartbeat"


class PluginInterface:
    """Base class of in-process plugins: name, version, ``initialize``, ``shutdown``, ``get_status``.

    Optional: ``validate_configuration(config)`` (raise to refuse), ``get_routes()`` or a ``routes`` attribute
    (an ASGI app served under ``/api/plugins/<key>/``) and any of the hooks in ``HOOKS``."""

    name: str = ""
    version: str = "0.0.0"
    description: str = ""

    def __init__(self, config: Mapping[str, Any] | None = None) -> None:
        self.config: dict[str, Any] = dict(config or {})
        self.supervisor: Any = None

    async def initialize(self, supervisor: Any, config: Mapping[str, Any]) -> None:
        """Called on start with the Supervisor and the plugin's configuration."""
        self.supervisor = supervisor
        self.config = dict(config)

    async def shutdown(self) -> None:
        """Called on stop: release what initialize took."""

    def get_status(self) -> dict[str, Any]:
        """What the plugin wants operators to see; ``{"healthy": False, ...}`` marks it unhealthy."""
        return {}
