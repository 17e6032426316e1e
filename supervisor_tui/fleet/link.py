"""The node's connection to Redis: one client for commands and publishing, one pub/sub on the protocol's channels.

redis-py's pub/sub does not reliably reconnect by itself (redis/redis-py#2089, #3203), so the link owns the loop:
connect, SUBSCRIBE, call ``on_connect`` (the node re-announces its plugins and its presence), read messages
until the connection fails, then drop both and try again after a capped, jittered backoff. An outage is one log
line when it starts and one when it ends, not one per attempt; ``RedisLinkChanged`` says so on the bus.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from supervisor_tui.config import masked_url
from supervisor_tui.core.backoff import backoff_delay
from supervisor_tui.core.events import EventBus, RedisLinkChanged
from supervisor_tui.core.logs import LogHub
from supervisor_tui.fleet.messages import CHANNELS

RECONNECT_BASE = 0.2  # seconds before the first retry; doubles up to RECONNECT_CAP
RECONNECT_CAP = 5.0
CONNECT_TIMEOUT = 5.0
READ_POLL = 1.0  # seconds a read waits for a message before the loop checks the connection again
PING_EVERY = 10.0  # a silent subscription is pinged this often, so a half-open connection is noticed

OnMessage = Callable[[str, bytes], Awaitable[None]]


class RedisLink:
    """Keeps a connection to ``url`` and the subscription to the protocol's channels; ``up`` says whether it holds."""

    def __init__(
        self, url: str, logs: LogHub, bus: EventBus, on_message: OnMessage, on_connect: Callable[[], Awaitable[None]]
    ) -> None:
        self.url = url
        self.shown_url = masked_url(url)
        self.logs, self.bus = logs, bus
        self.on_message, self.on_connect = on_message, on_connect
        self.up = False
        self.since = time.time()  # when ``up`` last changed
        self.detail = "connecting"
        self.outages = 0
        self.failed_attempts = 0  # connection attempts that failed in the current outage
        self.client: aioredis.Redis | None = None
        self._task: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()
        password = urlsplit(url).password
        if password:
            logs.secrets.append(password)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="redis-link")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def wait_connected(self, timeout: float) -> bool:  # noqa: ASYNC109
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._connected.wait(), timeout)
        return self.up

    async def publish(self, channel: str, data: bytes) -> bool:
        """Publish when connected; False when Redis is down (the message is dropped: the link re-announces)."""
        client = self.client
        if client is None or not self.up:
            return False
        try:
            await client.publish(channel, data)
        except (RedisError, OSError):
            return False
        return True

    async def _run(self) -> None:
        attempt = 0
        while True:
            client = aioredis.Redis.from_url(
                self.url,
                socket_connect_timeout=CONNECT_TIMEOUT,
                socket_timeout=None,
                retry=Retry(NoBackoff(), 0),  # the loop below is the one retry policy
            )
            pubsub = client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(*CHANNELS)
                await client.ping()
                self.client = client
                self._went_up(attempt)
                attempt = 0
                await self.on_connect()
                await self._read(pubsub)
            except (RedisError, OSError) as exc:
                self._went_down(exc)
            finally:
                self.client = None
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
                with contextlib.suppress(Exception):
                    await client.aclose()
            await asyncio.sleep(backoff_delay(attempt, RECONNECT_BASE, RECONNECT_CAP) * random.uniform(0.5, 1.0))
            attempt += 1

    async def _read(self, pubsub: aioredis.client.PubSub) -> None:
        last_ping = time.monotonic()
        while True:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=READ_POLL)
            if message is not None and message.get("type") == "message":
                channel = message["channel"]
                await self.on_message(channel.decode() if isinstance(channel, bytes) else str(channel), message["data"])
                continue
            if time.monotonic() - last_ping >= PING_EVERY:
                await pubsub.ping()
                last_ping = time.monotonic()

    def _went_up(self, attempts: int) -> None:
        was_down = not self.up and self.outages > 0
        self.up, self.detail = True, "connected"
        self.failed_attempts = 0
        self._connected.set()
        if was_down:
            self.logs.info(
                f"Redis at {self.shown_url} reachable again after {time.time() - self.since:.1f}s "
                f"({attempts} attempts): subscribed to {', '.join(CHANNELS)}",
                event="redis_up",
            )
        else:
            self.logs.info(f"Redis at {self.shown_url}: subscribed to {', '.join(CHANNELS)}", event="redis_up")
        self.since = time.time()
        self.bus.publish(RedisLinkChanged(up=True, detail=self.detail))

    def _went_down(self, exc: BaseException) -> None:
        detail = str(exc) or type(exc).__name__
        self.failed_attempts += 1
        if not self.up and self.outages > 0:
            return  # still the same outage: said once
        self.up, self.detail = False, detail
        self.outages += 1
        self.since = time.time()
        self.logs.warning(
            f"Redis at {self.shown_url} unreachable ({detail}): retrying with backoff up to {RECONNECT_CAP:g}s; "
            "routes keep working, announcements wait",
            event="redis_down",
        )
        self.bus.publish(RedisLinkChanged(up=False, detail=detail))
