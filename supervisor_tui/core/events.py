"""The event bus: typed events, bounded subscriber queues that never block the publisher.

A slow subscriber loses its oldest events; the next thing it receives is an ``EventsDropped`` saying how many.
Topics are dotted names ("plugin.state", "console.heartbeats", "log"); a subscription filters by prefix.
``TOPIC_ALIASES`` keeps the names topics had before the dotted scheme: a subscription that asks for one receives
those events under that old name, unless one of its filters matches the new name (then they come under the new one).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar


@dataclass(frozen=True, slots=True)
class Event:
    """Base of every event; ``topic`` names the kind, ``ts`` is a Unix timestamp."""

    topic: ClassVar[str] = "event"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["topic"] = self.topic
        return d


def _now() -> float:
    return time.time()


@dataclass(frozen=True, slots=True)
class PluginStateChanged(Event):
    topic: ClassVar[str] = "plugin.state"
    key: str
    from_state: str
    to_state: str
    reason: str
    pid: int | None = None
    port: int | None = None
    ts: float = field(default_factory=_now)


@dataclass(frozen=True, slots=True)
class PluginHealthChanged(Event):
    topic: ClassVar[str] = "plugin.health"
    key: str
    healthy: bool
    detail: str
    ts: float = field(default_factory=_now)


@dataclass(frozen=True, slots=True)
class PluginRegistered(Event):
    """A plugin appeared: loaded from a folder, installed over the API, or registered itself (external)."""

    topic: ClassVar[str] = "plugin.registered"
    key: str
    kind: str  # "process" | "external" | "inprocess"
    ts: float = field(default_factory=_now)


@dataclass(frozen=True, slots=True)
class PluginUnregistered(Event):
    topic: ClassVar[str] = "plugin.unregistered"
    key: str
    reason: str
    ts: float = field(default_factory=_now)


@dataclass(frozen=True, slots=True)
class MetricsSample(Event):
    """One psutil sample of a plugin's whole process tree."""

    topic: ClassVar[str] = "plugin.metrics"
    key: str
    cpu_percent: float
    rss: int
    threads: int
    fds: int
    processes: int
    ts: float = field(default_factory=_now)


@dataclass(frozen=True, slots=True)
class LogLine(Event):
    topic: ClassVar[str] = "log"
    source: str
    stream: str  # "stdout" | "stderr" | "supervisor"
    level: str
    message: str
    ts: float = field(default_factory=_now)


@dataclass(frozen=True, slots=True)
class ConsoleRegistered(Event):
    topic: ClassVar[str] = "console.registered"
    console_id: str
    name: str
    state: str
    ts: float = field(default_factory=_now)
    remote: bool = False  # made through another supervisor sharing the console store


@dataclass(frozen=True, slots=True)
class ConsoleStateChanged(Event):
    """A console's state changed; ``at`` is when it happened (the deadline for an inactivity)."""

    topic: ClassVar[str] = "console.state"
    console_id: str
    from_state: str | None
    to_state: str
    reason: str  # "heartbeat" | "timeout" | "register"
    at: float
    ts: float = field(default_factory=_now)
    remote: bool = False  # made through another supervisor sharing the console store


@dataclass(frozen=True, slots=True)
class ConsoleHeartbeats(Event):
    """Heartbeats committed since the last such event (coalesced: one event per write batch)."""

    topic: ClassVar[str] = "console.heartbeats"
    count: int
    console_ids: tuple[str, ...]
    ts: float = field(default_factory=_now)
    remote: bool = False  # made through another supervisor sharing the console store


@dataclass(frozen=True, slots=True)
class ConsoleRemoved(Event):
    topic: ClassVar[str] = "console.removed"
    console_id: str
    ts: float = field(default_factory=_now)
    remote: bool = False  # made through another supervisor sharing the console store


@dataclass(frozen=True, slots=True)
class InProcessPluginLoaded(Event):
    """An in-process plugin loaded."""

    topic: ClassVar[str] = "plugin.loaded"
    name: str
    ts: float = field(default_factory=_now)


def failure_topic(phase: str) -> str:
    """The topic of a plugin failure in ``phase``: a reload (of any plugin), a hook, another call into a running
    in-process plugin (one that blocked the event loop), a shutdown, or else loading."""
    if phase == "reload":
        return "plugin.reload_failed"
    if phase.startswith("hook"):
        return "plugin.hook_failed"
    if phase.startswith("call"):
        return "plugin.call_failed"
    if phase == "shutdown":
        return "plugin.shutdown_failed"
    return "plugin.load_failed"


@dataclass(frozen=True, slots=True)
class PluginFailed(Event):
    """A plugin failed in ``phase``: an in-process plugin's loading (import, configuration, setup...), one of its
    hooks or other calls, its shutdown, or the reload of any plugin (phase "reload"); the topic says which
    (``failure_topic``)."""

    name: str
    phase: str
    error: str
    ts: float = field(default_factory=_now)

    @property
    def topic(self) -> str:  # type: ignore[override]
        return failure_topic(self.phase)


# Old topic name -> the dotted topics it stands for (docs/api.md, "Events"): kept for subscribers of before.
TOPIC_ALIASES: dict[str, tuple[str, ...]] = {
    "plugin-loaded": ("plugin.loaded",),
    "plugin-failed": (
        "plugin.load_failed",
        "plugin.hook_failed",
        "plugin.call_failed",
        "plugin.shutdown_failed",
        "plugin.reload_failed",
    ),
}


