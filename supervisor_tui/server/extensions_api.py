"""Admin API additions for in-process plugins, and the origin of every admin action.

- ``GET /api/v1/extensions``: the last load result (loaded, failed with reasons), the ``[extensions]`` settings,
  each in-process plugin's counters (hook calls, errors, timeouts, loop blocks) and its ``get_status()``.
- ``ActionOriginMiddleware``: admin requests act as origin ``api`` (``ctl`` when the client says so with
  ``X-Supervisor-Origin: ctl`` or its User-Agent, ``tui`` for an attached TUI); the actor is
  ``X-Supervisor-Actor`` when sent, else the client's address. The audit log reads it from the
  ``operator.action`` events.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from fastapi import Depends, FastAPI, Request
from starlette.types import ASGIApp, Receive, Scope, Send

from supervisor_tui.core.actions import acting_as
from supervisor_tui.server.auth import bearer_from_header, token_matches
from supervisor_tui.server.errors import ApiError

ORIGINS = ("ctl", "tui", "api")
_ACTOR_OK = re.compile(r"[^\w.@:+/ -]")


class ActionOriginMiddleware:
    """Sets the action origin (api, ctl, tui) and actor for everything an admin request does."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        origin, actor, agent = "api", "", ""
        for name, value in scope.get("headers", ()):
            if name == b"x-supervisor-origin":
                said = value.decode("latin-1").strip().lower()
                origin = said if said in ORIGINS else origin
            elif name == b"x-supervisor-actor":
                actor = _ACTOR_OK.sub("", value.decode("latin-1"))[:100]
            elif name == b"user-agent":
                agent = value.decode("latin-1")
        if origin == "api" and agent.startswith("supervisor-tui-ctl/"):
            origin = "ctl"
        client = scope.get("client")
        address = str(client[0]) if client else ""
        actor = actor or address or "unknown"
        if address and address not in actor:
            actor = f"{actor} ({address})"
        with acting_as(origin, actor):
            await self.app(scope, receive, send)


def install_extensions_api(app: FastAPI, admin_token: str, host: Callable[[], Any]) -> None:
    """Add ``GET /api/v1/extensions`` to the admin app; ``host()`` returns the ExtensionHost (or None yet)."""

    def require_admin(request: Request) -> None:
        if not token_matches(bearer_from_header(request.headers.get("authorization")), admin_token):
            raise ApiError(
                401,
                "unauthorized",
                "missing or wrong admin token (send Authorization: Bearer <token>)",
                {"WWW-Authenticate": "Bearer"},
            )

    @app.get("/api/v1/extensions", dependencies=[Depends(require_admin)], tags=["plugins"])
    async def extensions() -> dict[str, Any]:
        """In-process plugins: the last load (loaded, failed with reasons), settings, counters and status."""
        current = host()
        if current is None:
            return {"loaded": [], "failed": [], "settings": {}, "plugins": [], "loop_blocks": []}
        result: dict[str, Any] = await current.describe()
        return result
