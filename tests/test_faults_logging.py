"""A log consumer that stops reading never stops supervision.

Headless: stdout is a pipe the test stops reading (a stalled journald, ``| less``, a blocked docker log driver)
while a plugin prints as fast as it can. The API answers, heartbeats are acknowledged, SIGTERM exits 0, and when
the pipe is read again one line says how many lines were dropped; the log file has every line.
"""

from __future__ import annotations

import array
import fcntl
import signal
import termios
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from conftest import HeadlessProcess, wait_until

from supervisor_tui.config import Settings

pytestmark = pytest.mark.usefixtures("no_plugin_leftovers")

Headless = Callable[..., HeadlessProcess]

FLOOD_LINES = 40_000  # ~3 MB: far more than a pipe and the echo queue hold
FLOOD = f"""\
import time
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
    make_plugin("flood", FLOOD)
    proc = headless()
    listening = await proc.wait_for(lambda r: r.get("event") == "api_listening")
    proc.pause_reading()
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
