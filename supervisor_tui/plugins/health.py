"""Health probes (http, tcp, exec) and the consecutive-failure rule shared by active and passive health.

``run_probe(check, client, target)`` runs the probe a manifest's ``health`` asks for against one plugin run
(``ProbeTarget``: its port, folder and environment). An exec probe's process is its own process group, killed
when the probe times out or is cancelled (a probe never outlives its plugin's stop), and only the first
``EXEC_OUTPUT_MAX`` bytes of its output are kept (for the detail); the rest is read and dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from supervisor_tui.config import local_url
from supervisor_tui.core.printable import printable
from supervisor_tui.plugins.manifest import PYTHON_NAMES, HealthCheck

EXEC_OUTPUT_MAX = 4096  # bytes of an exec probe's output kept for its detail
EXEC_DETAIL_MAX = 200  # characters of that output shown in the detail


class ProbeClient:
    """What the http probes share: nothing but the promise to be closed (each probe is one connection, closed
    after the answer's status line, so no keep-alive reaches a process that was restarted meanwhile).

    Probes speak HTTP/1.1 themselves (one GET, the status line read) rather than through httpx: a headless
    supervisor without a route export or webhook alerts then never imports httpx (about 2 MiB of its resident set,
    and a client's connection pool that probes never reused)."""

    async def aclose(self) -> None:
        """Nothing to release (the supervisor closes its probe client on shutdown)."""


def make_client() -> ProbeClient:
    """The client every http probe of a supervisor uses."""
    return ProbeClient()


STATUS_LINE_MAX = 8192  # bytes of an answer read for its status line


async def probe(client: ProbeClient, url: str, timeout: float) -> tuple[bool, str]:  # noqa: ASYNC109
    """GET ``url`` (``http://host:port/path``): healthy on a 2xx/3xx answer within ``timeout`` seconds.
    Returns (ok, detail)."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    started = time.monotonic()
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port, limit=STATUS_LINE_MAX)
            writer.write(
                f"GET {target} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: supervisor-tui-probe\r\n"
                "Connection: close\r\n\r\n".encode("latin-1")
            )
            await writer.drain()
            line = await reader.readline()
    except TimeoutError:
        return False, f"no answer within {timeout:g}s"
    except (OSError, ValueError) as exc:  # ValueError: a status line over STATUS_LINE_MAX
        if isinstance(exc, ConnectionRefusedError):
            return False, f"connection refused on port {port}"
        return False, f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    finally:
        if writer is not None:
            writer.close()
    words = line.split(None, 2)
    if len(words) < 2 or not words[0].startswith(b"HTTP/") or not words[1].isdigit():
        what = "no answer" if not line else "not an HTTP answer"
        return False, f"{what} (port {port})"
    status = int(words[1])
    ms = (time.monotonic() - started) * 1000
    if 200 <= status < 400:
        return True, f"HTTP {status} in {ms:.0f} ms"
    return False, f"HTTP {status}"


@dataclass(frozen=True, slots=True)
class ProbeTarget:
    """What a probe looks at: the plugin's port on ``host``; exec probes run in ``folder`` with ``env``."""

    host: str
    port: int
    folder: Path
    env: Mapping[str, str]


async def run_probe(check: HealthCheck, client: ProbeClient, target: ProbeTarget) -> tuple[bool, str]:
    """One probe of the kind ``check.type`` says. Returns (ok, detail)."""
    if check.type == "tcp":
        return await probe_tcp(target.host, target.port, check.timeout_s)
    if check.type == "exec":
        assert check.command is not None
        return await probe_exec(check.command, target.folder, target.env, check.timeout_s)
    assert check.path is not None
    return await probe(client, local_url(target.host, target.port) + check.path, check.timeout_s)


async def probe_tcp(host: str, port: int, timeout: float) -> tuple[bool, str]:  # noqa: ASYNC109
    """Healthy when ``host:port`` accepts a connection within ``timeout`` seconds (closed at once)."""
    started = time.monotonic()
    try:
        async with asyncio.timeout(timeout):  # not wait_for: Python 3.11's can swallow a cancellation
            _, writer = await asyncio.open_connection(host, port)
    except TimeoutError:
        return False, f"no connection within {timeout:g}s"
    except OSError as exc:
        return False, f"connect to port {port} failed: {exc.strerror or exc}"
    ms = (time.monotonic() - started) * 1000
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True, f"port {port} accepted a connection in {ms:.0f} ms"


async def probe_exec(
    command: tuple[str, ...] | str,
    cwd: Path,
    env: Mapping[str, str],
    timeout: float,  # noqa: ASYNC109
) -> tuple[bool, str]:
    """Healthy when ``command`` exits 0 within ``timeout`` seconds; a string runs with /bin/sh -c, a list as
    argv ("python" first: the supervisor's interpreter, as for plugin commands)."""
    if isinstance(command, str):
        argv = ["/bin/sh", "-c", command]
    else:
        argv = [sys.executable if command[0] in PYTHON_NAMES else command[0], *command[1:]]
    started = time.monotonic()
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            cwd=cwd,
            env=dict(env),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
    except (OSError, ValueError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        return False, f"cannot run {argv[0]!r}: {why}"
    assert proc.stdout is not None
    output = bytearray()
    reader = asyncio.ensure_future(_read_bounded(proc.stdout, output))
    try:
        # not wait_for: Python 3.11's returns the result when a cancellation arrives as the command exits
        async with asyncio.timeout(timeout):
            code = await _exited(proc)
    except TimeoutError:
        return False, f"command still running after {timeout:g}s (killed)"
    finally:
        _kill_group(proc.pid)  # the command and anything it left running
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await _exited(proc)  # SIGKILLed: the event loop's child watcher reports it at once
        reader.cancel()
        # Waited for with asyncio.wait, which never raises the reader's own CancelledError: suppressing that one
        # around ``await reader`` also swallowed a cancellation of this probe arriving meanwhile (a stop), and the
        # probe loop went on probing, with the stop waiting for it forever.
        await asyncio.wait([reader])
    # the command's words reach operators' terminals and the logs: control characters as visible escapes
    text = printable(" ".join(output.decode("utf-8", errors="replace").split())[:EXEC_DETAIL_MAX])
    ms = (time.monotonic() - started) * 1000
    said = f": {text}" if text else ""
    if code == 0:
        return True, f"command exited 0 in {ms:.0f} ms{said}"
    return False, f"command exited with code {code}{said}" if code > 0 else f"command killed by signal {-code}{said}"


async def _read_bounded(stream: asyncio.StreamReader, into: bytearray) -> None:
    """Keep the first ``EXEC_OUTPUT_MAX`` bytes; read and drop the rest (so the command never blocks on it)."""
    while chunk := await stream.read(65536):
        room = EXEC_OUTPUT_MAX - len(into)
        if room > 0:
            into += chunk[:room]


async def _exited(proc: asyncio.subprocess.Process) -> int:
    """The exit code once the process itself ended (``wait()`` would also wait for pipes its children hold)."""
    interval = 0.005
    while proc.returncode is None:
        await asyncio.sleep(interval)
        interval = min(interval * 2, 0.05)
    return proc.returncode


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


class HealthTracker:
    """Counts consecutive failures; reports a flip to unhealthy after ``failures`` of them, and back to healthy
    on the first success. ``healthy`` is None until the first result."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.consecutive = 0
        self.healthy: bool | None = None
        self.detail = ""

    def record(self, ok: bool, detail: str) -> bool | None:
        """Record one outcome; returns the new health when it flipped, else None."""
        self.detail = detail
        if ok:
            self.consecutive = 0
            if self.healthy is not True:
                self.healthy = True
                return True
            return None
        self.consecutive += 1
        if self.consecutive >= self.failures and self.healthy is not False:
            self.healthy = False
            return False
        return None

    def reset(self) -> None:
        self.consecutive = 0
        self.healthy = None
        self.detail = ""
