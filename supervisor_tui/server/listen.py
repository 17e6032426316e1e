"""The API socket and the event loop, without the HTTP server: what a supervisor needs before its plugins start.

``bind_socket(host, port)`` binds and listens (a failure is ``BindError``, which the caller turns into one line and
exit 2); ``new_event_loop()`` gives a uvloop loop when uvloop is installed, for
``asyncio.Runner(loop_factory=new_event_loop)``. The server that later serves the socket (server.serve) imports
uvicorn, which the start of the plugins need not wait for.
"""

from __future__ import annotations

import asyncio
import socket


class BindError(OSError):
    """The address could not be bound (in use, not permitted, not available)."""

    def __init__(self, host: str, port: int, cause: OSError) -> None:
        self.host, self.port = host, port
        super().__init__(cause.errno, f"cannot listen on {host}:{port}: {cause.strerror or cause}")


def new_event_loop() -> asyncio.AbstractEventLoop:
    """A uvloop loop when uvloop is installed, else asyncio's default loop.

    For ``asyncio.Runner(loop_factory=new_event_loop)`` in whatever runs the supervisor and this server.
    """
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def bind_socket(host: str, port: int, backlog: int = 2048) -> socket.socket:
    """A listening TCP socket on (host, port); port 0 picks a free port. Raises BindError."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise BindError(host, port, OSError(exc.errno, exc.strerror)) from exc
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise BindError(host, port, exc) from exc
    return sock