@dataclass(frozen=True, slots=True)
class OperatorAction(Event):
    """An operator acted on a plugin: what, on which key, from where (tui, api, ctl, reload) and by whom."""

    topic: ClassVar[str] = "operator.action"
    action: str  # start | stop | restart | install | remove | set_config
    key: str
    origin: str
    actor: str
    ok: bool
    detail: str = ""
    ts: float = field(default_factory=_now)


@dataclass(frozen=True, slots=True)
class PluginPeersChanged(Event):
    """Another fleet node started or stopped serving a key here, or went silent, or was heard from again."""

    topic: ClassVar[str] = "plugin.peers"
    key: str
    node: str
    up: bool
    ts: float = field(default_factory=_now)


@dataclass(frozen=True, slots=True)
class RegistrationRefused(Event):
    """A registration was not accepted (its upstream is outside the allowlist, its key is a local plugin's)."""

    topic: ClassVar[str] = "registration.refused"
    key: str
    source: str  # "redis" | "http"
    reason: str
    ts: float = field(default_factory=_now)


@dataclass(frozen=True, slots=True)
class RedisLinkChanged(Event):
    """The fleet's Redis connection went down or came back."""

    topic: ClassVar[str] = "fleet.redis"
    up: bool
    detail: str
    ts: float = field(default_factory=_now)


@dataclass(frozen=True, slots=True)
class EventsDropped(Event):
    """Sent to a subscriber that was too slow: this many events were dropped before this one."""

    topic: ClassVar[str] = "events.dropped"
    count: int
    ts: float = field(default_factory=_now)


class Subscription:
    """A bounded queue of events for one subscriber; iterate it with ``async for``."""

    def __init__(self, bus: EventBus, topics: tuple[str, ...] | None, maxsize: int) -> None:
        self._bus = bus
        self.topics = topics
        # Dotted topic -> the old name asked for it (TOPIC_ALIASES), where no filter matches the dotted name.
        self.aliased: dict[str, str] = {}
        if topics is not None:
            self.topics = tuple(t for t in topics if t not in TOPIC_ALIASES)
            for old in topics:
                for topic in TOPIC_ALIASES.get(old, ()):
                    if not self._matches(topic):
                        self.aliased.setdefault(topic, old)
        self.maxsize = maxsize
        self._queue: deque[Event] = deque()
        self._wakeup = asyncio.Event()
        self.dropped = 0  # total since subscribing
        self._pending_dropped = 0
        self.closed = False

    def _matches(self, topic: str) -> bool:
        return self.topics is None or any(topic == t or topic.startswith(t + ".") for t in self.topics)

    def wants(self, topic: str) -> bool:
        return self._matches(topic) or topic in self.aliased

    def topic_name(self, event: Event) -> str:
        """The name this subscriber receives ``event`` under: its topic, or the old name it asked for instead."""
        return self.aliased.get(event.topic, event.topic) if self.aliased else event.topic

    def _put(self, event: Event) -> None:
        if len(self._queue) >= self.maxsize:
            self._queue.popleft()
            self.dropped += 1
            self._pending_dropped += 1
        self._queue.append(event)
        self._wakeup.set()

    def get_nowait(self) -> list[Event]:
        """Everything queued now (an EventsDropped first when events were lost)."""
        out: list[Event] = []
        if self._pending_dropped:
            out.append(EventsDropped(count=self._pending_dropped))
            self._pending_dropped = 0
        out.extend(self._queue)
        self._queue.clear()
        self._wakeup.clear()
        return out

    async def get(self) -> Event:
        while True:
            if self._pending_dropped:
                n, self._pending_dropped = self._pending_dropped, 0
                return EventsDropped(count=n)
            if self._queue:
                return self._queue.popleft()
            if self.closed:
                raise StopAsyncIteration
            self._wakeup.clear()
            await self._wakeup.wait()

    async def get_batch(self, max_wait: float | None = None) -> list[Event]:
        """Wait for at least one event (or ``max_wait`` seconds), then return all that are queued."""
        if not self._queue and not self._pending_dropped and not self.closed:
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), max_wait)
            except TimeoutError:
                pass
        return self.get_nowait()

    def __aiter__(self) -> AsyncIterator[Event]:
        return self

    async def __anext__(self) -> Event:
        return await self.get()

    def close(self) -> None:
        self.closed = True
        self._wakeup.set()
        self._bus._subscriptions.discard(self)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class EventBus:
    """Publish typed events to every interested subscriber without ever blocking the publisher."""

    def __init__(self) -> None:
        self._subscriptions: set[Subscription] = set()

    def subscribe(self, topics: Iterable[str] | None = None, maxsize: int = 10_000) -> Subscription:
        sub = Subscription(self, tuple(topics) if topics is not None else None, maxsize)
        self._subscriptions.add(sub)
        return sub

    def publish(self, event: Event) -> None:
        """Deliver to subscribers; must be called from the event loop's thread."""
        topic = event.topic
        for sub in tuple(self._subscriptions):
            if sub.wants(topic):
                sub._put(event)

    @property
    def subscriber_count(self) -> int:
        return len(self._subscriptions)
