"""Run an ASGI app with uvicorn inside an event loop that is already running (the supervisor's).

``HttpServer``: ``bound = await server.start(app, host, port)`` binds the socket first (a bind failure raises
``BindError``, which the caller turns into one line and exit 2, instead of uvicorn's ``sys.exit(1)``), then
serves in a background task with uvicorn's signal capture off, no logging configuration, no access log, and
httptools' parser where installed, through fast_http's protocol, which enforces ``start(..., limits=...)`` (header
size and count, header and idle timeouts, connection cap, Host check: server.limits) on every connection;
``start(..., fast=routes)`` also answers those routes without ASGI.
The event loop is the caller's (server.listen's ``new_event_loop()``, re-exported here with ``bind_socket``).
``await server.stop()`` shuts down gracefully within
``shutdown_timeout`` seconds, then cancels what is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Generator
from typing import Any

import uvicorn

from supervisor_tui.server.fast_http import FastRoutes, fast_protocol
from supervisor_tui.server.limits import ConnectionLimits
from supervisor_tui.server.listen import BindError, bind_socket, new_event_loop

__all__ = ["BindError", "HttpServer", "bind_socket", "new_event_loop"]


def _http_implementation() -> str:
    try:
        import httptools  # noqa: F401
    except ImportError:
        return "h11"
    return "httptools"


class _EmbeddedServer(uvicorn.Server):
    """A uvicorn server that leaves signals to its host process, and ticks once a second instead of ten times."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self._exit_requested = asyncio.Event()

    def request_exit(self) -> None:
        self.should_exit = True
        self._exit_requested.set()

    async def main_loop(self) -> None:
        # uvicorn's own loop wakes every 0.1 s to look at should_exit and, every tenth time, to renew the Date
        # header: a tenth of an idle supervisor's wake-ups. Here the tick is the once-a-second one (a counter in
        # steps of 10 tells on_tick so) and a stop request wakes it at once.
        counter = 0
        while not await self.on_tick(counter):
            counter = (counter + 10) % 864000
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._exit_requested.wait(), 1.0)

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield

    # Older uvicorn versions install handlers through this method instead.
    def install_signal_handlers(self) -> None:
        return None


class HttpServer:
    """One uvicorn server in the current event loop, on a socket bound before uvicorn sees it."""

    def __init__(self, shutdown_timeout: float = 5.0, **uvicorn_options: Any) -> None:
        self.shutdown_timeout = shutdown_timeout
        self._options = uvicorn_options
        self._server: _EmbeddedServer | None = None
        self._task: asyncio.Task[None] | None = None
        self._socket: socket.socket | None = None
        self.bound: tuple[str, int] | None = None

    async def start(
        self,
        app: Any,
        host: str = "127.0.0.1",
        port: int = 4000,
        sock: socket.socket | None = None,
        fast: FastRoutes | None = None,
        limits: ConnectionLimits | None = None,
    ) -> tuple[str, int]:
        """Bind (or take ``sock``, already bound and listening), start serving ``app`` and return the bound
        (host, port) once the server accepts connections. ``fast``: routes served without ASGI (fast_http);
        ``limits``: what every connection may cost (default ``ConnectionLimits()``), enforced by fast_http's
        protocol on every request, fast or ASGI."""
        if self._task is not None:
            raise RuntimeError("server already started")
        if sock is None:
            sock = bind_socket(host, port)
        # Without a configured handler uvicorn's errors would reach Python's last-resort stderr printer,
        # which scribbles over a terminal UI; the host process decides where logs go.
        uvicorn_logger = logging.getLogger("uvicorn")
        if not uvicorn_logger.handlers:
            uvicorn_logger.addHandler(logging.NullHandler())
        options: dict[str, Any] = {
            "log_config": None,
            "access_log": False,
            "http": _http_implementation(),
            "lifespan": "off",
            "server_header": False,
            # The gateway sets X-Forwarded-* itself; uvicorn's middleware would only cost time on every request.
            "proxy_headers": False,
            "date_header": True,
            "timeout_graceful_shutdown": self.shutdown_timeout,
        }
        limits = limits or ConnectionLimits()
        options["timeout_keep_alive"] = limits.idle_timeout
        # h11 (no httptools) has no header count or head timeout; it bounds the head's size at least.
        options["h11_max_incomplete_event_size"] = limits.max_header_bytes
        options.update(self._options)
        if options["http"] == "httptools":
            protocol = fast_protocol(fast, limits)
            if protocol is None:
                limits.warn(
                    f"uvicorn {uvicorn.__version__} is not a version server.fast_http was tested with: header "
                    "limits, header timeout, connection cap and Host check are off"
                )
            options["http"] = protocol or "httptools"
        config = uvicorn.Config(app, **options)
        server = _EmbeddedServer(config)
        self._server, self._socket = server, sock
        self._task = asyncio.get_running_loop().create_task(self._serve(server, sock), name="http-server")
        while not server.started:
            if self._task.done():
                self._task.result()  # re-raise why it stopped
                raise RuntimeError("HTTP server stopped during startup")
            await asyncio.sleep(0.005)
        name = sock.getsockname()
        self.bound = (name[0], name[1])
        return self.bound

    @staticmethod
    async def _serve(server: _EmbeddedServer, sock: socket.socket) -> None:
        try:
            await server.serve(sockets=[sock])
        except SystemExit as exc:  # uvicorn exits on startup failures; keep the host process alive
            raise RuntimeError(f"HTTP server failed to start (exit {exc.code})") from None

    @property
    def open_connections(self) -> int:
        """Client connections open now (0 when not serving)."""
        server = self._server
        return len(server.server_state.connections) if server is not None else 0

    async def stop(self) -> None:
        """Stop accepting, let running requests finish within ``shutdown_timeout``, then cancel the rest."""
        server, task = self._server, self._task
        if server is None or task is None:
            return
        server.request_exit()
        try:
            await asyncio.wait_for(asyncio.shield(task), self.shutdown_timeout + 2.0)
        except TimeoutError:
            server.force_exit = True
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        except Exception:
            pass
        if self._socket is not None:
            self._socket.close()
        self._server = self._task = self._socket = None
