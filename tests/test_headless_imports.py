"""A running headless supervisor holds none of the TUI's packages in memory, nor, with default settings, the drivers
of features that are off, nor the admin app's (FastAPI, pydantic, opentelemetry, prometheus-client) until a client
asks the admin API something (a real subprocess's sys.modules)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# Runs the real command line; a thread writes sys.modules to modules-N.json each time the test creates dump-N.
DRIVER = """\
import ctypes, json, sys, threading, time
from pathlib import Path
from supervisor_tui.cli import main

here = Path(sys.argv[1])

def dump():
    n = 0
    while True:
        while not (here / f"dump-{n}").exists():
            time.sleep(0.05)
        (here / f"modules-{n}.tmp").write_text(json.dumps(sorted(sys.modules)))
        (here / f"modules-{n}.tmp").rename(here / f"modules-{n}.json")
        libc = ctypes.CDLL(None)  # glibc's account of its malloc arenas, as XML
        libc.fopen.restype = ctypes.c_void_p
        out = libc.fopen(str(here / f"malloc-{n}.tmp").encode(), b"w")
        libc.malloc_info(0, ctypes.c_void_p(out))
        libc.fclose(ctypes.c_void_p(out))
        (here / f"malloc-{n}.tmp").rename(here / f"malloc-{n}.xml")
        n += 1

threading.Thread(target=dump, daemon=True).start()
sys.exit(main(sys.argv[2:]))
"""

TUI_ONLY = ("textual", "rich", "pygments")  # click stays: uvicorn imports it for its own command line
# Off by default: the fleet (redis.url), a PostgreSQL console store (consoles.store), a log search (a pattern),
# httpx (a route export to Caddy, webhook alerts; health probes speak HTTP themselves).
WHEN_USED = ("redis", "hiredis", "asyncpg", "regex", "httpx")
# The admin app's packages: loaded at the first admin request other than /health and /ready (server.admin_lazy).
ADMIN_ONLY = ("fastapi", "pydantic", "pydantic_core", "opentelemetry", "prometheus_client", "fastapi_offline")


class Headless:
    """The real command line in a subprocess, with its API URL and admin token once it is up."""

    def __init__(self, root: Path, proc: subprocess.Popen[str], url: str) -> None:
        self.root, self.proc, self.url = root, proc, url
        self.token = (root / "data" / "admin.token").read_text().strip()
        self.dumps = 0

    def modules(self) -> set[str]:
        """sys.modules of the supervisor now."""
        n, self.dumps = self.dumps, self.dumps + 1
        (self.root / f"dump-{n}").touch()
        deadline = time.monotonic() + 30
        while not (self.root / f"modules-{n}.json").exists():
            assert time.monotonic() < deadline and self.proc.poll() is None
            time.sleep(0.05)
        return set(json.loads((self.root / f"modules-{n}.json").read_text()))

    def malloc_arenas(self) -> int:
        """glibc's malloc arenas in the supervisor, as of the last ``modules()``."""
        n = self.dumps - 1
        deadline = time.monotonic() + 30
        while not (self.root / f"malloc-{n}.xml").exists():
            assert time.monotonic() < deadline and self.proc.poll() is None
            time.sleep(0.05)
        return (self.root / f"malloc-{n}.xml").read_text().count("<heap nr=")

    def get(self, path: str, token: bool = True) -> tuple[int, bytes]:
        request = urllib.request.Request(self.url + path)
        if token:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as refused:
            return refused.code, refused.read()


