"""The log hub: bounded line reading, rings, rotating files, supervisor messages, echo formats."""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path

from supervisor_tui.core.events import EventBus, LogLine
from supervisor_tui.core.logs import MAX_LINE, LogHub


async def pump_bytes(hub: LogHub, *chunks: bytes, source: str = "p", stream: str = "stdout") -> None:
    reader = asyncio.StreamReader()
    for chunk in chunks:
        reader.feed_data(chunk)
    reader.feed_eof()
    await hub.pump(source, stream, reader)


async def test_lines_are_split_across_chunks_and_tagged(tmp_path: Path) -> None:
    bus = EventBus()
    hub = LogHub(bus, tmp_path)
    with bus.subscribe(["log"]) as sub:
        await pump_bytes(hub, b"hel", b"lo\nwor", b"ld\r\nlast without newline")
        await pump_bytes(hub, b"oops\n", stream="stderr")
        events = sub.get_nowait()
    assert [r.message for r in hub.tail("p", 10)] == ["hello", "world", "last without newline", "oops"]
    assert hub.tail("p", 1)[0].stream == "stderr" and hub.tail("p", 1)[0].level == "error"
    assert all(isinstance(e, LogLine) and e.source == "p" for e in events) and len(events) == 4


async def test_long_lines_are_cut_and_the_rest_skipped(tmp_path: Path) -> None:
    hub = LogHub(EventBus(), tmp_path)
    huge = b"x" * (MAX_LINE * 3)
    await pump_bytes(hub, huge[:100_000], huge[100_000:], b"\nnext\n")
    first, second = hub.tail("p", 10)
    assert first.message.startswith("x" * 100) and first.message.endswith("[line cut at 64 KiB]")
    assert len(first.message) < MAX_LINE + 100
    assert second.message == "next"


async def test_a_writer_without_newlines_cannot_grow_memory(tmp_path: Path) -> None:
    hub = LogHub(EventBus(), None, ring_lines=100)
    chunks = [b"y" * 65536 for _ in range(64)]  # 4 MiB, never a newline
    await pump_bytes(hub, *chunks)
    records = hub.tail("p", 1000)
    assert len(records) == 1 and len(records[0].message) < MAX_LINE + 100


async def test_invalid_utf8_is_replaced(tmp_path: Path) -> None:
    hub = LogHub(EventBus(), tmp_path)
    await pump_bytes(hub, b"caf\xc3\xa9 \xff\xfe ok\n")
    assert hub.tail("p", 1)[0].message == "caf\u00e9 \ufffd\ufffd ok"


def test_ring_keeps_the_newest_lines_and_tail_merges_sources() -> None:
    hub = LogHub(EventBus(), None, ring_lines=100)
    for i in range(250):
        hub.write("a" if i % 2 else "b", "stdout", f"line {i}")
    assert len(hub.tail("a", 1000)) == 100 and hub.tail("a", 1)[0].message == "line 249"
    merged = hub.tail(None, 4)
    assert [r.message for r in merged] == ["line 246", "line 247", "line 248", "line 249"]
    assert hub.sources() == ["a", "b"] and hub.tail("missing", 5) == [] and hub.tail("a", 0) == []


def test_files_rotate_by_size(tmp_path: Path) -> None:
    hub = LogHub(EventBus(), tmp_path, max_bytes=2000, backups=2)
    for i in range(200):
        hub.write("rot", "stdout", f"line {i:04d} " + "z" * 40)
    hub.close()
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["rot.log", "rot.log.1", "rot.log.2"]
    assert all(p.stat().st_size <= 2000 for p in tmp_path.iterdir())
    assert "line 0199" in (tmp_path / "rot.log").read_text()


def test_supervisor_messages_echo_as_json_lines_and_plugin_output_on_request() -> None:
    out = io.StringIO()
    hub = LogHub(EventBus(), None, echo=out, echo_format="json")
    hub.info("echo: STARTING -> RUNNING", event="plugin_state", plugin="echo", **{"from": "STARTING", "to": "RUNNING"})
    hub.write("echo", "stdout", "not echoed by default")
    hub.echo_output = True
    hub.write("echo", "stderr", "echoed now", "error")
    hub.close()  # the echo is written by a thread: close() waits for it
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert len(lines) == 2
    state, output = lines
    assert state["source"] == "echo" and state["event"] == "plugin_state" and state["to"] == "RUNNING"
    assert output == {**output, "source": "echo", "event": "output", "stream": "stderr", "level": "error"}
    assert {"ts", "level", "source", "event", "message"} <= set(state)


def test_secrets_never_reach_rings_or_echo() -> None:
    out = io.StringIO()
    hub = LogHub(EventBus(), None, echo=out)
    hub.secrets.append("s3cret")
    hub.info("token is s3cret")
    hub.close()
    assert "s3cret" not in out.getvalue() and hub.tail("supervisor", 1)[0].message == "token is ***"


def test_unwritable_log_dir_does_not_break_logging(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    hub = LogHub(EventBus(), blocker / "logs")  # a file where the directory should be
    hub.write("p", "stdout", "still kept in memory")
    assert hub.tail("p", 1)[0].message == "still kept in memory"
