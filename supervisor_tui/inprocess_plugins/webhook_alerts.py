"""``webhook-alerts``: POST a JSON message to configured URLs when something needs an operator, and when it recovers.

Alerts: a console goes ``inactive`` or ``error``; a plugin goes FATAL or unhealthy. Recoveries: that console is
active/busy/idle again; that plugin is RUNNING again (after FATAL) or healthy again. Every message carries a
Slack-compatible ``text`` field, so chat webhooks (Slack, Mattermost, Rocket.Chat, Discord's /slack endpoint)
take it as is, plus structured fields for other receivers.

Delivery never blocks anything else: hooks only put messages on a bounded queue (the oldest is dropped when it
is full, and counted); one sender task POSTs them, retrying connection errors, 429 and 5xx answers with an
exponential backoff.

    [inprocess.webhook-alerts]
    module = "supervisor_tui.inprocess_plugins.webhook_alerts:WebhookAlerts"
    config = { urls = ["https://hooks.slack.com/services/..."], retries = 5 }
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Mapping
from typing import Any

import httpx

from supervisor_tui import __version__
from supervisor_tui.config import parse_duration
from supervisor_tui.core.backoff import backoff_delay
from supervisor_tui.plugins.inprocess import PluginInterface

CONSOLE_ALERT_STATES = ("inactive", "error")
DEFAULTS: dict[str, Any] = {
    "urls": [],
    "timeout": 5.0,  # seconds per POST
    "retries": 5,  # attempts after the first one
    "backoff": 1.0,  # seconds before the first retry, doubling each time
    "backoff_max": 60.0,
    "queue_size": 1000,
    "headers": {},  # extra request headers (e.g. an Authorization for a private receiver)
}


class WebhookAlerts(PluginInterface):
    """Alerts (and recoveries) for consoles and plugins, POSTed as JSON to every configured URL."""

    name = "webhook-alerts"
    version = "1.0.0"
    description = "POSTs alerts and recoveries of consoles and plugins to webhook URLs (Slack-compatible)."
    # Supervisors sharing a console store each see every console change; only the one that made it alerts.
    once_per_fleet = True

    def __init__(self, config: Mapping[str, Any] | None = None) -> None:
        super().__init__(config)
        self.settings: dict[str, Any] = dict(DEFAULTS)
        self.queue: deque[dict[str, Any]] = deque()
        self.counters = {"sent": 0, "failed": 0, "retries": 0, "dropped": 0}
        self.last_error = ""
        self.alerting: set[str] = set()  # "plugin:<key>:fatal", "console:<id>" ... currently in alert
        self._wake = asyncio.Event()
        self._sender: asyncio.Task[None] | None = None
        self._http: httpx.AsyncClient | None = None

    def validate_configuration(self, config: Mapping[str, Any]) -> bool:
        urls = config.get("urls", [])
        if not isinstance(urls, list) or not urls or not all(isinstance(u, str) for u in urls):
            raise ValueError('config.urls must be a non-empty list of URLs, e.g. ["https://hooks.example/..."]')
        for url in urls:
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"config.urls: {url!r} is not an http(s) URL")
        for name in ("timeout", "backoff", "backoff_max"):
            if name in config:
                parse_duration(config[name])
        for name in ("retries", "queue_size"):
            value = config.get(name, DEFAULTS[name])
            if isinstance(value, bool) or not isinstance(value, int) or value < (1 if name == "queue_size" else 0):
                raise ValueError(f"config.{name} must be a non-negative integer, got {value!r}")
        if not isinstance(config.get("headers", {}), Mapping):
            raise ValueError("config.headers must be a table of header names to values")
        return True

    async def initialize(self, supervisor: Any, config: Mapping[str, Any]) -> None:
        self.supervisor = supervisor
        self.settings = {**DEFAULTS, **dict(config)}
        for name in ("timeout", "backoff", "backoff_max"):
            self.settings[name] = parse_duration(self.settings[name])
        self._http = httpx.AsyncClient(
            timeout=float(self.settings["timeout"]),
            headers={"User-Agent": f"supervisor-tui-webhook/{__version__}", **dict(self.settings["headers"])},
            trust_env=False,
        )
        self._sender = asyncio.create_task(self._send_loop(), name="webhook-alerts")

    async def shutdown(self) -> None:
        if self._sender is not None:
            self._sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sender
            self._sender = None
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    def get_status(self) -> dict[str, Any]:
        return {
            **self.counters,
            "queued": len(self.queue),
            "alerting": sorted(self.alerting),
            "last_error": self.last_error,
            "urls": len(self.settings.get("urls", [])),
        }

    # -- hooks -------------------------------------------------------------------------------------------
    def on_console_state_changed(self, console_id: str, from_state: str | None, to_state: str, reason: str) -> None:
        ident = f"console:{console_id}"
        if to_state in CONSOLE_ALERT_STATES:
            self.alerting.add(ident)
            self._alert(
                "alert",
                f"console.{to_state}",
                "console",
                console_id,
                to_state,
                reason,
                f":red_circle: console *{console_id}* is {to_state} ({reason})",
            )
        elif ident in self.alerting or from_state in CONSOLE_ALERT_STATES:
            # The console leaves an alert state through this node: recovered, whichever node sent the alert (a
            # fleet's nodes each record and alert their own changes) and whether or not this one has run since.
            self.alerting.discard(ident)
            self._alert(
                "recovered",
                "console.recovered",
                "console",
                console_id,
                to_state,
                reason,
                f":large_green_circle: console *{console_id}* recovered: {to_state}",
            )

    def on_plugin_fatal(self, key: str, reason: str) -> None:
        self.alerting.add(f"plugin:{key}:fatal")
        self._alert(
            "alert", "plugin.fatal", "plugin", key, "FATAL", reason, f":red_circle: plugin *{key}* is FATAL: {reason}"
        )

    def on_plugin_started(self, key: str, reason: str) -> None:
        if f"plugin:{key}:fatal" in self.alerting:
            self.alerting.discard(f"plugin:{key}:fatal")
            self._alert(
                "recovered",
                "plugin.recovered",
                "plugin",
                key,
                "RUNNING",
                reason,
                f":large_green_circle: plugin *{key}* is RUNNING again",
            )

    def on_plugin_health_changed(self, key: str, healthy: bool, detail: str) -> None:
        ident = f"plugin:{key}:unhealthy"
        if not healthy:
            self.alerting.add(ident)
            self._alert(
                "alert",
                "plugin.unhealthy",
                "plugin",
                key,
                "unhealthy",
                detail,
                f":large_orange_circle: plugin *{key}* is unhealthy: {detail}",
            )
        elif ident in self.alerting:
            self.alerting.discard(ident)
            self._alert(
                "recovered",
                "plugin.healthy",
                "plugin",
                key,
                "healthy",
                detail,
                f":large_green_circle: plugin *{key}* is healthy again",
            )

    # -- delivery ----------------------------------------------------------------------------------------
    def _alert(self, severity: str, event: str, kind: str, ident: str, state: str, reason: str, text: str) -> None:
        message = {
            "text": text,  # what chat webhooks show
            "severity": severity,  # "alert" | "recovered"
            "event": event,
            "source": kind,  # "console" | "plugin"
            "id": ident,
            "state": state,
            "reason": reason,
            "ts": time.time(),
        }
        if len(self.queue) >= int(self.settings["queue_size"]):
            self.queue.popleft()
            self.counters["dropped"] += 1
        self.queue.append(message)
        self._wake.set()

    async def _send_loop(self) -> None:
        while True:
            if not self.queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            message = self.queue[0]
            for url in self.settings["urls"]:
                await self._deliver(url, message)
            if self.queue and self.queue[0] is message:
                self.queue.popleft()

    async def _deliver(self, url: str, message: dict[str, Any]) -> None:
        """POST one message to one URL, retrying with backoff; gives up after ``retries`` retries."""
        assert self._http is not None
        attempts = int(self.settings["retries"]) + 1
        for attempt in range(attempts):
            try:
                response = await self._http.post(url, json=message)
                if response.status_code < 300:
                    self.counters["sent"] += 1
                    return
                problem = f"{url}: HTTP {response.status_code}"
                retry = response.status_code == 429 or response.status_code >= 500
            except httpx.HTTPError as exc:
                problem = f"{url}: {type(exc).__name__}: {exc}" if str(exc) else f"{url}: {type(exc).__name__}"
                retry = True
            self.last_error = problem
            if not retry or attempt == attempts - 1:
                break
            self.counters["retries"] += 1
            delay = backoff_delay(attempt, float(self.settings["backoff"]), float(self.settings["backoff_max"]))
            await asyncio.sleep(delay)  # backoff between attempts (this task only waits for itself)
        self.counters["failed"] += 1
