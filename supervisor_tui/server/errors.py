"""The one error shape every HTTP answer uses: {"error": {"code": "...", "message": "..."}}.

``ApiError`` is what routes raise; ``error_body``/``send_json``/``send_error`` answer raw ASGI requests.
``InternalErrorShield`` wraps the whole HTTP surface: an exception no route handled is logged with its traceback
under an error id and answered as a JSON 500 carrying that id (``internal_error_body``), never as the server's
plain-text 500.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Iterable
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger(__name__)


class ApiError(Exception):
    """An error a client caused (or may retry), with its HTTP status and a stable machine-readable code."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.headers = headers or {}


def error_body(code: str, message: str, **extra: Any) -> bytes:
    """The JSON bytes of an error answer; ``extra`` adds fields to the error object (e.g. ``field``)."""
    return json.dumps({"error": {"code": code, "message": message, **extra}}).encode()


async def send_json(send: Send, status: int, body: bytes, headers: Iterable[tuple[bytes, bytes]] = ()) -> None:
    """Answer a raw ASGI request with a JSON body that is already encoded."""
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body)), *headers],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def send_error(
    send: Send, status: int, code: str, message: str, headers: Iterable[tuple[bytes, bytes]] = ()
) -> None:
    """Answer a raw ASGI request with the error shape."""
    await send_json(send, status, error_body(code, message), headers)


def report_internal_error(where: str, exc: BaseException) -> str:
    """Log ``exc`` with its traceback under a new error id, and return the id (the client is shown it)."""
    error_id = secrets.token_hex(6)
    log.error("unexpected error in %s (error id %s)", where, error_id, exc_info=exc)
    return error_id


def internal_error_body(error_id: str) -> bytes:
    """The 500 answer for an error logged under ``error_id``."""
    message = f"unexpected server error (error id {error_id}; the supervisor's log has the details)"
    return error_body("internal", message, id=error_id)


class InternalErrorShield:
    """ASGI middleware: whatever escapes ``app`` before its answer started is logged and answered as a JSON 500."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:
            if started:  # the answer is under way (or complete): only the server can end the connection now
                raise
            error_id = report_internal_error(f"{scope['method']} {scope['path'][:200]}", exc)
            await send_json(send, 500, internal_error_body(error_id))


ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {
                "code": {"type": "string"},
                "message": {"type": "string"},
                "field": {"type": "string", "description": "the request field at fault, when there is one"},
                "id": {"type": "string", "description": "a 500's error id, under which the supervisor logged it"},
            },
        }
    },
}
