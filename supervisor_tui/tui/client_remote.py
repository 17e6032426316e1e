"""The remote client (attach mode): the admin API over HTTP and ``/ws/events`` over a websocket.

Answers about plugins and the supervisor as a whole are decoded by msgspec straight into the core's Structs
(plugins/model.py, core/status.py): a field the API
adds reaches the TUI without a parser, and an answer of the wrong shape is a ClientError, not a guess.
Every request has a deadline, so an action against a dead supervisor fails with a message instead of hanging.
``/ws/events`` messages are decoded the same way, into the core's event Structs (core/events.py, one decoder of
the union tagged by ``topic``); one this TUI does not know (a newer supervisor's) is skipped and counted.
The event stream reconnects with backoff and reports the link going down and coming back as
``ConnectionChange`` events (``client.connection``), which the app shows as a banner.
"""

from __future__ import annotations

import asyncio
import getpass
import time
from collections.abc import AsyncIterator
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import httpx
import msgspec

from supervisor_tui.consoles import wire
from supervisor_tui.core.backoff import backoff_delay
from supervisor_tui.core.events import EVENT_DECODER, Event
from supervisor_tui.core.status import NodeList, NodeStatus, RouteExportStatus, SupervisorStatus
from supervisor_tui.plugins.model import (
    GroupActionResult,
    LogEntry,
    LogLines,
    MetricPoint,
    PluginEnvelope,
    PluginList,
    PluginSnapshot,
)
from supervisor_tui.tui.client import (
    CONSOLE_STATES,
    ClientError,
    ClientInfo,
    ConnectionChange,
    ConsoleInfo,
    ConsolePage,
    HeartbeatInfo,
    SupervisorClient,
    TransitionInfo,
    console_answer,
    parse_time,
)

STATUS_REUSE_S = 0.5  # the header's status figures of one refresh come from one read
QUERY_TIMEOUT = httpx.Timeout(10.0, connect=5.0)
# start waits for readiness and stop for stopwaitsecs; both are bounded by the supervisor, this is the backstop.
ACTION_TIMEOUT = httpx.Timeout(120.0, connect=5.0)
RECONNECT_FIRST = 0.5  # seconds before the first reconnect attempt, doubling each time
RECONNECT_MAX = 5.0
EVENT_TOPICS = "plugin,log,console,fleet"
T = TypeVar("T")


class _MetricPoints(msgspec.Struct):
    """``GET /api/v1/plugins/{key}/metrics`` read as chart points (the samples' other fields are skipped)."""

    samples: list[MetricPoint]


class _RequestCounts(msgspec.Struct):
    """``GET /api/v1/plugins`` read for the requests counts only."""

    class Plugin(msgspec.Struct):
        key: str
        requests: int = 0

    plugins: list[Plugin]


_PLUGIN = msgspec.json.Decoder(PluginSnapshot)
_PLUGIN_LIST = msgspec.json.Decoder(PluginList)
_PLUGIN_ENVELOPE = msgspec.json.Decoder(PluginEnvelope)
_GROUP_ACTION = msgspec.json.Decoder(GroupActionResult)
_METRIC_POINTS = msgspec.json.Decoder(_MetricPoints)
_LOG_LINES = msgspec.json.Decoder(LogLines)
_REQUEST_COUNTS = msgspec.json.Decoder(_RequestCounts)
_STATUS = msgspec.json.Decoder(SupervisorStatus)
_NODE_LIST = msgspec.json.Decoder(NodeList)


def normalize_url(url: str) -> str:
    """``host:4000`` or ``http://host:4000/`` -> ``http://host:4000``; raises ValueError when unusable."""
    text = url.strip()
    if "://" not in text:
        text = "http://" + text
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL: {url!r}")
    return urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", ""))


def _error_message(response: httpx.Response) -> str:
    try:
        body = response.json()
        error = body.get("error") if isinstance(body, dict) else None
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
    except ValueError:
        pass
    return f"HTTP {response.status_code} {response.reason_phrase}".strip()


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


