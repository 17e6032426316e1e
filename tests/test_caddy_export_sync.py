"""CaddyExport against a real Caddy, without a supervisor: bursts, an empty Caddy, settings.

The route table here is the gateway's real RouteTable, changed the way RouteSync changes it; Caddy is a real
``caddy run`` (fixtures/caddy) whose config the tests read back through its admin API.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import wait_until
from fixtures.caddy.harness import CaddyProcess
from fixtures.ports import free_port

from supervisor_tui.core.events import EventBus
from supervisor_tui.core.logs import LogHub
from supervisor_tui.server.caddy_config import caddy_server
from supervisor_tui.server.caddy_export import CaddyExport
from supervisor_tui.server.gateway import PluginRoute, RouteTable

pytestmark = pytest.mark.skipif(shutil.which("caddy") is None, reason="caddy is not installed (scripts/setup.sh)")


@pytest.fixture
def empty_caddy(tmp_path: Path) -> Iterator[CaddyProcess]:
    """A Caddy whose config is its admin API and nothing else (no apps, no http app, no servers)."""
    proc = CaddyProcess(tmp_path / "caddy")
    proc.start()
    yield proc
    proc.stop()


def _export(table: RouteTable, caddy: CaddyProcess, listen: str) -> tuple[CaddyExport, LogHub]:
    logs = LogHub(EventBus(), None)
    export = CaddyExport(
        table,
        admin_url=caddy.admin_url,
        server="supervisor-tui",
        listen=listen,
        self_url=lambda: "http://127.0.0.1:4000",
        logs=logs,
        check_interval=0.2,
    )
    return export, logs


def _route(key: str, available: bool = True) -> PluginRoute:
    return PluginRoute(key, "http://127.0.0.1:9", (("GET", "/hello"),), available=available)


async def test_an_empty_caddy_gets_the_http_app_and_the_server(empty_caddy: CaddyProcess) -> None:
    table = RouteTable([_route("one")])
    listen = f"127.0.0.1:{free_port()}"
    export, _ = _export(table, empty_caddy, listen)
    await export.start()
    try:
        await wait_until(lambda: export.status().ok is True, timeout=10)
        assert empty_caddy.server("supervisor-tui") == caddy_server([_route("one")], listen, "http://127.0.0.1:4000")
        assert export.status().writes == 1
        # The admin block it started with is still there: only apps/http/servers/<name> was written.
        assert empty_caddy.admin("GET", "/config/admin").json() == {"listen": f"127.0.0.1:{empty_caddy.admin_port}"}
    finally:
        await export.stop()


async def test_a_burst_of_changes_is_one_write(empty_caddy: CaddyProcess) -> None:
    table = RouteTable()
    export, _ = _export(table, empty_caddy, f"127.0.0.1:{free_port()}")
    await export.start()
    try:
        await wait_until(lambda: export.status().writes == 1, timeout=10)
        for i in range(50):  # fifty plugins come and change state in one go, as a reload does
            table.set(_route(f"p{i}", available=i % 2 == 0))
            export.changed()
        await wait_until(lambda: export.status().writes >= 2, timeout=10)
        assert len((empty_caddy.server("supervisor-tui") or {})["routes"]) == 50 + 6  # its own 3 + 3 for 404s
        # Later read-backs find Caddy in step: still the one write for the whole burst.
        seen = export.status().last_attempt_at or 0.0
        await wait_until(lambda: (export.status().last_attempt_at or 0.0) > seen, timeout=10)
        assert export.status().writes == 2
    finally:
        await export.stop()


def _run_cli(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "supervisor_tui", *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", **(env or {})},
    )


def test_export_caddy_without_a_listen_address_is_a_config_error(tmp_path: Path) -> None:
    r = _run_cli(tmp_path, "--headless", env={"SUPERVISOR_TUI_ROUTES_EXPORT": "caddy"})
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        "supervisor-tui: invalid setting routes.caddy_listen='' (from default): expected host:port of the server "
        "to own in Caddy (required with routes.export = caddy)"
    ]
    assert not (tmp_path / "data").exists()  # nothing started, nothing written


def test_config_shows_the_route_settings_with_the_admin_password_masked(tmp_path: Path) -> None:
    env = {
        "SUPERVISOR_TUI_ROUTES_EXPORT": "caddy",
        "SUPERVISOR_TUI_ROUTES_CADDY_LISTEN": "127.0.0.1:8080",
        "SUPERVISOR_TUI_ROUTES_CADDY_ADMIN": "http://ops:s3cret@127.0.0.1:2019",
    }
    r = _run_cli(tmp_path, "config", env=env)
    assert r.returncode == 0, r.stderr
    assert "s3cret" not in r.stdout
    lines = {line.split()[0]: line.split()[1] for line in r.stdout.splitlines()[1:]}
    assert lines["routes.export"] == "caddy"
    assert lines["routes.caddy_admin"] == "http://ops:***@127.0.0.1:2019"
    assert lines["routes.caddy_listen"] == "127.0.0.1:8080"
    assert lines["routes.caddy_server"] == "supervisor-tui"
    bad = _run_cli(tmp_path, "config", env={**env, "SUPERVISOR_TUI_ROUTES_CADDY_ADMIN": "http://ops:s3cret@h:port"})
    assert bad.returncode == 2 and "s3cret" not in bad.stderr and "routes.caddy_admin" in bad.stderr