@contextmanager
def headless(root: Path) -> Iterator[Headless]:
    """A headless supervisor with one plugin, after the API listened and the plugin ran: the whole start path."""
    plugin = root / "plugins" / "sleeper"
    plugin.mkdir(parents=True)
    (plugin / "sleeper.py").write_text("import time\nprint('up', flush=True)\ntime.sleep(3600)\n")
    manifest = {"key": "sleeper", "command": [sys.executable, "sleeper.py"], "startsecs": 0.2}
    (plugin / "manifest.json").write_text(json.dumps(manifest))
    (root / "driver.py").write_text(DRIVER)
    args = [sys.executable, str(root / "driver.py"), str(root), "--headless", "--port", "0"]
    args += ["--log-format", "json", "--plugins-dir", str(root / "plugins"), "--data-dir", str(root / "data")]
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    proc = subprocess.Popen(args, cwd=root, env=env, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None
        url, running = "", False
        for line in proc.stdout:
            try:
                record = json.loads(line)
            except ValueError:  # a line some library printed itself: not the supervisor's log
                continue
            url = record.get("url", url) if record.get("event") == "api_listening" else url
            running = running or record.get("to") == "RUNNING"
            if url and running:
                break
        yield Headless(root, proc, url)
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(30) == 0


def test_headless_imports_nothing_only_the_tui_uses(tmp_path: Path) -> None:
    with headless(tmp_path) as sup:
        modules = sup.modules()
    assert {"supervisor_tui.server.gateway", "supervisor_tui.plugins.process", "uvicorn"} <= modules
    loaded = sorted(m for m in modules if m.split(".")[0] in TUI_ONLY or m.startswith("supervisor_tui.tui"))
    assert loaded == []
    modules.discard("httpx._main")  # not a module: cli.py's None placeholder that keeps httpx's CLI from loading
    unused = sorted(m for m in modules if m.split(".")[0] in WHEN_USED or m.startswith("supervisor_tui.fleet"))
    assert unused == []


def admin_modules(modules: set[str]) -> list[str]:
    admin = ("supervisor_tui.server.admin", "supervisor_tui.server.metrics", "supervisor_tui.server.inprocess_api")
    return sorted(m for m in modules if m.split(".")[0] in ADMIN_ONLY or m in admin)


def test_the_admin_app_loads_at_the_first_admin_request_and_then_answers_everything(tmp_path: Path) -> None:
    with headless(tmp_path) as sup:
        assert admin_modules(sup.modules()) == []
        # What load balancers poll is answered without it.
        assert sup.get("/health", token=False) == (200, b'{"status":"ok"}')
        assert sup.get("/ready", token=False) == (200, b'{"ready":true,"detail":""}')
        assert admin_modules(sup.modules()) == []
        status, body = sup.get("/api/v1/status")
        assert status == 200
        answer = json.loads(body)
        assert answer["mode"] == "headless" and answer["api"] == sup.url
        assert answer["plugins"] == {"total": 1, "by_state": {"RUNNING": 1}}
        assert {"fastapi", "pydantic", "supervisor_tui.server.admin"} <= sup.modules()
        assert sup.get("/api/v1/status", token=False)[0] == 401
        status, body = sup.get("/openapi.json", token=False)
        assert status == 200 and "/api/v1/status" in json.loads(body)["paths"]
        assert "/ready" in json.loads(body)["paths"]
        status, body = sup.get("/docs", token=False)
        assert status == 200 and b"/docs/assets/swagger-ui-bundle.js" in body
        assert sup.get("/docs/assets/swagger-ui-bundle.js", token=False)[0] == 200
        status, body = sup.get("/metrics")
        assert status == 200 and b'supervisor_plugin_state{plugin="sleeper",state="RUNNING"} 1.0' in body
        assert sup.get("/ready", token=False) == (200, b'{"ready":true,"detail":""}')
        assert json.loads(sup.get("/nowhere", token=False)[1])["error"]["code"] == "not_found"


def test_the_start_path_imports_no_http_server_before_the_plugins_start() -> None:
    """What the main thread imports before the first spawn (the command line, headless mode, the runtime): uvicorn
    and its command line's click load in a worker thread while plugins start, FastAPI at the first admin request."""
    code = "import json, sys, supervisor_tui.cli, supervisor_tui.headless; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60).stdout
    modules = set(json.loads(out))
    assert {"supervisor_tui.runtime", "supervisor_tui.core.supervisor", "supervisor_tui.server.listen"} <= modules
    early = sorted(m for m in modules if m.split(".")[0] in ("uvicorn", "click", *ADMIN_ONLY, *TUI_ONLY))
    assert early == []
    assert admin_modules(modules) == [] and "supervisor_tui.server.serve" not in modules


def test_a_running_headless_supervisor_keeps_to_two_malloc_arenas(tmp_path: Path) -> None:
    """Its threads (database, log echo, watcher, executor...) share glibc's malloc arenas instead of one each."""
    with headless(tmp_path) as sup:
        sup.get("/api/v1/status")  # the admin app built: its import ran in a worker thread too
        sup.modules()
        arenas = sup.malloc_arenas()
        threads = len(os.listdir(f"/proc/{sup.proc.pid}/task"))
    assert threads > 2 and 1 <= arenas <= 2
