"""One model per event, used as the wire shape: every event type of core/events.py goes through /ws/events of a
real headless supervisor (Runtime on a real socket) and comes back, field for field, out of the attached TUI's
typed decoder; the old topic names keep their fields; docs/api.md lists every topic with exactly its fields."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import websockets
from fixtures.api.harness import bearer, running_api

from supervisor_tui.config import Settings
from supervisor_tui.core.events import (
    EVENT_DECODER,
    EVENT_TYPES,
    ConsoleHeartbeats,
    ConsoleRegistered,
    ConsoleRemoved,
    ConsoleStateChanged,
    Event,
    EventsDropped,
    InProcessPluginLoaded,
    LogLine,
    MetricsSample,
    OperatorAction,
    PluginHealthChanged,
    PluginPeersChanged,
    PluginRegistered,
    PluginStateChanged,
    PluginUnregistered,
    RedisLinkChanged,
    RegistrationRefused,
    encode_event,
    plugin_failed,
)
from supervisor_tui.tui.client import ConnectionChange
from supervisor_tui.tui.client_remote import EVENT_TOPICS, RemoteClient

API_DOC = Path(__file__).resolve().parents[1] / "docs" / "api.md"
TS = 1_767_225_600.25

# One of each type, every field away from its default (a field lost on the way would come back as its default).
EXAMPLES: list[Event] = [
    PluginStateChanged("web", "STARTING", "RUNNING", "autostart", pid=4242, port=4001, ts=TS),
    PluginHealthChanged("web", False, "GET /health: 503", ts=TS),
    PluginRegistered("web", "process", ts=TS),
    PluginUnregistered("web", "removed", ts=TS),
    MetricsSample("web", cpu_percent=12.5, rss=40960, threads=3, fds=11, processes=2, ts=TS),
    LogLine("web", "stderr", "warning", "disk nearly full: ünïcode ✓", ts=TS),
    ConsoleRegistered("c-1", "Kitchen", "active", ts=TS, remote=True),
    ConsoleStateChanged("c-1", "active", "inactive", "timeout", at=TS - 30, ts=TS, remote=True),
    ConsoleHeartbeats(2, ("c-1", "c-2"), ts=TS, remote=True),
    ConsoleRemoved("c-1", ts=TS, remote=True),
    InProcessPluginLoaded("stats", ts=TS),
    plugin_failed("broken", "import", "no module named x"),
    plugin_failed("stats", "hook on_plugin_state_changed", "boom"),
    plugin_failed("stats", "call summary", "blocked the event loop for 1.2s"),
    plugin_failed("stats", "shutdown", "did not finish within 5s"),
    plugin_failed("web", "reload", "manifest.json: bad JSON"),
    OperatorAction("restart", "web", "api", "alice", False, detail="timed out", ts=TS),
    PluginPeersChanged("web", "node-b", True, ts=TS),
    RegistrationRefused("web", "redis", "a local plugin's key", ts=TS),
    RedisLinkChanged(False, "connection refused", ts=TS),
    EventsDropped(7, ts=TS),
]


def ws_url(url: str, topics: str | None) -> str:
    return url.replace("http://", "ws://") + "/ws/events" + (f"?topics={topics}" if topics else "")


async def frames(ws: Any, n: int) -> list[str]:
    return [await asyncio.wait_for(ws.recv(), 30) for _ in range(n)]


def without(message: str | dict[str, Any], key: str) -> dict[str, Any]:
    body = msgspec.json.decode(message) if isinstance(message, str) else dict(message)
    body.pop(key)
    return body


def test_every_event_type_has_an_example_and_its_own_topic() -> None:
    assert sorted(type(e).__name__ for e in EXAMPLES) == sorted(t.__name__ for t in EVENT_TYPES)
    assert len({t.topic for t in EVENT_TYPES}) == len(EVENT_TYPES)
    assert all(t.topic == t.__struct_config__.tag for t in EVENT_TYPES)


def subscribed(topic: str, filters: str) -> bool:
    return any(topic == t or topic.startswith(t + ".") for t in filters.split(","))


def block(items: list[Any], first: Any, n: int) -> list[Any]:
    """The ``n`` items from ``first`` on: what was published in one go arrives in one piece, in order (whatever
    the supervisor published itself comes before or after)."""
    start = items.index(first)
    return items[start : start + n]


async def test_every_event_round_trips_through_ws_events_into_the_typed_decoder(settings: Settings) -> None:
    wanted = [e for e in EXAMPLES if subscribed(e.topic, EVENT_TOPICS)]  # what the attached TUI asks for
    async with running_api(settings) as api:
        assert api.runtime is not None
        client = RemoteClient(api.url, api.admin_token)
        stream: AsyncIterator[list[Event]] = client.events()
        try:
            async with websockets.connect(ws_url(api.url, None), additional_headers=bearer(api.admin_token)) as ws:
                # Both are subscribed once connected: the client says so first, the raw socket once open.
                assert await asyncio.wait_for(anext(stream), 30) == [ConnectionChange(True, "")]
                for event in EXAMPLES:  # in one go: nothing of the supervisor's own comes in between
                    api.runtime.sup.bus.publish(event)
                raw: list[str] = []
                while not raw or msgspec.json.decode(raw[-1]) != EXAMPLES[-1].to_dict():
                    raw.append(await asyncio.wait_for(ws.recv(), 30))
                seen: list[Event] = []
                while wanted[-1] not in seen:
                    seen.extend(await asyncio.wait_for(anext(stream), 30))
        finally:
            await client.close()
    assert all(isinstance(m, str) for m in raw)  # text frames
    first = next(i for i, m in enumerate(raw) if msgspec.json.decode(m) == EXAMPLES[0].to_dict())
    raw = raw[first : first + len(EXAMPLES)]
    decoded = [EVENT_DECODER.decode(m) for m in raw]
    # Every type, every field, the types themselves (one decoder of the union tagged by topic).
    assert decoded == EXAMPLES
    assert [type(e) for e in decoded] == [type(e) for e in EXAMPLES]
    # The wire shape is the Struct's: its topic, then exactly its fields, named as in the Struct.
    for message, event in zip(raw, EXAMPLES, strict=True):
        body = msgspec.json.decode(message)
        assert list(body) == ["topic", *(f.encode_name for f in msgspec.structs.fields(type(event)))]
        assert body["topic"] == event.topic
    # The attached TUI's client decodes them into the same Structs that were published, skipping none.
    assert block(seen, wanted[0], len(wanted)) == wanted
    assert client.undecoded_events == 0


async def test_old_topic_names_keep_the_fields_and_a_slow_client_is_told_what_it_lost(settings: Settings) -> None:
    failures = [e for e in EXAMPLES if e.topic.endswith("_failed")]
    loaded = next(e for e in EXAMPLES if isinstance(e, InProcessPluginLoaded))
    async with running_api(settings) as api:
        assert api.runtime is not None
        bus = api.runtime.sup.bus
        old = ws_url(api.url, "plugin-loaded,plugin-failed")
        async with websockets.connect(old, additional_headers=bearer(api.admin_token)) as ws:
            for event in (loaded, *failures):
                bus.publish(event)
            raw = await frames(ws, 1 + len(failures))
        assert [msgspec.json.decode(m)["topic"] for m in raw] == ["plugin-loaded"] + ["plugin-failed"] * len(failures)
        assert [without(m, "topic") for m in raw] == [without(e.to_dict(), "topic") for e in (loaded, *failures)]
        # More than the socket's queue (5000) published at once: the oldest are dropped, and the client is told.
        async with websockets.connect(ws_url(api.url, "log"), additional_headers=bearer(api.admin_token)) as ws:
            for i in range(5100):
                bus.publish(LogLine("flood", "stdout", "info", f"line {i}", ts=TS))
            dropped = EVENT_DECODER.decode(await asyncio.wait_for(ws.recv(), 30))
            assert isinstance(dropped, EventsDropped) and dropped.count >= 100  # and whatever was queued before
            rest = [EVENT_DECODER.decode(m) for m in await frames(ws, 5000)]
            assert [e.message for e in rest if isinstance(e, LogLine)] == [f"line {i}" for i in range(100, 5100)]


def documented_events() -> dict[str, list[str]]:
    """docs/api.md's table of events: topic -> its fields, in order."""
    text = API_DOC.read_text()
    section = text[text.index("## Events") :]
    section = section[: section.index("\n## ", 1)]
    rows = re.findall(r"^\| `([a-z._]+)` \| ([^|]+) \|", section, re.M)
    return {topic: re.findall(r"`([a-z_]+)`", fields) for topic, fields in rows}


def test_the_api_docs_list_every_topic_with_exactly_its_fields() -> None:
    assert documented_events() == {t.topic: [f.encode_name for f in msgspec.structs.fields(t)] for t in EVENT_TYPES}


def test_a_value_of_another_type_is_sent_as_its_text_not_a_broken_stream() -> None:
    # Structs do not check types when made; json.dumps(default=str) sent such values as str(), so does msgspec.
    line = LogLine(Path("/srv/web"), "stdout", "info", ValueError("boom"), ts=TS)  # type: ignore[arg-type]
    assert EVENT_DECODER.decode(encode_event(line)) == LogLine("/srv/web", "stdout", "info", "boom", ts=TS)
