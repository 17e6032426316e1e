"""A running headless supervisor holds none of the TUI's packages in memory, nor, with default settings, the drivers
of features that are off (a real subprocess's sys.modules)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

# Runs the real command line; a thread writes sys.modules to a file once the test asks for it.
DRIVER = """\
import json, sys, threading, time
from pathlib import Path
from supervisor_tui.cli import main

here = Path(sys.argv[1])

def dump():
    while not (here / "dump-now").exists():
        time.sleep(0.05)
    (here / "modules.json").write_text(json.dumps(sorted(sys.modules)))

threading.Thread(target=dump, daemon=True).start()
sys.exit(main(sys.argv[2:]))
"""

TUI_ONLY = ("textual", "rich", "pygments")  # click stays: uvicorn imports it for its own command line
# Off by default: the fleet (redis.url), a PostgreSQL console store (consoles.store), a log search (a pattern),
# httpx (a route export to Caddy, webhook alerts; health probes speak HTTP themselves).
WHEN_USED = ("redis", "hiredis", "asyncpg", "regex", "httpx")


def test_headless_imports_nothing_only_the_tui_uses(tmp_path: Path) -> None:
    plugin = tmp_path / "plugins" / "sleeper"
    plugin.mkdir(parents=True)
    (plugin / "sleeper.py").write_text("import time\nprint('up', flush=True)\ntime.sleep(3600)\n")
    manifest = {"key": "sleeper", "command": [sys.executable, "sleeper.py"], "startsecs": 0.2}
    (plugin / "manifest.json").write_text(json.dumps(manifest))
    (tmp_path / "driver.py").write_text(DRIVER)
    args = [sys.executable, str(tmp_path / "driver.py"), str(tmp_path), "--headless", "--port", "0"]
    args += ["--log-format", "json", "--plugins-dir", str(tmp_path / "plugins"), "--data-dir", str(tmp_path / "data")]
    proc = subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None
        seen: set[str] = set()
        for line in proc.stdout:  # until the API listens and the plugin runs: the whole start path ran
            try:
                record = json.loads(line)
            except ValueError:  # a line some library printed itself: not the supervisor's log
                continue
            if record.get("event") == "api_listening" or record.get("to") == "RUNNING":
                seen.add(record.get("event", ""))
            if len(seen) == 2:
                break
        (tmp_path / "dump-now").touch()
        deadline = time.monotonic() + 30
        while not (tmp_path / "modules.json").exists():
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.05)
        modules = set(json.loads((tmp_path / "modules.json").read_text()))
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(30) == 0
    assert {"supervisor_tui.server.admin", "supervisor_tui.plugins.process", "fastapi"} <= modules
    loaded = sorted(m for m in modules if m.split(".")[0] in TUI_ONLY or m.startswith("supervisor_tui.tui"))
    assert loaded == []
    modules.discard("httpx._main")  # not a module: cli.py's None placeholder that keeps httpx's CLI from loading
    unused = sorted(m for m in modules if m.split(".")[0] in WHEN_USED or m.startswith("supervisor_tui.fleet"))
    assert unused == []
