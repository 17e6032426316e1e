"""Plugins of a headless supervisor start while its HTTP surface loads, and still get its real API URL."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

PLUGIN = """\
import os, time
with open("url.tmp", "w") as f:
    f.write(os.environ["SUPERVISOR_URL"])
os.replace("url.tmp", "url")
time.sleep(3600)
"""


def test_plugins_started_before_the_server_serves_get_the_bound_api_url(tmp_path: Path) -> None:
    folder = tmp_path / "plugins" / "early"
    folder.mkdir(parents=True)
    (folder / "plugin.py").write_text(PLUGIN)
    manifest = {"key": "early", "command": [sys.executable, "plugin.py"], "startsecs": 0.2}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    args = [sys.executable, "-m", "supervisor_tui", "--headless", "--port", "0", "--log-format", "json"]
    args += ["--plugins-dir", str(tmp_path / "plugins"), "--data-dir", str(tmp_path / "data")]
    proc = subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None
        api_url, running = "", False
        for line in proc.stdout:
            record = json.loads(line)
            if record.get("event") == "api_listening":
                api_url = record["url"]
            if record.get("plugin") == "early" and record.get("to") == "RUNNING":
                running = True
            if api_url and running:
                break
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    assert not api_url.endswith(":0")
    assert (folder / "url").read_text() == api_url
