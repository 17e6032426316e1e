"""How `supervisor-tui agent state|exec` reach the running agent: a unix socket next to ``.console-id``.

One JSON line per request, one JSON line back. The socket file has mode 0600, so only the user running the
agent can change its state. A leftover socket from a killed agent is detected (nothing answers) and replaced.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import socketserver
import tempfile
import threading
from pathlib import Path
from typing import Any

from supervisor_tui.agent.client import Agent, parse_state

SOCKET_NAME = ".console-agent.sock"
_MAX_UNIX_PATH = 100


class ControlError(Exception):
    """No running agent answers, or it refused the request."""


def control_path(state_dir: Path) -> Path:
    """The socket path for an agent whose ``.console-id`` is in ``state_dir`` (short enough for AF_UNIX)."""
    path = state_dir.resolve() / SOCKET_NAME
    if len(str(path)) <= _MAX_UNIX_PATH:
        return path
    digest = hashlib.sha256(str(state_dir.resolve()).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"supervisor-tui-agent-{digest}.sock"


class AgentAlreadyRunning(Exception):
    """Another agent already serves this state directory."""


class ControlServer:
    """Serves state changes for one running Agent."""

    def __init__(self, agent: Agent, path: Path) -> None:
        self.agent = agent
        self.path = path
        self._server: socketserver.ThreadingUnixStreamServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self.path.exists():
            try:
                request(self.path, {"op": "ping"}, timeout=2.0)
            except ControlError:
                self.path.unlink(missing_ok=True)  # left behind by an agent that was killed
            else:
                raise AgentAlreadyRunning(f"an agent is already running for {self.agent.state_dir} ({self.path})")
        agent = self.agent

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                try:
                    line = self.rfile.readline(65536)
                    reply = _apply(agent, json.loads(line))
                except Exception as exc:  # a bad request must not stop the agent
                    reply = {"ok": False, "error": str(exc)}
                self.wfile.write(json.dumps(reply).encode() + b"\n")

        old_umask = os.umask(0o177)
        try:
            self._server = socketserver.ThreadingUnixStreamServer(str(self.path), Handler)
        finally:
            os.umask(old_umask)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="agent-control", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def _apply(agent: Agent, req: dict[str, Any]) -> dict[str, Any]:
    op = req.get("op")
    if op == "ping":
        return {"ok": True, "console_id": agent.console_id, "state": agent.state.value}
    if op == "state":
        state = parse_state(str(req.get("state", "")))
        error = req.get("error")
        delivered = agent.set_state(
            state,
            current_job=req.get("job"),
            error={"message": error} if isinstance(error, str) else error,
            wait=float(req.get("wait", 10.0)),
        )
        return {
            "ok": True,
            "console_id": agent.console_id,
            "state": state.value,
            "delivered": delivered,
            "detail": agent.last_result,
        }
    raise ValueError(f"unknown request {op!r}")


def request(path: Path, req: dict[str, Any], timeout: float = 15.0) -> dict[str, Any]:
    """Send one request to the agent listening on ``path``; ControlError when none answers."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(str(path))
            s.sendall(json.dumps(req).encode() + b"\n")
            buf = b""
            while not buf.endswith(b"\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                buf += chunk
    except OSError as exc:
        raise ControlError(f"no agent answers on {path}: {exc.strerror or exc}") from None
    try:
        reply: dict[str, Any] = json.loads(buf)
    except ValueError:
        raise ControlError(f"the agent on {path} sent a bad reply") from None
    if not reply.get("ok"):
        raise ControlError(str(reply.get("error", "refused")))
    return reply
