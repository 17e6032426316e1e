"""stats: an in-process plugin with routes. GET /api/plugins/stats/summary answers with plugins and consoles
by state, read straight from the supervisor it runs in (no process, no port)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route, Router

from supervisor_tui.plugins.inprocess import PluginInterface


class StatsPlugin(PluginInterface):
    name = "Stats"
    version = "1.0.0"

    def __init__(self, config: Mapping[str, Any] | None = None) -> None:
        super().__init__(config)
        self.requests = 0
        self.started = 0.0
        self.routes = Router(routes=[Route("/summary", self.summary, methods=["GET"])])

    def validate_configuration(self, config: Mapping[str, Any]) -> bool:
        if not isinstance(config.get("include_keys", True), bool):
            raise ValueError("include_keys must be true or false")
        return True

    async def initialize(self, supervisor: Any, config: Mapping[str, Any]) -> None:
        self.supervisor = supervisor
        self.config = dict(config)
        self.started = time.time()

    async def shutdown(self) -> None:
        self.supervisor = None

    def get_status(self) -> dict[str, Any]:
        return {"healthy": self.supervisor is not None, "requests": self.requests}

    async def summary(self, request: Request) -> JSONResponse:
        """Plugins and consoles by state."""
        self.requests += 1
        sup = self.supervisor
        plugins: dict[str, int] = {}
        keys: dict[str, list[str]] = {}
        for snap in sup.plugins():
            plugins[snap.state] = plugins.get(snap.state, 0) + 1
            keys.setdefault(snap.state, []).append(snap.key)
        consoles = sup.consoles.counts_by_state() if sup.consoles is not None else {}
        body: dict[str, Any] = {
            "plugins": {"total": sum(plugins.values()), "by_state": plugins},
            "consoles": {"total": sum(consoles.values()), "by_state": consoles},
            "uptime": round(time.time() - self.started, 3),
        }
        if self.config.get("include_keys", True):
            body["plugins"]["keys_by_state"] = keys
        return JSONResponse(body)
