"""The event bus never blocks the publisher and tells a slow subscriber how much it lost."""

from supervisor_tui.core.events import EventBus, EventsDropped, LogLine, PluginStateChanged


async def test_subscriber_filters_by_topic_prefix() -> None:
    bus = EventBus()
    plugins = bus.subscribe(["plugin"])
    logs = bus.subscribe(["log"])
    bus.publish(PluginStateChanged("echo", "STOPPED", "STARTING", "operator"))
    bus.publish(LogLine("echo", "stdout", "info", "hello"))
    assert [e.topic for e in plugins.get_nowait()] == ["plugin.state"]
    assert [e.topic for e in logs.get_nowait()] == ["log"]


async def test_slow_subscriber_loses_oldest_and_is_told_how_many() -> None:
    bus = EventBus()
    sub = bus.subscribe(maxsize=3)
    for i in range(10):
        bus.publish(LogLine("echo", "stdout", "info", f"line {i}"))
    first = await sub.get()
    assert isinstance(first, EventsDropped) and first.count == 7
    rest = [await sub.get() for _ in range(3)]
    assert [e.message for e in rest if isinstance(e, LogLine)] == ["line 7", "line 8", "line 9"]


async def test_closed_subscription_stops_receiving() -> None:
    bus = EventBus()
    with bus.subscribe() as sub:
        assert bus.subscriber_count == 1
    assert bus.subscriber_count == 0
    bus.publish(LogLine("echo", "stdout", "info", "after close"))
    assert sub.get_nowait() == []
