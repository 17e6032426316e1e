"""The admin app, built at its first request: a supervisor nobody asks anything never loads FastAPI.

FastAPI, pydantic, opentelemetry-api (FastAPI's routing imports it for its tracing) and prometheus-client are about
20 MiB of a headless supervisor's memory and most of the imports of its start. Plugins, the gateway and the
console ingest need none of them, so ``LazyAdmin`` stands in for the admin app: ``GET /health`` and ``GET /ready``
(what load balancers and orchestrators poll) are answered here with FastAPI's exact bytes, and the first other
admin request (or event stream) imports the admin modules in a worker thread, so the event loop keeps serving the
gateway meanwhile, builds the app once, and passes that request and every later one to it. ``await
lazy.load()`` builds it now (the runtime does when plugins could use up the descriptors the import needs).
"""

from __future__ import annotations

import asyncio
import importlib
import json
from collections.abc import Callable, Sequence
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from supervisor_tui.server.errors import send_json

# Readiness as the admin routes report it: (ready, the reason when not).
Readiness = Callable[[], tuple[bool, str]]


def health_answer() -> tuple[int, dict[str, Any]]:
    """``GET /health``: liveness, the process answers."""
    return 200, {"status": "ok"}


def ready_answer(readiness: Readiness) -> tuple[int, dict[str, Any]]:
    """``GET /ready``: 200 when serving, else 503 with the reason, which carries the error object too."""
    ok, detail = readiness()
    if ok:
        return 200, {"ready": True, "detail": ""}
    return 503, {"ready": False, "detail": detail, "error": {"code": "not_ready", "message": detail}}


def json_bytes(content: Any) -> bytes:
    """JSON as Starlette's JSONResponse encodes it, so both paths answer the same bytes."""
    return json.dumps(content, ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":")).encode()


def import_modules(names: Sequence[str]) -> None:
    for name in names:
        importlib.import_module(name)


class LazyAdmin:
    """ASGI app: answers ``GET /health`` and ``GET /ready`` itself, and builds the admin app with ``build()``
    (after importing ``modules`` in a worker thread) for everything else, at the first request that needs it."""

    def __init__(self, build: Callable[[], ASGIApp], modules: Sequence[str], readiness: Readiness) -> None:
        self._build, self._modules, self._readiness = build, tuple(modules), readiness
        self._app: ASGIApp | None = None
        self._lock = asyncio.Lock()

    @property
    def loaded(self) -> bool:
        return self._app is not None

    async def load(self) -> ASGIApp:
        """The admin app, built by the first caller; the others wait for it. A failed build raises, and the next
        request tries again."""
        async with self._lock:
            if self._app is None:
                await asyncio.to_thread(import_modules, self._modules)
                self._app = self._build()
        return self._app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "GET":
            answer = _LIGHT_ROUTES.get(scope["path"])
            if answer is not None:
                status, content = answer(self._readiness)
                await send_json(send, status, json_bytes(content))
                return
        app = self._app if self._app is not None else await self.load()
        await app(scope, receive, send)


_LIGHT_ROUTES: dict[str, Callable[[Readiness], tuple[int, dict[str, Any]]]] = {
    "/health": lambda _: health_answer(),
    "/ready": ready_answer,
}
