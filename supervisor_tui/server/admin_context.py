"""What every router of the admin API shares: the running process's parts (``ApiContext``), the token and
read-only guards, the error responses they document, and msgspec answers with their place in /openapi.json."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fastapi import Depends, Request

from supervisor_tui.config import Settings
from supervisor_tui.consoles.service import ConsoleService
from supervisor_tui.core.status import RouteExportStatus
from supervisor_tui.core.supervisor import PluginNotFound, Supervisor
from supervisor_tui.plugins.model import PluginSnapshot, for_views
from supervisor_tui.server.auth import bearer_from_header, token_matches
from supervisor_tui.server.errors import ERROR_SCHEMA, ApiError
from supervisor_tui.server.gateway import PluginRoute
from supervisor_tui.server.struct_openapi import StructResponse, StructSchemas

if TYPE_CHECKING:
    from supervisor_tui.fleet.node import FleetNode  # the Redis client loads only with redis.url set


@dataclass
class ApiContext:
    """What the HTTP surface needs from the running process."""

    sup: Supervisor
    settings: Settings
    admin_token: str
    plugin_token: str
    mode: str  # "headless" | "embedded"
    api_url: str  # base URL clients use, for gateway URLs
    request_counts: Callable[[], dict[str, int]] = dict
    ready: Callable[[], tuple[bool, str]] = lambda: (True, "")
    metrics: Callable[[], bytes] | None = None  # renders Prometheus text
    # True once the server is shutting down: a logs?follow stream ends instead of holding the shutdown for the
    # server's whole grace period (uvicorn closes WebSockets itself).
    closing: Callable[[], bool] = lambda: False
    consoles: ConsoleService | None = None  # the console service, when one runs (counts on /api/v1/status)
    routes: Callable[[], list[PluginRoute]] = list  # the gateway's route table
    route_export: Callable[[], RouteExportStatus] = RouteExportStatus  # where routes are exported, how it goes
    fleet: FleetNode | None = None  # this node's part in the fleet, when redis.url is set

    def plugin_view(self, snap: PluginSnapshot) -> PluginSnapshot:
        """A snapshot as the API answers it: gateway URLs, requests proxied so far, uptime."""
        return for_views(snap, self.api_url, self.request_counts().get(snap.key, 0))

    def plugin(self, key: str) -> PluginSnapshot:
        """``key``'s snapshot as the API answers it; 404 when no plugin has that key."""
        try:
            return self.plugin_view(self.sup.plugin(key))
        except PluginNotFound:
            raise ApiError(404, "plugin_not_found", f"no plugin with key {key!r}") from None


@dataclass
class Guards:
    """The checks a route runs before its body: the admin token, the plugin token, a writable supervisor."""

    ctx: ApiContext
    admin: list[Any] = field(init=False)  # FastAPI dependencies of a read
    control: list[Any] = field(init=False)  # ... of an action that changes state
    plugin_auth: list[Any] = field(init=False)  # ... of an external plugin's calls

    def __post_init__(self) -> None:
        self.admin = [Depends(self.require_admin)]
        self.control = [Depends(self.require_admin), Depends(self.require_writable)]
        self.plugin_auth = [Depends(self.require_plugin_token)]

    def require_admin(self, request: Request) -> None:
        if not token_matches(bearer_from_header(request.headers.get("authorization")), self.ctx.admin_token):
            raise ApiError(
                401,
                "unauthorized",
                "missing or wrong admin token (send Authorization: Bearer <token>)",
                {"WWW-Authenticate": "Bearer"},
            )

    def require_plugin_token(self, request: Request) -> None:
        presented = bearer_from_header(request.headers.get("authorization"))
        if not (token_matches(presented, self.ctx.plugin_token) or token_matches(presented, self.ctx.admin_token)):
            raise ApiError(
                401,
                "unauthorized",
                "missing or wrong plugin token (send Authorization: Bearer <token>)",
                {"WWW-Authenticate": "Bearer"},
            )

    def require_writable(self) -> None:
        if self.ctx.settings.ui.read_only:
            raise ApiError(403, "read_only", "this supervisor is read-only: actions that change state are refused")

    def run_before_body(self, request: Request) -> None:
        """The route's token and read-only checks, for a body FastAPI refused before it ran them (ApiError)."""
        for dep in getattr(request.scope.get("route"), "dependencies", ()):
            if dep.dependency in (self.require_admin, self.require_plugin_token):
                dep.dependency(request)
            elif dep.dependency == self.require_writable:
                self.require_writable()


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {c: {"description": "Error", "content": {"application/json": {"schema": ERROR_SCHEMA}}} for c in codes}


# -- msgspec answers (server/struct_openapi.py) ----------------------------------------------------------------
SCHEMAS = StructSchemas()  # every Struct an admin route answers with: their schemas go into /openapi.json


def struct_answer(value: Any, status: int = 200) -> StructResponse:
    """``value`` (a Struct, or plain values holding Structs) encoded by msgspec, without a pydantic copy."""
    return StructResponse(value, status_code=status)


def struct_content(model: Any, description: str = "Successful Response") -> dict[str, Any]:
    """The OpenAPI response of an answer of type ``model`` (its schema joins /openapi.json's components)."""
    return {"description": description, **SCHEMAS.content(model)}
