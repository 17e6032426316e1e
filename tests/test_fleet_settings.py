"""The fleet's settings: defaults, the Redis URL's password masked everywhere, the advertise URL rule."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from supervisor_tui.config import ConfigError, load_settings, masked_url


def test_defaults() -> None:
    s = load_settings(env={}, base_dir=Path("/nonexistent"))
    assert s.redis.url == "" and s.redis.dead_after == 60.0
    assert s.redis.heartbeat_interval == 30.0 and s.redis.default_host == "127.0.0.1"
    assert s.redis.announce is True and s.fleet.advertise_url == ""
    assert s.fleet.node  # the host name


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://user:pw@host:6379/0", "redis://user:***@host:6379/0"),
        ("rediss://:pw@host:6380", "rediss://:***@host:6380"),
        ("redis://host:6379/2", "redis://host:6379/2"),
        ("redis://user:p%40ss@host", "redis://user:***@host"),
    ],
)
def test_masked_url(url: str, shown: str) -> None:
    assert masked_url(url) == shown


@pytest.mark.parametrize("bad", ["http://host:6379", "redis://", "redis://host:notaport", "redis://host/db"])
def test_a_bad_redis_url_is_refused_without_its_password(bad: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(env={"SUPERVISOR_TUI_REDIS_URL": bad.replace("://", "://u:hunter2@")}, base_dir=Path("/x"))
    assert "redis.url" in str(info.value) and "hunter2" not in str(info.value)


def test_a_wildcard_bind_needs_an_advertise_url() -> None:
    env = {"SUPERVISOR_TUI_REDIS_URL": "redis://127.0.0.1:1/0", "SUPERVISOR_TUI_SERVER_HOST": "0.0.0.0"}
    with pytest.raises(ConfigError) as info:
        load_settings(env=env, base_dir=Path("/x"))
    assert "fleet.advertise_url" in str(info.value)
    ok = load_settings(env={**env, "SUPERVISOR_TUI_FLEET_ADVERTISE_URL": "http://10.0.0.5:4000/"}, base_dir=Path("/x"))
    assert ok.fleet.advertise_url == "http://10.0.0.5:4000"
    # Without Redis there is no fleet to advertise to.
    load_settings(env={"SUPERVISOR_TUI_SERVER_HOST": "0.0.0.0"}, base_dir=Path("/x"))


@pytest.mark.parametrize("bad", ["has space", "-leading", "x" * 65, "a/b"])
def test_a_bad_node_name_is_refused(bad: str) -> None:
    with pytest.raises(ConfigError, match=r"fleet\.node"):
        load_settings(env={"SUPERVISOR_TUI_FLEET_NODE": bad}, base_dir=Path("/x"))


def test_config_command_masks_the_password_and_startup_names_the_key(tmp_path: Path) -> None:
    env = {"SUPERVISOR_TUI_REDIS_URL": "redis://app:hunter2@127.0.0.1:6379/0", "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [sys.executable, "-m", "supervisor_tui", "config"], env=env, cwd=tmp_path, capture_output=True, text=True
    )
    assert out.returncode == 0 and "hunter2" not in out.stdout + out.stderr
    assert "redis://app:***@127.0.0.1:6379/0" in out.stdout
    env["SUPERVISOR_TUI_SERVER_HOST"] = "0.0.0.0"
    out = subprocess.run(
        [sys.executable, "-m", "supervisor_tui", "--headless"], env=env, cwd=tmp_path, capture_output=True, text=True
    )
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "fleet.advertise_url" in out.stderr
    assert "hunter2" not in out.stderr
