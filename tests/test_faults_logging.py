"""A log consumer that stops reading never stops supervision.

Headless: stdout is a pipe the test stops reading (a stalled journald, ``| less``, a blocked docker log driver)
while a plugin prints as fast as it can. The API answers, heartbeats are acknowledged, SIGTERM exits 0, and when
the pipe is read again one line says how many lines were dropped; the log file has every line.

TUI: the terminal writer on a real pty whose other side the test stops reading: writes never block, whole
frames are dropped (never part of one), mode switches are kept, and once the terminal has read what was queued
the writer asks for one full repaint. The TUI in a frozen tmux is in test_tui_terminal.py.
"""

from __future__ import annotations

import array
import fcntl
import os
import re
import select
import signal
import termios
import tty
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from conftest import HeadlessProcess, wait_until

from supervisor_tui.config import Settings
from supervisor_tui.tui.driver import MAX_QUEUED_BYTES, TerminalWriter

pytestmark = pytest.mark.usefixtures("no_plugin_leftovers")

Headless = Callable[..., HeadlessProcess]

FLOOD_LINES = 40_000  # ~3 MB: far more than a pipe and the echo queue hold
# It floods once the test has stopped reading (the file "go" in its folder): started before the API listens, a
# flood that was all echoed and read before the test paused would leave nothing to fill the pipe with.
FLOOD = f"""\
import os, time
go = os.path.join(os.path.dirname(os.path.abspath(__file__)), "go")
while not os.path.exists(go):
    time.sleep(0.01)
for i in range({FLOOD_LINES}):
    print(f"FLOOD {{i:06d}} " + "x" * 60)
print("FLOOD done", flush=True)
while True:
    time.sleep(3600)
"""


def pipe_is_full(proc: HeadlessProcess) -> bool:
    """Whether the unread part of the process's stdout pipe leaves no room for another page."""
    assert proc.proc.stdout is not None
    fd = proc.proc.stdout.fileno()
    pending = array.array("i", [0])
    fcntl.ioctl(fd, termios.FIONREAD, pending)
    return pending[0] >= fcntl.fcntl(fd, fcntl.F_GETPIPE_SZ) - 4096


async def stalled_headless(headless: Headless, make_plugin: Callable[..., Path]) -> tuple[HeadlessProcess, str]:
    """A headless supervisor with a flooding plugin whose stdout pipe is full and unread; and its API URL."""
    folder = make_plugin("flood", FLOOD)
    proc = headless()
    listening = await proc.wait_for(lambda r: r.get("event") == "api_listening")
    proc.pause_reading()
    (folder / "go").touch()
    await wait_until(lambda: pipe_is_full(proc), timeout=60)
    return proc, str(listening["url"])


async def test_the_api_and_heartbeats_keep_working_while_stdout_is_not_read(
    headless: Headless, make_plugin: Callable[..., Path], settings: Settings
) -> None:
    proc, url = await stalled_headless(headless, make_plugin)
    try:
        admin = {"Authorization": f"Bearer {(settings.data_dir / 'admin.token').read_text().strip()}"}
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            status = await client.get("/api/v1/status", headers=admin)
            assert status.status_code == 200, status.text
            r = await client.post("/api/consoles/register", json={"id": "w1", "name": "w1", "state": "idle"})
            assert r.status_code == 201, r.text
            token = {"Authorization": f"Bearer {r.json()['token']}"}
            r = await client.post("/api/consoles/w1/heartbeat", json={"state": "busy"}, headers=token)
            assert r.status_code == 200 and r.json()["state"] == "busy", r.text
            # The plugin's output is still read and kept (file and API), all of it, while stdout is stalled.
            log_file = settings.logs_dir / "flood.log"
            await wait_until(lambda: log_file.exists() and "FLOOD done" in log_file.read_text(), timeout=60)
            assert pipe_is_full(proc)
            status = await client.get("/api/v1/status", headers=admin)
            assert status.status_code == 200, status.text
        assert sum(" stdout FLOOD " in line for line in log_file.read_text().splitlines()) == FLOOD_LINES + 1
    finally:
        proc.resume_reading()
    dropped = await proc.wait_for(lambda r: r.get("event") == "log_lines_dropped", timeout=60)
    assert dropped["level"] == "warning" and dropped["source"] == "supervisor"
    assert dropped["message"] == f"{dropped['dropped']} log lines dropped: stdout was not being read"
    echoed = len(proc.find(lambda r: r.get("source") == "flood" and r.get("message", "").startswith("FLOOD ")))
    assert 0 < echoed < FLOOD_LINES and dropped["dropped"] >= FLOOD_LINES + 1 - echoed
    proc.signal(signal.SIGTERM)
    assert await proc.wait() == 0


