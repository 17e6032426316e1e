"""Admin API additions for in-process plugins, and the origin of every admin action.

- ``GET /api/v1/inprocess-plugins``: the last load result (loaded, failed with reasons), the ``[inprocess]`` settings,
  each in-process plugin's counters (hook calls, errors, timeouts, loop blocks) and its ``get_status()``.
  ``GET /api/v1/extensions`` is its deprecated alias (a ``Deprecation`` header, one warning line at first use).
- ``ActionOriginMiddleware``: admin requests act as origin ``api`` (``ctl`` when the client says so with
  ``X-Supervisor-Origin: ctl`` or its User-Agent, ``tui`` for an attached TUI); the actor is
  ``X-Supervisor-Actor`` when sent, else the client's address. The audit log reads it from the
  ``operator.action`` events.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from fastapi import Depends, FastAPI, Request, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from supervisor_tui.core.actions import acting_as
from supervisor_tui.server.auth import bearer_from_header, token_matches
from supervisor_tui.server.errors import ApiError

ORIGINS = ("ctl", "tui", "api")
INPROCESS_PATH = "/api/v1/inprocess-plugins"
DEPRECATED_PATH = "/api/v1/extensions"  # the name before "in-process plugin" was the only one; still answered
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


def install_inprocess_api(
    app: FastAPI, admin_token: str, host: Callable[[], Any], warn: Callable[[str], object] | None = None
) -> None:
    """Add ``GET /api/v1/inprocess-plugins`` (and its deprecated alias ``/api/v1/extensions``) to the admin app;
    ``host()`` returns the InProcessHost (or None yet), ``warn`` logs the alias's first use."""

    def require_admin(request: Request) -> None:
        if not token_matches(bearer_from_header(request.headers.get("authorization")), admin_token):
            raise ApiError(
                401,
                "unauthorized",
                "missing or wrong admin token (send Authorization: Bearer <token>)",
                {"WWW-Authenticate": "Bearer"},
            )

    async def describe() -> dict[str, Any]:
        current = host()
        if current is None:
            return {"loaded": [], "failed": [], "settings": {}, "plugins": [], "loop_blocks": []}
        result: dict[str, Any] = await current.describe()
        return result

    @app.get(INPROCESS_PATH, dependencies=[Depends(require_admin)], tags=["plugins"])
    async def inprocess_plugins() -> dict[str, Any]:
        """In-process plugins: the last load (loaded, failed with reasons), settings, counters and status."""
        return await describe()

    warned: list[bool] = []

    @app.get(DEPRECATED_PATH, dependencies=[Depends(require_admin)], tags=["plugins"], deprecated=True)
    async def extensions(response: Response) -> dict[str, Any]:
        """Deprecated alias of ``GET /api/v1/inprocess-plugins`` (the same answer, plus a Deprecation header)."""
        response.headers["Deprecation"] = "true"
        response.headers["Link"] = f'<{INPROCESS_PATH}>; rel="successor-version"'
        if warn is not None and not warned:
            warned.append(True)
            warn(f"GET {DEPRECATED_PATH} is deprecated: use GET {INPROCESS_PATH} (the same answer)")
        return await describe()
