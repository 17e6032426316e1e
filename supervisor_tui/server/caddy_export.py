"""Route export to Caddy: keeps one server in a running Caddy's config equal to the gateway's route table.

``CaddyExport(table, admin_url, server, listen, self_url, logs)``: ``await export.start()`` runs a task that
writes ``caddy_config.caddy_server(...)`` to ``/config/apps/http/servers/<server>`` through Caddy's admin API;
``export.changed()`` (RouteSync's ``on_change``) asks for a new write, ``await export.stop()`` ends the task and
leaves Caddy as it is. ``export.status()`` is what ``/api/v1/status``, ``/api/v1/routes`` and the TUI show.

- A burst of changes is one write: after the first change the task waits ``debounce`` seconds for the rest.
- Every ``check_interval`` seconds the server is read back; when it differs from the last write (Caddy restarted
  without it, or someone edited it) the supervisor's config is written again and that is logged once per repair.
- The write is a PATCH of the server (PUT when it is missing: Caddy's PUT creates ``apps/http/servers`` when they
  are missing); nothing else in Caddy's config is read or written.
- Caddy unreachable or refusing the config: one log line when it starts and one when it ends, the status says
  so, and attempts continue with capped, jittered backoff (core.backoff).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from supervisor_tui.config import masked_url
from supervisor_tui.core.backoff import backoff_delay
from supervisor_tui.core.logs import LogHub
from supervisor_tui.core.status import RouteExportStatus
from supervisor_tui.server.caddy_config import caddy_server
from supervisor_tui.server.gateway import RouteTable

if TYPE_CHECKING:
    import httpx

DEBOUNCE = 0.1
CHECK_INTERVAL = 5.0
BACKOFF_BASE = 0.5
BACKOFF_CAP = 10.0
ADMIN_TIMEOUT = 5.0
# Caddy's answers are short JSON; an error text longer than this is cut before it is stored or logged.
MAX_ERROR_TEXT = 300


class CaddyRefused(Exception):
    """Caddy's admin API answered, but not with success (the message has its status and error text)."""


