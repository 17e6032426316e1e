"""The event bus never blocks the publisher and tells a slow subscriber how much it lost; topics are dotted, and
the names of before are delivered as aliases to subscribers that ask for them."""

from supervisor_tui.core.events import (
    EventBus,
    EventsDropped,
    InProcessPluginLoaded,
    LogLine,
    PluginFailed,
    PluginStateChanged,
    plugin_failed,
)

LOADED = InProcessPluginLoaded("stats")
FAILURES = [
    plugin_failed("broken", "import", "no module named x"),
    plugin_failed("broken", "configuration", "bad value"),
    plugin_failed("stats", "hook on_plugin_state_changed", "boom"),
    plugin_failed("stats", "call summary", "blocked the event loop for 1.2s in summary"),
    plugin_failed("stats", "shutdown", "did not finish within 5s"),
    plugin_failed("web", "reload", "manifest.json: bad JSON"),  # a process plugin's reload, too
]


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


def test_each_kind_of_plugin_failure_has_its_own_dotted_topic() -> None:
    assert LOADED.topic == "plugin.loaded"
    assert [e.topic for e in FAILURES] == [
        "plugin.load_failed",
        "plugin.load_failed",
        "plugin.hook_failed",
        "plugin.call_failed",
        "plugin.shutdown_failed",
        "plugin.reload_failed",
    ]
    assert FAILURES[-1].to_dict()["topic"] == "plugin.reload_failed"


def test_the_plugin_prefix_gets_them_under_their_dotted_names() -> None:
    bus = EventBus()
    plugins = bus.subscribe(["plugin"])
    failures = bus.subscribe(["plugin.reload_failed", "plugin.load_failed"])
    for event in (LOADED, *FAILURES):
        bus.publish(event)
    assert [plugins.topic_name(e) for e in plugins.get_nowait()] == [LOADED.topic] + [e.topic for e in FAILURES]
    got = failures.get_nowait()
    assert [(failures.topic_name(e), e.phase) for e in got if isinstance(e, PluginFailed)] == [
        ("plugin.load_failed", "import"),
        ("plugin.load_failed", "configuration"),
        ("plugin.reload_failed", "reload"),
    ]


def test_the_old_names_are_delivered_as_aliases_to_who_asks_for_them() -> None:
    bus = EventBus()
    old = bus.subscribe(["plugin-loaded", "plugin-failed"])
    only_failed = bus.subscribe(["plugin-failed", "log"])
    both = bus.subscribe(["plugin", "plugin-failed"])  # a filter matches the new names: they win
    for event in (LOADED, *FAILURES, PluginStateChanged("web", "RUNNING", "STOPPING", "operator")):
        bus.publish(event)
    assert [old.topic_name(e) for e in old.get_nowait()] == ["plugin-loaded"] + ["plugin-failed"] * len(FAILURES)
    assert [only_failed.topic_name(e) for e in only_failed.get_nowait()] == ["plugin-failed"] * len(FAILURES)
    assert [both.topic_name(e) for e in both.get_nowait()] == [
        LOADED.topic,
        *(e.topic for e in FAILURES),
        "plugin.state",
    ]
