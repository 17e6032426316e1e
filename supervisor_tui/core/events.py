"""The event bus: typed events, bounded subscriber queues that never block the publisher.

A slow subscriber loses its oldest events; the next thing it receives is an ``EventsDropped`` saying how many.
Topics are dotted names ("plugin.state", "console.heartbeats", "log"); a subscription filters by prefix.
``TOPIC_ALIASES`` keeps the names topics had before the dotted scheme: a subscription that asks for one receives
those events under that old name, unless one of its filters matches the new name (then they come under the new one).

Every event is a frozen msgspec Struct tagged by its ``topic``: the Struct is the wire shape. ``/ws/events`` sends
``encode_event(event)`` (``{"topic": ..., <fields>}``), and ``EVENT_DECODER`` (a decoder of the ``AnyEvent`` union)
turns any such message back into its Struct; a message of an unknown topic or shape is a ``msgspec.DecodeError``.
``Event.to_dict()`` is the one conversion into plain dicts (what an in-process plugin's ``on_operator_action`` gets).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator, Iterable
from typing import Any, ClassVar, TypeVar, get_args

import msgspec


class Event(msgspec.Struct, frozen=True, tag_field="topic"):
    """Base of every event; ``topic`` names the kind (the Struct's tag), ``ts`` is a Unix timestamp."""

    topic: ClassVar[str] = "event"  # each event type's own: its tag (with_topic)

    def to_dict(self) -> dict[str, Any]:
        """The event as a plain dict of builtins, ``topic`` included."""
        out: dict[str, Any] = msgspec.to_builtins(self, enc_hook=str)
        return out


EventT = TypeVar("EventT", bound=Event)


def _now() -> float:
    return time.time()


def _ts() -> Any:
    return msgspec.field(default_factory=_now)


class PluginStateChanged(Event, frozen=True, tag="plugin.state"):
    key: str
    from_state: str
    to_state: str
    reason: str
    pid: int | None = None
    port: int | None = None
    ts: float = _ts()


class PluginHealthChanged(Event, frozen=True, tag="plugin.health"):
    key: str
    healthy: bool
    detail: str
    ts: float = _ts()


class PluginRegistered(Event, frozen=True, tag="plugin.registered"):
    """A plugin appeared: loaded from a folder, installed over the API, or registered itself (external)."""

    key: str
    kind: str  # "process" | "external" | "inprocess"
    ts: float = _ts()


class PluginUnregistered(Event, frozen=True, tag="plugin.unregistered"):
    key: str
    reason: str
    ts: float = _ts()


class MetricsSample(Event, frozen=True, tag="plugin.metrics"):
    """One psutil sample of a plugin's whole process tree."""

    key: str
    cpu_percent: float
    rss: int
    threads: int
    fds: int
    processes: int
    ts: float = _ts()


class LogLine(Event, frozen=True, tag="log"):
    source: str
    stream: str  # "stdout" | "stderr" | "supervisor"
    level: str
    message: str
    ts: float = _ts()


class ConsoleRegistered(Event, frozen=True, tag="console.registered"):
    console_id: str
    name: str
    state: str
    ts: float = _ts()
    remote: bool = False  # made through another supervisor sharing the console store


class ConsoleStateChanged(Event, frozen=True, tag="console.state"):
    """A console's state changed; ``at`` is when it happened (the deadline for an inactivity)."""

    console_id: str
    from_state: str | None
    to_state: str
    reason: str  # "heartbeat" | "timeout" | "register"
    at: float
    ts: float = _ts()
    remote: bool = False  # made through another supervisor sharing the console store


class ConsoleHeartbeats(Event, frozen=True, tag="console.heartbeats"):
    """Heartbeats committed since the last such event (coalesced: one event per write batch)."""

    count: int
    console_ids: tuple[str, ...]
    ts: float = _ts()
    remote: bool = False  # made through another supervisor sharing the console store


class ConsoleRemoved(Event, frozen=True, tag="console.removed"):
    console_id: str
    ts: float = _ts()
    remote: bool = False  # made through another supervisor sharing the console store


class InProcessPluginLoaded(Event, frozen=True, tag="plugin.loaded"):
    """An in-process plugin loaded."""

    name: str
    ts: float = _ts()


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


class PluginFailed(Event, frozen=True):
    """A plugin failed in ``phase``: an in-process plugin's loading (import, configuration, setup...), one of its
    hooks or other calls, its shutdown, or the reload of any plugin (phase "reload"). One subclass per topic (the
    topic says which: ``failure_topic``); make one with ``plugin_failed(name, phase, error)``."""

    name: str
    phase: str
    error: str
    ts: float = _ts()

    def __post_init__(self) -> None:
        if failure_topic(self.phase) != self.topic:
            raise ValueError(f"a failure in phase {self.phase!r} is a {failure_topic(self.phase)} event")


class PluginLoadFailed(PluginFailed, frozen=True, tag="plugin.load_failed"):
    """An in-process plugin did not load (phase import, configuration, setup...)."""


class PluginHookFailed(PluginFailed, frozen=True, tag="plugin.hook_failed"):
    """A hook of an in-process plugin raised, timed out or blocked the event loop (phase ``hook <name>``)."""


class PluginCallFailed(PluginFailed, frozen=True, tag="plugin.call_failed"):
    """Another call into a running in-process plugin blocked the event loop (phase ``call <name>``)."""


class PluginShutdownFailed(PluginFailed, frozen=True, tag="plugin.shutdown_failed"):
    """An in-process plugin's shutdown raised or timed out."""


class PluginReloadFailed(PluginFailed, frozen=True, tag="plugin.reload_failed"):
    """The reload of a plugin (process or in-process) failed; the running version is kept."""


_FAILURES: dict[str, type[PluginFailed]] = {
    "plugin.load_failed": PluginLoadFailed,
    "plugin.hook_failed": PluginHookFailed,
    "plugin.call_failed": PluginCallFailed,
    "plugin.shutdown_failed": PluginShutdownFailed,
    "plugin.reload_failed": PluginReloadFailed,
}


def plugin_failed(name: str, phase: str, error: str) -> PluginFailed:
    """The failure event of ``name`` in ``phase``, of the type its topic says."""
    return _FAILURES[failure_topic(phase)](name=name, phase=phase, error=error)


# Old topic name -> the dotted topics it stands for (docs/api.md, "Events"): kept for subscribers of before.
TOPIC_ALIASES: dict[str, tuple[str, ...]] = {
    "plugin-loaded": ("plugin.loaded",),
    "plugin-failed": tuple(_FAILURES),
}


class OperatorAction(Event, frozen=True, tag="operator.action"):
    """An operator acted on a plugin: what, on which key, from where (tui, api, ctl, reload) and by whom."""

    action: str  # start | stop | restart | install | remove | set_config
    key: str
    origin: str
    actor: str
    ok: bool
    detail: str = ""
    ts: float = _ts()


class PluginPeersChanged(Event, frozen=True, tag="plugin.peers"):
    """Another fleet node started or stopped serving a key here, or went silent, or was heard from again."""

    key: str
    node: str
    up: bool
    ts: float = _ts()


class RegistrationRefused(Event, frozen=True, tag="registration.refused"):
    """A registration was not accepted (its upstream is outside the allowlist, its key is a local plugin's)."""

    key: str
    source: str  # "redis" | "http"
    reason: str
    ts: float = _ts()


class RedisLinkChanged(Event, frozen=True, tag="fleet.redis"):
    """The fleet's Redis connection went down or came back."""

    up: bool
    detail: str
    ts: float = _ts()


class EventsDropped(Event, frozen=True, tag="events.dropped"):
    """Sent to a subscriber that was too slow: this many events were dropped before this one."""

    count: int
    ts: float = _ts()


# Every event the bus carries: what /ws/events may send, and what EVENT_DECODER reads.
AnyEvent = (
    PluginStateChanged
    | PluginHealthChanged
    | PluginRegistered
    | PluginUnregistered
    | MetricsSample
    | LogLine
    | ConsoleRegistered
    | ConsoleStateChanged
    | ConsoleHeartbeats
    | ConsoleRemoved
    | InProcessPluginLoaded
    | PluginLoadFailed
    | PluginHookFailed
    | PluginCallFailed
    | PluginShutdownFailed
    | PluginReloadFailed
    | OperatorAction
    | PluginPeersChanged
    | RegistrationRefused
    | RedisLinkChanged
    | EventsDropped
)
EVENT_TYPES: tuple[type[Event], ...] = get_args(AnyEvent)
EVENT_DECODER = msgspec.json.Decoder(AnyEvent)
# Structs do not check types when made: a value of another type a publisher put in (a Path, an exception) is sent
# as its str(), as json.dumps(default=str) did, rather than ending the stream.
_encode = msgspec.json.Encoder(enc_hook=str).encode


def with_topic(cls: type[EventT]) -> type[EventT]:
    """Give an event type its ``topic``, a plain class attribute (read on every publish) equal to its tag."""
    tag = cls.__struct_config__.tag
    if not isinstance(tag, str):
        raise TypeError(f"{cls.__name__} has no topic tag")
    cls.topic = tag
    return cls


for _type in EVENT_TYPES:
    with_topic(_type)


def encode_event(event: Event, topic: str | None = None) -> bytes:
    """The event's JSON, ``{"topic": ..., <fields>}``; ``topic`` names it otherwise (an old name: TOPIC_ALIASES)."""
    data = _encode(event)
    if topic is None or topic == event.topic:
        return data
    # msgspec writes the tag first: swap it for the name this subscriber asked for, the fields stay as they are.
    head = len(_encode(event.topic)) + len(b'{"topic":')
    return b'{"topic":' + _encode(topic) + data[head:]


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