class CaddyExport:
    """Keeps the server named ``server`` in Caddy's config equal to ``table``, through the admin API only."""

    def __init__(
        self,
        table: RouteTable,
        *,
        admin_url: str,
        server: str,
        listen: str,
        self_url: Callable[[], str],
        logs: LogHub,
        debounce: float = DEBOUNCE,
        check_interval: float = CHECK_INTERVAL,
    ) -> None:
        self.table = table
        self.admin_url = admin_url.rstrip("/")
        self.server = server
        self.listen = listen
        self.self_url = self_url
        self.logs = logs
        self.debounce = debounce
        self.check_interval = check_interval
        self._status = RouteExportStatus(target="caddy", admin=masked_url(self.admin_url), server=server, listen=listen)
        self._path = f"/config/apps/http/servers/{server}"
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._client: httpx.AsyncClient | None = None
        # The last server written, and how Caddy shows it when read back (the two differ if Caddy normalises
        # what it stores): in step means the table still makes the first and Caddy still shows the second.
        self._written: dict[str, Any] | None = None
        self._read_back: dict[str, Any] | None = None
        self._failures = 0

    def status(self) -> RouteExportStatus:
        return self._status

    def changed(self) -> None:
        """The route table changed: write it to Caddy soon (changes within ``debounce`` are one write)."""
        self._wake.set()

    async def start(self) -> None:
        if self._task is not None:
            return
        import httpx  # only with a route export: a headless supervisor without one never loads httpx

        self._client = httpx.AsyncClient(base_url=self.admin_url, timeout=ADMIN_TIMEOUT, trust_env=False)
        self._wake.set()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="caddy-export")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    # -- the loop ------------------------------------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            wait = self.check_interval
            if self._failures:
                wait = backoff_delay(self._failures - 1, BACKOFF_BASE, BACKOFF_CAP) * random.uniform(0.5, 1.0)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait)
            if self._wake.is_set():
                await asyncio.sleep(self.debounce)  # the rest of the burst
                self._wake.clear()
            await self.sync_once()

    def desired(self) -> dict[str, Any]:
        """The server object for the current route table."""
        routes = [r for r in (self.table.get(k) for k in self.table.keys()) if r is not None]
        return caddy_server(routes, self.listen, self.self_url())

    async def sync_once(self) -> None:
        """Read the server back, write it when it is not what the table says; record how it went."""
        import httpx  # loaded by start()

        desired = self.desired()
        status = self._status
        status.last_attempt_at = time.time()
        try:
            current = await self._read()
            ours = desired == self._written
            if not (ours and current == self._read_back) and current != desired:
                repaired = ours and self._written is not None
                await self._write(desired, exists=current is not None)
                self._read_back = await self._read()
                if repaired:
                    status.repairs += 1
                    how = "is gone (Caddy restarted?)" if current is None else "was changed outside the supervisor"
                    self.logs.warning(
                        f"route export: server {self.server!r} in Caddy {how}: the supervisor's routes are re-applied",
                        event="route_export_repaired",
                    )
        except (httpx.HTTPError, CaddyRefused, ValueError) as exc:
            self._failed(exc)
            return
        if self._failures or status.ok is None:
            if self._failures:
                self.logs.info(
                    f"route export: Caddy's admin API at {status.admin} answers again; routes are in step",
                    event="route_export_recovered",
                )
            else:
                self.logs.info(
                    f"route export: {len(self.table)} plugins' routes in Caddy server {self.server!r} on {self.listen}",
                    event="route_export_started",
                )
        self._failures = 0
        status.ok = status.reachable = True
        status.last_error = ""
        status.last_success_at = time.time()

    def _failed(self, exc: Exception) -> None:
        status = self._status
        reachable = isinstance(exc, CaddyRefused | ValueError)
        message = str(exc) if reachable else f"cannot reach Caddy's admin API at {status.admin}: {_reason(exc)}"
        message = message[:MAX_ERROR_TEXT]
        if not self._failures or message != status.last_error:  # one line per outage (or a new kind of failure)
            self.logs.warning(f"route export: {message}; retrying with backoff", event="route_export_failed")
        self._failures += 1
        status.ok = False
        status.reachable = reachable
        status.last_error = message

    # -- the admin API -------------------------------------------------------------------------------------------

    async def _read(self) -> dict[str, Any] | None:
        """The server as Caddy has it, or None when it (or apps/http above it) does not exist."""
        assert self._client is not None
        response = await self._client.get(self._path)
        if response.status_code == 200:
            body = response.json()
            return body if isinstance(body, dict) else None
        text = _error_text(response)
        if "invalid traversal" in text or "does not exist" in text:
            return None
        raise CaddyRefused(f"Caddy answered GET {self._path} with {response.status_code}: {text}")

    async def _write(self, server: dict[str, Any], exists: bool) -> None:
        assert self._client is not None
        body = json.dumps(server).encode()
        headers = {"Content-Type": "application/json"}
        method = "PATCH" if exists else "PUT"
        response = await self._client.request(method, self._path, content=body, headers=headers)
        if response.status_code != 200:
            text = _error_text(response)
            # Someone created or removed it between the read and the write: the other verb does it.
            if ("already exists" in text) or ("does not exist" in text):
                method = "PUT" if exists else "PATCH"
                response = await self._client.request(method, self._path, content=body, headers=headers)
                text = _error_text(response)
            if response.status_code != 200:
                raise CaddyRefused(f"Caddy refused {method} {self._path} ({response.status_code}): {text}")
        self._written = server
        self._status.writes += 1


def _error_text(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:MAX_ERROR_TEXT]
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        return body["error"][:MAX_ERROR_TEXT]
    return response.text[:MAX_ERROR_TEXT]


def _reason(exc: Exception) -> str:
    return str(exc) or type(exc).__name__
