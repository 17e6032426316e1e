"""The gateway's path to in-process plugins: their ASGI app is called directly, no socket in between.

The app sees the request as a mounted sub-application would: ``path`` without ``/api/plugins/<key>``,
``root_path`` set to that prefix. Only declared endpoints get here (the gateway's route table checks them
first). A body over the plugin's limit is refused with 413; an exception before the response started
answers 500 in the error shape, and counts as a failure for passive health.
"""

from __future__ import annotations

import logging
from typing import Any

from supervisor_tui.server.asgi import Message, Receive, Scope, Send
from supervisor_tui.server.errors import send_error
from supervisor_tui.server.gateway_routes import PREFIX

log = logging.getLogger(__name__)


class _BodyTooLarge(Exception):
    pass


async def call_plugin_app(
    app: Any,
    scope: Scope,
    receive: Receive,
    send: Send,
    key: str,
    sub: str,
    max_body: int,
) -> int:
    """Run one request through an in-process plugin's app; returns the status sent (500 when it raised)."""
    for name, value in scope.get("headers", ()):
        if name == b"content-length" and value.isdigit() and int(value) > max_body:
            await send_error(send, 413, "body_too_large", f"request body over the limit of {max_body} bytes")
            return 413
    prefix = PREFIX + key
    child = dict(scope)
    child["path"] = sub or "/"
    child["raw_path"] = (sub or "/").encode("utf-8")
    child["root_path"] = str(scope.get("root_path", "")) + prefix
    status = 0
    seen = 0

    async def limited_receive() -> Message:
        nonlocal seen
        message = await receive()
        if message.get("type") == "http.request":
            seen += len(message.get("body", b""))
            if seen > max_body:
                raise _BodyTooLarge
        return message

    async def tracking_send(message: Message) -> None:
        nonlocal status
        if message.get("type") == "http.response.start":
            status = int(message.get("status", 200))
        await send(message)

    try:
        await app(child, limited_receive, tracking_send)
    except _BodyTooLarge:
        if not status:
            await send_error(send, 413, "body_too_large", f"request body over the limit of {max_body} bytes")
            return 413
        return status
    except Exception as exc:  # the plugin's bug must not take the gateway down
        log.warning("in-process plugin %r raised: %r", key, exc)
        if not status:
            message = f"plugin {key!r} raised {type(exc).__name__}: {exc}"
            await send_error(send, 500, "plugin_error", message)
        return 500
    return status or 500