async def test_sigterm_exits_0_promptly_while_stdout_is_full(
    headless: Headless, make_plugin: Callable[..., Path]
) -> None:
    proc, _url = await stalled_headless(headless, make_plugin)
    try:
        proc.signal(signal.SIGTERM)
        await wait_until(lambda: proc.proc.poll() is not None, timeout=20)
    finally:
        proc.resume_reading()
    assert await proc.wait() == 0


SYNC_END = "\x1b[?2026l"  # a mode switch: short, kept even while frames are dropped


def read_until(fd: int, marker: bytes) -> bytes:
    """Everything readable from ``fd`` up to and including ``marker`` (failing after 30 s without data)."""
    out = bytearray()
    while marker not in out:
        ready, _, _ = select.select([fd], [], [], 30)
        assert ready, f"nothing more to read; got {len(out)} bytes"
        out += os.read(fd, 1 << 16)
    return bytes(out)


def test_the_terminal_writer_drops_whole_frames_while_the_terminal_is_not_read_then_asks_for_a_repaint() -> None:
    master, slave = os.openpty()
    tty.setraw(slave)  # bytes pass unchanged
    repaints: list[int] = []
    with os.fdopen(slave, "w", encoding="utf-8") as terminal:

        def repaint() -> None:  # what the driver does: the app draws the whole screen again
            repaints.append(1)
            writer.write("<repaint>")

        writer = TerminalWriter(terminal, on_error=pytest.fail, on_drained=repaint)
        frame_chars = 20_000
        frames = 4 * MAX_QUEUED_BYTES // frame_chars  # four times what may wait
        for i in range(frames):  # nobody reads the pty: these calls return anyway
            writer.write(f"<frame {i:04d} " + "f" * frame_chars + f" end {i:04d}>")
            writer.write(SYNC_END)
        assert not repaints
        out = read_until(master, b"<repaint>")  # the terminal reads again
        writer.stop()
    os.close(master)
    assert repaints == [1]
    text = out.decode()
    whole = re.findall(r"<frame (\d{4}) (f*) end (\d{4})>", text)
    assert len(whole) == text.count("<frame "), "a frame was cut"
    assert all(a == b and len(body) == frame_chars for a, body, b in whole)
    shown = [int(a) for a, _, _ in whole]
    assert shown == list(range(len(shown))) and 0 < len(shown) < frames  # the oldest kept, then none
    assert text.count(SYNC_END) == frames  # every mode switch got through
    assert text.endswith("<repaint>")


async def test_the_terminal_writer_stops_when_the_terminal_never_reads_again_and_reports_it_gone() -> None:
    master, slave = os.openpty()
    errors: list[str] = []
    with os.fdopen(slave, "w", encoding="utf-8") as terminal:
        writer = TerminalWriter(terminal, on_error=errors.append, on_drained=lambda: None)
        for _ in range(100):
            writer.write("x" * 10_000)
        writer.stop()  # returns after at most STOP_TIMEOUT: leaving the app never hangs on the terminal
        os.close(master)  # the terminal goes away: the blocked write fails
        await wait_until(lambda: errors == ["terminal write failed"])
