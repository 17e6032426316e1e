"""The shipped example plugins (plugins/echo, plugins/hasher) run under the supervisor and answer correctly."""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from conftest import REPO, open_supervisor

from supervisor_tui.config import Settings

pytestmark = pytest.mark.usefixtures("no_plugin_leftovers")


@pytest.fixture
def example_settings(make_settings: Callable[..., Settings], tmp_path: Path) -> Settings:
    plugins = tmp_path / "examples"
    shutil.copytree(REPO / "plugins", plugins, ignore=shutil.ignore_patterns("__pycache__"))
    return make_settings(**{"plugins.dir": str(plugins)})


async def test_echo_and_hasher(example_settings: Settings) -> None:
    async with open_supervisor(example_settings) as sup:
        await sup.start_all()
        echo, hasher = sup.plugin("echo"), sup.plugin("hasher")
        assert echo.state == hasher.state == "RUNNING" and echo.healthy and hasher.healthy
        body = b"hello \xe2\x9c\x93 world" * 1000
        async with httpx.AsyncClient(trust_env=False, timeout=10) as client:
            r = await client.post(f"{echo.upstream}/echo?x=1", content=b"ping", headers={"X-Test": "yes"})
            got = r.json()
            assert got["method"] == "POST" and got["path"] == "/echo" and got["body"] == "ping"
            assert got["query"] == {"x": ["1"]} and got["headers"]["X-Test"] == "yes"
            r = await client.get(f"{echo.upstream}/echo/abc")
            assert r.json()["path"] == "/echo/abc"
            r = await client.post(f"{hasher.upstream}/hash", content=body)
            assert r.json() == {
                "size": len(body),
                "sha256": hashlib.sha256(body).hexdigest(),
                "sha512": hashlib.sha512(body).hexdigest(),
            }
            r = await client.post(f"{hasher.upstream}/hash?algorithm=md5", content=b"x")
            assert r.json() == {"size": 1, "md5": hashlib.md5(b"x").hexdigest()}
            r = await client.post(f"{hasher.upstream}/hash?algorithm=rot13", content=b"x")
            assert r.status_code == 400 and r.json()["error"]["code"] == "unknown_algorithm"
        assert any("POST /echo" in rec.message for rec in sup.logs.tail("echo", 20))
