"""Process supervision under faults, with a real headless supervisor: no plugins folder, signals at awkward
moments, slow orphans of a killed supervisor, plugins that escape their process group, few file descriptors."""

from __future__ import annotations

import json
import signal
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import HeadlessProcess, wait_until

from supervisor_tui.config import Settings

pytestmark = pytest.mark.usefixtures("no_plugin_leftovers")

Headless = Callable[..., HeadlessProcess]

ENV_DUMP = """\
import json, os, time
with open("env.json.tmp", "w") as f:
    json.dump(dict(os.environ), f)
os.replace("env.json.tmp", "env.json")
while True:
    time.sleep(3600)
"""


async def test_sigterm_without_a_plugins_folder_exits_0(
    headless: Headless, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = make_settings(plugins_dir=str(tmp_path / "no-such-folder"))
    proc = headless(settings_=settings)
    await proc.wait_for(lambda r: r.get("event") == "api_listening")
    proc.signal(signal.SIGTERM)
    assert await proc.wait(timeout=20) == 0
    assert not (tmp_path / "no-such-folder").exists()


async def test_plugins_do_not_inherit_the_supervisors_settings(
    headless: Headless, make_plugin: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    secrets = {
        "SUPERVISOR_TUI_AUTH_ADMIN_TOKEN": "admin-secret-1234567890",
        "SUPERVISOR_TUI_AUTH_PLUGIN_TOKEN": "plugin-secret-1234567890",
        "SUPERVISOR_TUI_CONSOLES_ENROLLMENT_TOKEN": "enroll-secret-1234567890",
    }
    for name, value in secrets.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("UNRELATED_VARIABLE", "kept")
    folder = make_plugin("envy", ENV_DUMP, env={"FROM_MANIFEST": "yes"})
    proc = headless()
    await proc.wait_state("envy", "RUNNING")
    env = await wait_until(lambda: (folder / "env.json").exists() and json.loads((folder / "env.json").read_text()))
    assert not [k for k in env if k.startswith("SUPERVISOR_TUI_")]
    assert not [k for k, v in env.items() if any(secret in v for secret in secrets.values())]
    assert env["UNRELATED_VARIABLE"] == "kept" and env["FROM_MANIFEST"] == "yes"
    assert env["SUPERVISOR_URL"].startswith("http://127.0.0.1:") and env["PLUGIN_KEY"] == "envy" and env["PORT"]
    proc.signal(signal.SIGTERM)
    assert await proc.wait() == 0
