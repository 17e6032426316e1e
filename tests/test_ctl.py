"""`supervisor-tui ctl` as scripts run it: the real CLI in a subprocess against a real headless supervisor."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import HeadlessProcess
from fixtures.api.harness import REPORTER, REPORTER_ENDPOINTS, REPORTER_HEALTH, bearer
from fixtures.plugins.hostile_output import END, SHOWN

from supervisor_tui.config import Settings

pytestmark = pytest.mark.usefixtures("no_plugin_leftovers")

Headless = Callable[..., HeadlessProcess]


def ctl_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SUPERVISOR_TUI_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def ctl(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run `supervisor-tui ctl ARGS` and wait for it."""
    return subprocess.run(
        [sys.executable, "-m", "supervisor_tui", "ctl", *args],
        cwd=cwd,
        env=ctl_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=90,
    )


def one_line(stderr: str) -> str:
    lines = stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


async def start_supervisor(headless: Headless) -> tuple[HeadlessProcess, str]:
    proc = headless()
    url = str((await proc.wait_for(lambda r: r.get("event") == "api_listening"))["url"])
    return proc, url


async def get(url: str, token: str | None = None, **params: str) -> httpx.Response:
    async with httpx.AsyncClient() as client:
        return await client.get(url, headers=bearer(token) if token else {}, params=params)


async def plugin(url: str, token: str, key: str) -> dict[str, Any]:
    return dict((await get(f"{url}/api/v1/plugins/{key}", token)).json())


async def test_status_start_stop_restart(
    headless: Headless, settings: Settings, make_plugin: Callable[..., Path]
) -> None:
    make_plugin("good", str(REPORTER), endpoints=REPORTER_ENDPOINTS, autostart=False)
    make_plugin("other", "sleeper.py")
    proc, url = await start_supervisor(headless)
    await proc.wait_state("other", "RUNNING")
    token = (settings.data_dir / "admin.token").read_text().strip()
    cwd = settings.base_dir  # next to the supervisor: the token comes from ./data/admin.token

    r = ctl("--url", url, "status", cwd=cwd)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    rows = {line.split()[0]: line.split() for line in r.stdout.splitlines()}
    assert rows["KEY"][:2] == ["KEY", "STATE"]
    assert rows["good"][1] == "STOPPED" and rows["other"][1] == "RUNNING"

    r = ctl("--url", url, "start", "good", cwd=cwd)
    assert r.returncode == 0 and r.stdout.strip() == "good: RUNNING" and r.stderr == ""
    assert (await plugin(url, token, "good"))["state"] == "RUNNING"

    # One failure among several: the others are done, non-zero exit, one line per failure.
    r = ctl("--url", url, "stop", "good", "missing", cwd=cwd)
    assert r.returncode == 1
    assert "missing" in one_line(r.stderr) and "good" not in r.stderr
    assert r.stdout.strip() == "good: STOPPED"
    assert (await plugin(url, token, "good"))["state"] == "STOPPED"
    r = ctl("--url", url, "start", "good", "missing", "absent", cwd=cwd)
    assert r.returncode == 1
    errors = r.stderr.splitlines()
    assert len(errors) == 2 and "Traceback" not in r.stderr
    assert any("missing" in e for e in errors) and any("absent" in e for e in errors)
    assert r.stdout.strip() == "good: RUNNING"

    pid = (await plugin(url, token, "good"))["pid"]
    r = ctl("--url", url, "restart", "good", cwd=cwd)
    assert r.returncode == 0 and r.stdout.strip() == "good: RUNNING"
    assert (await plugin(url, token, "good"))["pid"] != pid

    r = ctl("--url", url, "stop", "good", "other", cwd=cwd)
    assert r.returncode == 0 and sorted(r.stdout.splitlines()) == ["good: STOPPED", "other: STOPPED"]
    proc.signal(signal.SIGTERM)
    assert await proc.wait() == 0


async def test_logs_and_follow(headless: Headless, settings: Settings, make_plugin: Callable[..., Path]) -> None:
    make_plugin("talk", str(REPORTER), endpoints=REPORTER_ENDPOINTS, health=REPORTER_HEALTH)
    proc, url = await start_supervisor(headless)
    await proc.wait_state("talk", "RUNNING")
    for i in range(3):
        await get(f"{url}/api/plugins/talk/say", text=f"said {i}")
    await proc.wait_for(lambda r: r.get("source") == "talk" and r.get("message") == "said 2")
    cwd = settings.base_dir

    r = ctl("--url", url, "logs", "talk", "-n", "2", cwd=cwd)
    assert r.returncode == 0, r.stderr
    assert [line.split(" ", 2)[2] for line in r.stdout.splitlines()] == ["said 1", "said 2"]
    assert all(line.split(" ", 2)[1] == "out" for line in r.stdout.splitlines())
    r = ctl("--url", url, "logs", "nope", cwd=cwd)
    assert r.returncode == 1 and "nope" in one_line(r.stderr)

    async def follower() -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(
            *[sys.executable, "-m", "supervisor_tui", "ctl", "--url", url, "logs", "talk", "-n", "1", "-f"],
            cwd=cwd,
            env=ctl_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )

    async def line(p: asyncio.subprocess.Process) -> str:
        assert p.stdout is not None
        return (await asyncio.wait_for(p.stdout.readline(), 60)).decode().rstrip()

    first, second = await follower(), await follower()
    try:
        for p in (first, second):
            assert (await line(p)).endswith(" out said 2")
        await get(f"{url}/api/plugins/talk/say", text="while following")
        for p in (first, second):
            assert (await line(p)).endswith(" out while following")
        # Ctrl-C ends a follower quietly.
        first.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(first.wait(), 30) == 130
        assert first.stderr is not None and await first.stderr.read() == b""
        # When the supervisor stops, a follower says so in one line and exits non-zero.
        proc.signal(signal.SIGTERM)
        assert await proc.wait() == 0
        assert await asyncio.wait_for(second.wait(), 30) == 1
        assert second.stderr is not None
        assert "ended the stream" in one_line((await second.stderr.read()).decode())
    finally:
        for p in (first, second):
            if p.returncode is None:
                p.kill()
                await p.wait()