class RemoteClient(SupervisorClient):
    """A SupervisorClient for a supervisor reached over its admin API (usually ``--headless`` elsewhere)."""

    def __init__(self, url: str, token: str, *, read_only: bool = False, keymap: dict[str, str] | None = None) -> None:
        self.base = normalize_url(url)
        self.token = token
        self.info = ClientInfo(mode="attached", api_url=self.base, read_only=read_only, keymap=dict(keymap or {}))
        self._forced_read_only = read_only
        self._http = httpx.AsyncClient(
            base_url=self.base,
            # X-Supervisor-*: the audit log records actions as coming from the TUI, by this user.
            headers={"Authorization": f"Bearer {token}", "X-Supervisor-Origin": "tui", "X-Supervisor-Actor": _user()},
            timeout=QUERY_TIMEOUT,
        )
        self._connected = True
        self._closed = False
        self._status_body: SupervisorStatus | None = None
        self._status_at = -STATUS_REUSE_S  # monotonic time of the last /api/v1/status read
        self._ws: Any = None
        self.undecoded_events = 0  # /ws/events messages skipped: a topic or shape this TUI does not know

    @property
    def connected(self) -> bool:
        return self._connected

    # -- transport -----------------------------------------------------------------------------------
    async def _request(self, method: str, path: str, deadline: httpx.Timeout = QUERY_TIMEOUT, **kw: Any) -> Any:
        response = await self._send(method, path, deadline, **kw)
        try:
            return response.json()
        except ValueError:
            raise ClientError(f"{self.base} answered {path} with something that is not JSON", "bad_response") from None

    async def _decode(
        self,
        decoder: msgspec.json.Decoder[T],
        method: str,
        path: str,
        deadline: httpx.Timeout = QUERY_TIMEOUT,
        **kw: Any,
    ) -> T:
        """The answer decoded into its Struct; ClientError naming what is wrong when it does not fit."""
        response = await self._send(method, path, deadline, **kw)
        try:
            return decoder.decode(response.content)
        except msgspec.DecodeError as exc:  # ValidationError included: JSON of another shape
            raise ClientError(f"{self.base} answered {path} with an unexpected body: {exc}", "bad_response") from None

    async def _send(self, method: str, path: str, deadline: httpx.Timeout, **kw: Any) -> httpx.Response:
        try:
            response = await self._http.request(method, path, timeout=deadline, **kw)
        except httpx.TimeoutException:
            raise ClientError(f"{self.base} did not answer in time ({method} {path})", "timeout") from None
        except httpx.HTTPError as exc:
            raise ClientError(f"cannot reach {self.base}: {exc or type(exc).__name__}", "unreachable") from None
        if response.status_code == 401:
            raise ClientError(f"{self.base} refused the admin token ({_error_message(response)})", "unauthorized")
        if response.status_code >= 400:
            raise ClientError(_error_message(response), f"http_{response.status_code}")
        return response

    async def connect(self) -> None:
        try:
            status = await self._decode(_STATUS, "GET", "/api/v1/status")
        except ClientError as exc:
            if exc.code not in ("bad_response", "http_404"):
                raise
            raise ClientError(
                f"{self.base} does not look like a supervisor-tui API (no /api/v1/status)", "not_api"
            ) from None
        self._status_body, self._status_at = status, time.monotonic()
        self.info.version = status.version
        self.info.read_only = self._forced_read_only or status.read_only
        remote_mode = status.mode
        if remote_mode and remote_mode != "headless":
            self.info.mode = f"attached to {remote_mode}"

    async def close(self) -> None:
        self._closed = True
        if self._ws is not None:
            try:
                await self._ws.close()
            except Exception:  # closing a dead link is best effort
                pass
        await self._http.aclose()

    # -- plugins -------------------------------------------------------------------------------------
    async def plugins(self) -> list[PluginSnapshot]:
        return (await self._decode(_PLUGIN_LIST, "GET", "/api/v1/plugins")).plugins

    async def plugin(self, key: str) -> PluginSnapshot:
        return await self._decode(_PLUGIN, "GET", f"/api/v1/plugins/{key}")

    async def _act(self, verb: str, key: str) -> PluginSnapshot:
        if self.info.read_only:
            raise ClientError("read-only: actions that change state are disabled", "read_only")
        path = f"/api/v1/plugins/{key}/{verb}"
        return (await self._decode(_PLUGIN_ENVELOPE, "POST", path, ACTION_TIMEOUT, params={"wait": "true"})).plugin

    async def start(self, key: str) -> PluginSnapshot:
        return await self._act("start", key)

    async def stop(self, key: str) -> PluginSnapshot:
        return await self._act("stop", key)

    async def restart(self, key: str) -> PluginSnapshot:
        return await self._act("restart", key)

    async def scale(self, key: str, replicas: int) -> PluginSnapshot:
        if self.info.read_only:
            raise ClientError("read-only: actions that change state are disabled", "read_only")
        path = f"/api/v1/plugins/{key}/scale"
        return (await self._decode(_PLUGIN_ENVELOPE, "POST", path, ACTION_TIMEOUT, json={"replicas": replicas})).plugin

    async def group_action(self, verb: str, group: str) -> list[PluginSnapshot]:
        if self.info.read_only:
            raise ClientError("read-only: actions that change state are disabled", "read_only")
        return (await self._decode(_GROUP_ACTION, "POST", f"/api/v1/groups/{group}/{verb}", ACTION_TIMEOUT)).plugins

    async def metrics(self, key: str) -> list[MetricPoint]:
        return (await self._decode(_METRIC_POINTS, "GET", f"/api/v1/plugins/{key}/metrics")).samples

    async def request_counts(self) -> dict[str, int]:
        body = await self._decode(_REQUEST_COUNTS, "GET", "/api/v1/plugins")
        return {p.key: p.requests for p in body.plugins}

    # -- logs ----------------------------------------------------------------------------------------
    async def logs(self, source: str | None = None, lines: int = 200) -> list[LogEntry]:
        path = f"/api/v1/plugins/{source}/logs" if source is not None else "/api/v1/logs"
        return (await self._decode(_LOG_LINES, "GET", path, params={"lines": lines})).lines

    # -- consoles ------------------------------------------------------------------------------------
    async def consoles(
        self, q: str = "", state: str = "", limit: int = 500, offset: int = 0, sort: str = "name"
    ) -> ConsolePage:
        params: dict[str, Any] = {"limit": max(1, min(limit, 1000)), "offset": offset, "sort": sort}
        if q:
            params["q"] = q
        if state:
            params["state"] = state
        page = console_answer(await self._request("GET", "/api/consoles", params=params), wire.ConsolePage)
        if page.consoles:
            first = page.consoles[0]
            seen, deadline = parse_time(first.last_seen), parse_time(first.inactive_at)
            if deadline is not None and seen is not None and deadline > seen:
                self.info.inactive_after = deadline - seen
        return ConsolePage([ConsoleInfo.of(s) for s in page.consoles], page.total)

    async def console(self, console_id: str) -> ConsoleInfo:
        body = await self._request("GET", f"/api/consoles/{console_id}")
        return ConsoleInfo.of(console_answer(body, wire.ConsoleSnapshot))

    async def console_heartbeats(self, console_id: str, limit: int = 120) -> list[HeartbeatInfo]:
        body = await self._request("GET", f"/api/consoles/{console_id}/heartbeats", params={"limit": limit})
        return [HeartbeatInfo.of(r) for r in reversed(console_answer(body, wire.ConsoleHeartbeats).heartbeats)]

    async def console_transitions(self, console_id: str, limit: int = 50) -> list[TransitionInfo]:
        body = await self._request("GET", f"/api/consoles/{console_id}/transitions", params={"limit": limit})
        return [TransitionInfo.of(r) for r in reversed(console_answer(body, wire.ConsoleTransitions).transitions)]

    async def _status(self) -> SupervisorStatus:
        """``/api/v1/status``, read once for the header's figures asked for together (route export, console store,
        Redis, console counts): a body younger than STATUS_REUSE_S is reused."""
        if self._status_body is None or time.monotonic() - self._status_at >= STATUS_REUSE_S:
            self._status_body = await self._decode(_STATUS, "GET", "/api/v1/status")
            self._status_at = time.monotonic()
        return self._status_body

    async def route_export(self) -> RouteExportStatus:
        return (await self._status()).route_export

    async def console_stats(self) -> dict[str, int]:
        counts = dict.fromkeys(CONSOLE_STATES, 0)
        counts.update((await self._status()).consoles.by_state)
        return counts

    # -- fleet ---------------------------------------------------------------------------------------
    async def fleet_nodes(self) -> list[NodeStatus]:
        try:
            return (await self._decode(_NODE_LIST, "GET", "/api/v1/fleet/nodes")).nodes
        except ClientError as exc:
            if exc.code == "http_404":  # fleet_off: this supervisor is in no fleet
                return []
            raise

    async def redis_status(self) -> str:
        return (await self._status()).fleet.redis

    # -- console store -------------------------------------------------------------------------------
    async def console_store_problem(self) -> str:
        store = (await self._status()).console_store
        if store is None or store.available:
            return ""
        return store.problem or "the console store cannot be reached"

    def client_for(self, url: str) -> SupervisorClient:
        return RemoteClient(url, self.token, read_only=self._forced_read_only, keymap=self.info.keymap)

    # -- events --------------------------------------------------------------------------------------
    def _ws_url(self) -> str:
        parts = urlsplit(self.base)
        scheme = "wss" if parts.scheme == "https" else "ws"
        return urlunsplit((scheme, parts.netloc, parts.path + "/ws/events", f"topics={EVENT_TOPICS}", ""))

    async def events(self) -> AsyncIterator[list[Event]]:
        from websockets.asyncio.client import connect

        attempt = 0
        while not self._closed:
            try:
                async with connect(
                    self._ws_url(),
                    additional_headers={"Authorization": f"Bearer {self.token}"},
                    open_timeout=5,
                    ping_interval=5,
                    ping_timeout=5,
                    max_size=2**22,
                ) as ws:
                    self._ws = ws
                    # Always said, even the first time: the app then fetches what the stream missed.
                    message = f"reconnected to {self.base}" if (attempt or not self._connected) else ""
                    self._connected = True
                    yield [ConnectionChange(True, message)]
                    attempt = 0
                    async for raw in ws:
                        try:
                            event = EVENT_DECODER.decode(raw)
                        except msgspec.DecodeError:  # ValidationError included: a topic or shape this TUI lacks
                            self.undecoded_events += 1
                            continue
                        yield [event]
                reason = "the supervisor closed the event stream"
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any transport failure means: show the banner and try again
                reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            finally:
                self._ws = None
            if self._closed:
                return
            if self._connected or attempt == 0:
                self._connected = False
                yield [ConnectionChange(False, reason)]
            await asyncio.sleep(backoff_delay(attempt, RECONNECT_FIRST, RECONNECT_MAX))
            attempt += 1
