"""A deterministic supervisor for snapshots, screenshots and the load benchmark: fixed clock, fixed data.

Actions change the demo's state and publish the same events a real supervisor would, so every binding can be
exercised without processes; ``heartbeats()`` feeds console traffic for ``bench/tui_load``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

import msgspec

from supervisor_tui.core.events import ConsoleHeartbeats, Event, LogLine, MetricsSample, PluginStateChanged
from supervisor_tui.plugins.model import Endpoint, LogEntry, MetricPoint, PluginSnapshot, PluginState, ReplicaSnapshot
from supervisor_tui.tui.client import (
    CONSOLE_STATES,
    ClientError,
    ClientInfo,
    ConsoleInfo,
    ConsolePage,
    HeartbeatInfo,
    SupervisorClient,
    TransitionInfo,
)

# 2026-01-01 00:00:00 UTC: the demo's "now".
DEMO_NOW = 1_767_225_600.0
DEMO_API = "http://127.0.0.1:4000"


def _endpoints(key: str, *paths: tuple[str, str, str]) -> tuple[Endpoint, ...]:
    return tuple(Endpoint(method, path, desc, f"{DEMO_API}/api/plugins/{key}{path}") for method, path, desc in paths)


# The request rates the demo's plugins serve (a real supervisor's are measured from its request counts).
DEMO_RATES = {"echo": 12.5, "thumbnailer": 3.2, "weather": 0.8}


def _plugin(
    key: str, *, state: str, cpu_percent: float | None = None, rss: int | None = None, **fields: Any
) -> PluginSnapshot:
    """A demo plugin with its last metrics sample (CPU %, RSS) when it has one."""
    metrics = None
    if cpu_percent is not None:
        metrics = MetricsSample(key, cpu_percent, rss or 0, threads=1, fds=0, processes=1, ts=DEMO_NOW)
    return PluginSnapshot(key=key, state=PluginState(state), last_metrics=metrics, **fields)


def _demo_plugins(now: float) -> list[PluginSnapshot]:
    return [
        _plugin(
            "echo",
            name="Echo",
            version="1.2.0",
            description="Answers what it is sent; the smallest useful plugin.",
            state="RUNNING",
            detail="ready",
            pid=41021,
            host="127.0.0.1",
            port=4001,
            upstream="http://127.0.0.1:4001",
            started_at=now - 3 * 3600 - 12 * 60,
            restarts=0,
            healthy=True,
            health_detail="GET /health -> 200 in 3 ms",
            endpoints=_endpoints("echo", ("GET", "/echo", "echo the query"), ("POST", "/echo", "echo the body")),
            autostart=True,
            desired="running",
            cpu_percent=0.4,
            rss=38 * 1024**2,
            manifest_path="plugins/echo/manifest.json",
            timeout=30.0,
            max_body=10 * 1024**2,
        ),
        _plugin(
            "thumbnailer",
            group="media",
            name="Thumbnailer",
            version="0.9.1",
            description="Renders video thumbnails for the consoles.",
            state="RUNNING",
            detail="ready",
            pid=41057,
            host="127.0.0.1",
            port=4002,
            upstream="http://127.0.0.1:4002",
            started_at=now - 47 * 60,
            restarts=2,
            healthy=True,
            health_detail="GET /health -> 200 in 11 ms",
            endpoints=_endpoints("thumbnailer", ("POST", "/thumbs", "render a thumbnail")),
            autostart=True,
            desired="running",
            cpu_percent=23.7,
            rss=212 * 1024**2,
            manifest_path="plugins/thumbnailer/manifest.json",
        ),
        _plugin(
            "transcoder",
            group="media",
            depends_on=("thumbnailer",),
            name="Transcoder",
            version="2.0.0",
            description="Transcodes finished videos.",
            state="STARTING",
            detail="waiting for readiness (4s of 10s)",
            pid=41102,
            host="127.0.0.1",
            port=4003,
            started_at=now - 4,
            restarts=0,
            endpoints=_endpoints("transcoder", ("POST", "/jobs", "queue a job"), ("GET", "/jobs/{id}", "job state")),
            autostart=True,
            desired="running",
            cpu_percent=61.0,
            rss=96 * 1024**2,
            manifest_path="plugins/transcoder/manifest.json",
        ),
        _plugin(
            "billing",
            group="shop",
            name="Billing",
            version="1.0.3",
            description="Usage records for invoices.",
            state="FATAL",
            detail="exited too quickly 3 times",
            restarts=3,
            healthy=False,
            health_detail="no process",
            last_error="exit status 1: KeyError: 'BILLING_DSN'",
            endpoints=_endpoints("billing", ("GET", "/usage", "usage per console")),
            autostart=True,
            desired="running",
            manifest_path="plugins/billing/manifest.json",
        ),
        _plugin(
            "search",
            group="shop",
            depends_on=("billing",),
            name="Search",
            version="0.4.0",
            description="Full-text search over scripts.",
            state="STOPPED",
            detail="stopped by operator",
            endpoints=_endpoints("search", ("GET", "/search", "query scripts")),
            autostart=False,
            desired="stopped",
            manifest_path="plugins/search/manifest.json",
        ),
        _plugin(
            "weather",
            name="Weather",
            version="3.1.4",
            description="External service registered over the API.",
            kind="external",
            state="RUNNING",
            detail="heartbeat 12s ago",
            host="10.0.0.7",
            port=8080,
            upstream="http://10.0.0.7:8080",
            started_at=now - 26 * 3600,
            healthy=True,
            health_detail="heartbeat every 30s",
            endpoints=_endpoints("weather", ("GET", "/forecast", "forecast by city")),
            desired="running",
        ),
    ]


_JOBS = ("Video Historia {n} ({k}/5)", "Guion {n}: render", "Subtitulos {n}", "Miniaturas lote {n}")
_ERRORS = ("ffmpeg exited with status 137", "disk full on /var/render", "upload timed out after 120s")


def _demo_console(i: int, now: float, inactive_after: float) -> ConsoleInfo:
    """Console number ``i``: a fixed mix of states, hosts, jobs and ages."""
    pattern = i % 20
    if pattern in (3, 11):
        state = "error"
    elif pattern == 7:
        state = "inactive"
    elif pattern % 3 == 0:
        state = "busy"
    elif pattern % 3 == 1:
        state = "active"
    else:
        state = "idle"
    age: float = (i * 37) % 590 + 2
    if state == "inactive":
        age = inactive_after + 60 + (i % 300)
    job = _JOBS[i % len(_JOBS)].format(n=i % 97 + 1, k=i % 5 + 1) if state in ("busy", "active") else ""
    error = _ERRORS[i % len(_ERRORS)] if state == "error" else ""
    cid = f"{(i * 2654435761) % 16**8:08x}-{i % 9999:04d}-4{i % 999:03d}-a{(i * 7) % 999:03d}-{i * 104729:012x}"
    return ConsoleInfo(
        id=cid[:36],
        name=f"console-{i + 1:03d}",
        state=state,
        host=f"render-{(i % 40) + 1:02d}.studio.lan",
        current_job=job,
        last_seen=now - age,
        last_error=error,
        registered_at=now - 30 * 86400 + i * 60,
        system={
            "hostname": f"render-{(i % 40) + 1:02d}",
            "platform": "linux" if i % 4 else "win32",
            "arch": "x64",
            "cpus": 8 + (i % 3) * 8,
            "totalMemory": 32,
            "freeMemory": 9 + i % 20,
            "uptime": 86400 + i * 311,
            "agentVersion": "1.4.2",
        },
        last_activity=now - age,
    )


class DemoClient(SupervisorClient):
    """A supervisor with fixed plugins, consoles and logs; its clock stands still unless told otherwise."""

    def __init__(
        self,
        consoles: int = 24,
        *,
        now: float = DEMO_NOW,
        clock: Callable[[], float] | None = None,
        read_only: bool = False,
        keymap: dict[str, str] | None = None,
        action_delay: float = 0.0,
        mode: str = "embedded",
        inactive_after: float = 600.0,
    ) -> None:
        self.info = ClientInfo(
            mode=mode,
            api_url=DEMO_API,
            read_only=read_only,
            version="0.1.0",
            inactive_after=inactive_after,
            keymap=dict(keymap or {}),
        )
        self._now = now
        self._clock = clock
        self.action_delay = action_delay
        self._plugins = {p.key: p for p in _demo_plugins(now)}
        consoles_list = [_demo_console(i, now, inactive_after) for i in range(consoles)]
        self._consoles = {c.id: c for c in consoles_list}
        self._sorted_ids = [c.id for c in sorted(consoles_list, key=lambda c: c.name)]
        self._logs = self._demo_logs(now)
        self._queue: asyncio.Queue[list[Event] | None] = asyncio.Queue()
        self._closed = False
        self.actions: list[tuple[str, str]] = []  # (verb, key) in the order they were asked for

    def now(self) -> float:
        return self._clock() if self._clock is not None else self._now

    # -- plugins -------------------------------------------------------------------------------------
    async def plugins(self) -> list[PluginSnapshot]:
        return list(self._plugins.values())

    async def plugin(self, key: str) -> PluginSnapshot:
        try:
            return self._plugins[key]
        except KeyError:
            raise ClientError(f"no plugin named {key!r}", "plugin_not_found") from None

    def _set_state(self, key: str, to_state: str, reason: str, **changes: Any) -> PluginSnapshot:
        before = self._plugins[key]
        after = msgspec.structs.replace(before, state=PluginState(to_state), **changes)
        self._plugins[key] = after
        self.publish(
            [PluginStateChanged(key, before.state, to_state, reason, pid=after.pid, port=after.port, ts=self.now())]
        )
        self._log(key, "supervisor", "info", f"{key}: {before.state} -> {to_state} ({reason})")
        return after

    async def start(self, key: str) -> PluginSnapshot:
        plugin = await self.plugin(key)
        self.actions.append(("start", key))
        if plugin.state == "INVALID":
            raise ClientError(f"{key}: manifest is invalid", "invalid")
        if plugin.state in ("RUNNING", "STARTING"):
            return plugin
        self._set_state(key, "STARTING", "start requested", detail="waiting for readiness", pid=50000 + len(key))
        if self.action_delay:
            await asyncio.sleep(self.action_delay)
        if key == "billing":
            self._set_state(key, "FATAL", "exited too quickly", pid=None, last_error="exit status 1")
            raise ClientError(f"{key}: exited too quickly (exit status 1)", "start_failed")
        return self._set_state(
            key, "RUNNING", "ready", detail="ready", started_at=self.now(), port=plugin.port or 4010, healthy=True
        )

    async def stop(self, key: str) -> PluginSnapshot:
        plugin = await self.plugin(key)
        self.actions.append(("stop", key))
        if plugin.state in ("STOPPED", "EXITED", "FATAL", "INVALID"):
            return plugin
        self._set_state(key, "STOPPING", "stop requested")
        if self.action_delay:
            await asyncio.sleep(self.action_delay)
        return self._set_state(key, "STOPPED", "stopped by operator", pid=None, started_at=None, last_metrics=None)

    async def restart(self, key: str) -> PluginSnapshot:
        await self.stop(key)
        self.actions.pop()
        result = await self.start(key)
        self.actions[-1] = ("restart", key)
        return result

    async def scale(self, key: str, replicas: int) -> PluginSnapshot:
        plugin = await self.plugin(key)
        self.actions.append(("scale", key))
        running = plugin.state == "RUNNING"
        members = tuple(
            ReplicaSnapshot(
                i, plugin.state, pid=(plugin.pid or 50000) + i if running else None, port=(plugin.port or 4010) + i
            )
            for i in range(replicas)
        )
        return self._set_state(key, plugin.state, f"scaled to {replicas}", replicas=members if replicas > 1 else ())

    async def request_rates(self) -> dict[str, float]:
        return dict(DEMO_RATES)

    async def metrics(self, key: str) -> list[MetricPoint]:
        plugin = await self.plugin(key)
        if plugin.state != "RUNNING" or plugin.cpu_percent is None:
            return []
        base_cpu = plugin.cpu_percent
        rate = DEMO_RATES.get(key)
        base_rss = plugin.rss or 0
        now = self.now()
        out = []
        for i in range(150):
            wave = math.sin(i / 9.0) + 0.5 * math.sin(i / 3.7)
            out.append(
                MetricPoint(
                    ts=now - (150 - i) * 2,
                    cpu_percent=round(max(0.0, base_cpu * (1 + 0.4 * wave)), 2),
                    rss=int(base_rss * (1 + 0.05 * math.sin(i / 20.0))),
                    requests_per_s=(round(max(0.0, rate * (1 + 0.6 * wave)), 2) if rate is not None else None),
                )
            )
        return out

    # -- logs ----------------------------------------------------------------------------------------
    def _demo_logs(self, now: float) -> list[LogEntry]:
        lines = [
            ("supervisor", "supervisor", "info", "supervisor 0.1.0 starting, API on http://127.0.0.1:4000"),
            ("supervisor", "supervisor", "info", "loaded 6 plugins from ./plugins"),
            ("echo", "stdout", "info", "listening on 127.0.0.1:4001"),
            ("thumbnailer", "stdout", "info", "worker pool ready (4 threads)"),
            ("billing", "stderr", "error", "KeyError: 'BILLING_DSN'"),
            ("supervisor", "supervisor", "error", "billing: exited too quickly 3 times, giving up (FATAL)"),
            ("echo", "stdout", "info", "GET /echo?msg=hello 200 0.4ms"),
            ("thumbnailer", "stdout", "info", "POST /thumbs 201 182ms console-004"),
            ("transcoder", "stdout", "info", "loading codecs..."),
            ("supervisor", "supervisor", "warning", "console-008 inactive (no heartbeat for 11m)"),
            ("echo", "stdout", "info", "GET /echo?msg=ping 200 0.3ms"),
            ("thumbnailer", "stderr", "warning", "slow render: 2.4s for frame 1200"),
            ("weather", "supervisor", "info", "weather: heartbeat from 10.0.0.7:8080"),
            ("echo", "stdout", "info", "POST /echo 200 0.6ms"),
            ("transcoder", "stdout", "info", "codecs ready, probing GPU"),
        ]
        n = len(lines)
        return [
            LogEntry(now - (n - i) * 7.0, source, stream, level, message)
            for i, (source, stream, level, message) in enumerate(lines)
        ]

    def _log(self, source: str, stream: str, level: str, message: str) -> None:
        entry = LogEntry(self.now(), source, stream, level, message)
        self._logs.append(entry)
        del self._logs[:-2000]
        self.publish([LogLine(source, stream, level, message, ts=entry.ts)])

    async def logs(self, source: str | None = None, lines: int = 200) -> list[LogEntry]:
        selected = [e for e in self._logs if source is None or e.source == source]
        return selected[-lines:]

    def write_log(self, source: str, message: str, level: str = "info", stream: str = "stdout") -> None:
        """Publish one log line (tests and the benchmark drive the logs pane with it)."""
        self._log(source, stream, level, message)

    # -- consoles ------------------------------------------------------------------------------------
    async def consoles(
        self, q: str = "", state: str = "", limit: int = 500, offset: int = 0, sort: str = "name"
    ) -> ConsolePage:
        needle = q.strip().lower()
        matched: list[ConsoleInfo] = []
        consoles = self._consoles
        for cid in self._sorted_ids:
            c = consoles[cid]
            if state and c.state != state:
                continue
            if needle and not (
                needle in c.name or needle in c.id or needle in c.host or needle in c.current_job.lower()
            ):
                continue
            matched.append(c)
        return ConsolePage(matched[offset : offset + limit], len(matched))

    async def console(self, console_id: str) -> ConsoleInfo:
        try:
            return self._consoles[console_id]
        except KeyError:
            raise ClientError(f"no console with id {console_id!r}", "console_not_found") from None

    async def console_heartbeats(self, console_id: str, limit: int = 120) -> list[HeartbeatInfo]:
        c = await self.console(console_id)
        seen = c.last_seen or self.now()
        out = []
        for i in range(limit):
            phase = (i // 12) % 4
            state = ("idle", "busy", "busy", "active")[phase]
            if c.state == "error" and i > limit - 6:
                state = "error"
            job = "" if state == "idle" else "job"
            out.append(HeartbeatInfo(ts=seen - (limit - 1 - i) * 30.0, state=state, job=job))
        return out

    async def console_transitions(self, console_id: str, limit: int = 50) -> list[TransitionInfo]:
        c = await self.console(console_id)
        seen = c.last_seen or self.now()
        steps = [
            ("", "idle", "register"),
            ("idle", "busy", "heartbeat"),
            ("busy", "active", "heartbeat"),
            ("active", "idle", "heartbeat"),
            ("idle", "busy", "heartbeat"),
        ]
        if c.state not in ("busy",):
            steps.append(("busy", c.state, "timeout" if c.state == "inactive" else "heartbeat"))
        n = len(steps)
        return [TransitionInfo(seen - (n - i) * 1800.0, a, b, r) for i, (a, b, r) in enumerate(steps)][-limit:]

    async def console_stats(self) -> dict[str, int]:
        counts = dict.fromkeys(CONSOLE_STATES, 0)
        for c in self._consoles.values():
            counts[c.state] = counts.get(c.state, 0) + 1
        return counts

    def heartbeats(self, indexes: Iterable[int], state: str | None = None) -> None:
        """Console ``indexes`` (in name order) just sent a heartbeat: refresh last_seen, publish one event."""
        now = self.now()
        ids = []
        for i in indexes:
            cid = self._sorted_ids[i % len(self._sorted_ids)]
            c = self._consoles[cid]
            self._consoles[cid] = dataclasses.replace(c, last_seen=now, state=state or c.state)
            ids.append(cid)
        self.publish([ConsoleHeartbeats(len(ids), tuple(ids), ts=now)])

    # -- events --------------------------------------------------------------------------------------
    def publish(self, batch: list[Event]) -> None:
        if not self._closed:
            self._queue.put_nowait(batch)

    async def events(self) -> AsyncIterator[list[Event]]:
        while True:
            batch = await self._queue.get()
            if batch is None:
                return
            # Coalesce whatever else is already queued, like the bus's get_batch().
            while not self._queue.empty():
                more = self._queue.get_nowait()
                if more is None:
                    yield batch
                    return
                batch = batch + more
            yield batch

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._queue.put_nowait(None)