async def test_logs_show_control_characters_escaped_in_ctl_and_the_log_file(
    headless: Headless, settings: Settings, make_plugin: Callable[..., Path]
) -> None:
    make_plugin("hostile", "hostile_output.py")
    proc, url = await start_supervisor(headless)
    await proc.wait_for(lambda r: r.get("source") == "hostile" and "hostile-err" in str(r.get("message")))
    r = ctl("--url", url, "logs", "hostile", cwd=settings.base_dir)
    assert r.returncode == 0, r.stderr
    assert "\x1b" not in r.stdout and "\x07" not in r.stdout and "\u202e" not in r.stdout
    assert f"out hostile-out {SHOWN} {END}" in r.stdout and f"err hostile-err {SHOWN} {END}" in r.stdout
    # `tail data/logs/hostile.log` on a terminal shows the same escapes.
    text = (settings.data_dir / "logs" / "hostile.log").read_text(encoding="utf-8")
    assert "\x1b" not in text and "\u202e" not in text
    assert f"stdout hostile-out {SHOWN} {END}" in text and f"stderr hostile-err {SHOWN} {END}" in text


async def test_install_from_a_manifest_file(headless: Headless, settings: Settings) -> None:
    proc, url = await start_supervisor(headless)
    cwd = settings.base_dir
    manifest = cwd / "fresh.json"
    manifest.write_text(
        json.dumps(
            {
                "key": "fresh",
                "command": ["python", str(REPORTER)],
                "startsecs": 0.3,
                "endpoints": REPORTER_ENDPOINTS,
                "health": REPORTER_HEALTH,
            }
        )
    )
    r = ctl("--url", url, "install", str(manifest), "--start", cwd=cwd)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "fresh: installed (RUNNING)"
    assert (await get(f"{url}/api/plugins/fresh/hello")).text == "hello from fresh"
    assert (settings.plugins_dir / "fresh" / "manifest.json").exists()
    # The same again, a file that is not JSON, a file that is not there, a manifest that is wrong: one line each.
    r = ctl("--url", url, "install", str(manifest), cwd=cwd)
    assert r.returncode == 1 and "already exists" in one_line(r.stderr)
    (cwd / "broken.json").write_text("{nope")
    r = ctl("--url", url, "install", "broken.json", cwd=cwd)
    assert r.returncode == 1 and "not valid JSON" in one_line(r.stderr)
    r = ctl("--url", url, "install", "absent.json", cwd=cwd)
    assert r.returncode == 1 and "absent.json" in one_line(r.stderr)
    (cwd / "bad.json").write_text(json.dumps({"key": "bad", "command": []}))
    r = ctl("--url", url, "install", "bad.json", cwd=cwd)
    assert r.returncode == 1 and "command" in one_line(r.stderr)
    proc.signal(signal.SIGTERM)
    assert await proc.wait() == 0


async def test_tokens_and_unreachable_supervisors(headless: Headless, settings: Settings, tmp_path: Path) -> None:
    proc, url = await start_supervisor(headless)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    # Away from the data dir, no token anywhere: usage error, one line.
    r = ctl("--url", url, "status", cwd=elsewhere)
    assert r.returncode == 2 and "token" in one_line(r.stderr)
    token = (settings.data_dir / "admin.token").read_text().strip()
    r = ctl("--url", url, "--token", token, "status", cwd=elsewhere)
    assert r.returncode == 0
    r = ctl("--url", url, "--token", "t0ken-that-is-not-it", "status", cwd=elsewhere)
    assert r.returncode == 1 and "401" in one_line(r.stderr) and "t0ken-that-is-not-it" not in r.stderr
    # --data-dir points at the token too.
    r = ctl("--url", url, "--data-dir", str(settings.data_dir), "status", cwd=elsewhere)
    assert r.returncode == 0
    proc.signal(signal.SIGTERM)
    assert await proc.wait() == 0
    # Nothing listens there any more.
    for action in (["status"], ["start", "a", "b"], ["logs", "a", "-f"]):
        r = ctl("--url", url, "--token", "t", *action, cwd=elsewhere)
        assert r.returncode != 0
        assert "cannot reach" in r.stderr or "connection refused" in r.stderr, r.stderr
        assert "Traceback" not in r.stderr
        assert len(r.stderr.splitlines()) == (2 if action[0] == "start" else 1), r.stderr


def test_an_answer_in_an_unexpected_shape_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    """ctl decodes each answer into the admin API's own Struct: a server that answers 200 in another shape (an
    older or a foreign one) gets one line naming the field, and exit 1."""
    import http.server
    import threading

    class Odd(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = (
                b'{"plugins": [{"state": "RUNNING"}]}'  # no key
                if self.path.startswith("/api/v1/plugins")
                else b'{"lines": [{"ts": "noon"}]}'
            )
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Odd)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        r = ctl("--url", url, "--token", "t", "status", cwd=tmp_path)
        line = one_line(r.stderr)
        assert r.returncode == 1 and "status: the supervisor answered in an unexpected shape" in line, line
        assert "key" in line
        r = ctl("--url", url, "--token", "t", "logs", "--grep", "x", cwd=tmp_path)
        line = one_line(r.stderr)
        assert r.returncode == 1 and "logs: the supervisor answered in an unexpected shape" in line, line
    finally:
        server.shutdown()
