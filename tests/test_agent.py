"""The console agent against a real server process: registration, id persistence, state changes, exec, outages."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import wait_until_sync
from fixtures.consoles.harness import ADMIN_TOKEN, server_process
from fixtures.ports import free_port

from supervisor_tui.agent.client import Agent, State

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
INTERVAL = "0.01"  # minutes: a heartbeat every 0.6 s keeps the tests short


def consoles(url: str) -> list[dict[str, Any]]:
    r = httpx.get(f"{url}/api/consoles?limit=1000", headers=ADMIN, timeout=5)
    r.raise_for_status()
    return list(r.json()["consoles"])


def one_console(url: str) -> dict[str, Any] | None:
    found = consoles(url)
    return found[0] if len(found) == 1 else None


class AgentProcess:
    """`supervisor-tui agent run` in its own process, output in a file."""

    def __init__(self, workdir: Path, url: str, *flags: str, **env: str) -> None:
        self.out = workdir / f"agent-{time.monotonic_ns()}.out"
        self.workdir = workdir
        e = {**os.environ, "API_BASE_URL": f"{url}/api", "HEARTBEAT_INTERVAL_MINUTES": INTERVAL, **env}
        with open(self.out, "wb") as f:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "supervisor_tui", "agent", "run", *flags],
                cwd=workdir,
                env=e,
                stdout=f,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def output(self) -> str:
        return self.out.read_text(encoding="utf-8", errors="replace")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(15)


@pytest.fixture
def agents() -> Iterator[list[AgentProcess]]:
    started: list[AgentProcess] = []
    yield started
    for a in started:
        if a.proc.poll() is None:
            a.proc.kill()
            a.proc.wait(10)


def cli(workdir: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    e = {k: v for k, v in os.environ.items() if k != "API_BASE_URL"} | env
    return subprocess.run(
        [sys.executable, "-m", "supervisor_tui", "agent", *args],
        cwd=workdir,
        env=e,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_agent_registers_keeps_its_id_and_reports_state_changes(tmp_path: Path, agents: list[AgentProcess]) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    work = tmp_path / "worker"
    work.mkdir()
    with server_process(tmp_path / "data", port):
        agent = AgentProcess(work, url)
        agents.append(agent)
        c = wait_until_sync(lambda: (x := one_console(url)) and x["heartbeats"] >= 2 and x)
        assert c["state"] == "idle"  # starts in idle
        assert c["system"]["hostname"] and c["system"]["cpus"] >= 1 and "python_version" in c["system"]
        assert "cpu_percent" in c["system"] and "total_memory" in c["system"] and "uptime" in c["system"]
        id_file = work / ".console-id"
        assert stat.S_IMODE(id_file.stat().st_mode) == 0o600
        kept = json.loads(id_file.read_text())
        assert kept["console_id"] == c["id"] and kept["token"]
        assert uuid.UUID(c["id"]).version == 4
        out = agent.output()
        assert "💓 HEARTBEAT SERVICE" in out and f"📋 Console ID: {c['id']}" in out
        assert "✅ Console registered" in out and "💓 Heartbeat sent - State: idle" in out

        # `agent state` reaches the running agent, which sends a heartbeat at once.
        r = cli(work, "state", "busy", "--job", "Video 1 (2/5)")
        assert r.returncode == 0, r.stderr
        c = one_console(url)
        assert c is not None and c["state"] == "busy" and c["current_job"] == "Video 1 (2/5)"
        r = cli(work, "state", "error", "--error", "disk full")
        assert r.returncode == 0, r.stderr
        c = one_console(url)
        assert c is not None and c["state"] == "error" and c["last_error"] == {"message": "disk full"}
        wait_until_sync(lambda: "💓 Heartbeat sent - State: busy (Video 1 (2/5))" in agent.output())
        assert "🔄 Console state: idle → busy" in agent.output()
        assert cli(work, "state", "sleeping").returncode == 2

        # `agent exec`: busy while the command runs, then idle, or error with the status and stderr's tail.
        r = cli(work, "exec", "--job", "render", "--", sys.executable, "-c", "print('done')")
        assert r.returncode == 0 and "done" in r.stdout
        c = one_console(url)
        assert c is not None and c["state"] == "idle" and c["current_job"] is None
        r = cli(work, "exec", "--job", "render", "--", "sh", "-c", "echo boom >&2; exit 3")
        assert r.returncode == 3 and "boom" in r.stderr
        c = one_console(url)
        assert c is not None and c["state"] == "error"
        assert c["last_error"]["exit_status"] == 3 and "boom" in c["last_error"]["stderr_tail"]
        assert "render exited with status 3" in c["last_error"]["message"]
        r = cli(work, "exec", "--", "no-such-command-here")
        assert r.returncode == 127
        trans = httpx.get(f"{url}/api/consoles/{c['id']}/transitions?limit=20", headers=ADMIN).json()["transitions"]
        assert [t["to"] for t in reversed(trans)][-7:] == ["error", "busy", "idle", "busy", "error", "busy", "error"]

        # Restarted, the agent is the same console: same id, re-registered with its token.
        assert agent.stop() == 0
        seen = one_console(url)
        assert seen is not None
        again = AgentProcess(work, url)
        agents.append(again)
        wait_until_sync(lambda: (x := one_console(url)) and x["heartbeats"] > seen["heartbeats"])
        assert len(consoles(url)) == 1 and json.loads(id_file.read_text())["console_id"] == seen["id"]
        assert again.stop() == 0

        # With no agent running, `exec` reports with an agent of its own (same id from .console-id).
        r = cli(work, "exec", "--job", "solo", "--", "true", API_BASE_URL=f"{url}/api")
        assert r.returncode == 0, r.stderr
        c = one_console(url)
        assert c is not None and c["id"] == seen["id"] and c["state"] == "idle"


def test_agent_rides_out_server_outages_restarts_and_a_server_that_forgot_it(
    tmp_path: Path, agents: list[AgentProcess]
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    work = tmp_path / "worker"
    work.mkdir()
    agent = AgentProcess(work, url)  # the server is not up yet
    agents.append(agent)
    wait_until_sync(lambda: "Could not send heartbeat" in agent.output())
    time.sleep(1.5)  # the outage lasts a while: several retries (every <= 0.6 s here)
    assert agent.proc.poll() is None
    with server_process(tmp_path / "data", port) as server:
        c = wait_until_sync(lambda: one_console(url))
        out = wait_until_sync(lambda: "Server reachable again" in (o := agent.output()) and o)
        assert out.count("Could not send heartbeat") == 1  # once per outage, not once per try
        failed = int(out.split("Server reachable again after ")[1].split()[0])
        assert failed >= 2
        beats = c["heartbeats"]
        # Server restart (graceful): the agent carries on with the same registration.
        server.send_signal(signal.SIGTERM)
        server.wait(15)
    with server_process(tmp_path / "data", port):
        wait_until_sync(lambda: (x := one_console(url)) and x["heartbeats"] > beats + 1)
        assert agent.output().count("Could not send heartbeat") <= 2
    # A different database: the server has never heard of this console (404), so the agent registers again.
    with server_process(tmp_path / "other-data", port):
        c2 = wait_until_sync(lambda: (x := one_console(url)) and x["heartbeats"] >= 1 and x)
        assert c2["id"] == c["id"]
    assert agent.proc.poll() is None
    assert agent.stop() == 0


def test_agent_speaks_seed_004_to_a_tokenless_server(tmp_path: Path, agents: list[AgentProcess]) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with server_process(tmp_path / "data", port, "--auth", "none"):
        agent = AgentProcess(tmp_path, url, "--dialect", "es", CONSOLE_ID="consola-7")
        agents.append(agent)
        c = wait_until_sync(lambda: (x := one_console(url)) and x["heartbeats"] >= 1 and x)
        assert c["id"] == "consola-7" and c["name"].startswith("Consola ")
        assert "totalMemory" in c["system"] and "freeMemory" in c["system"] and "pythonVersion" in c["system"]
        r = cli(tmp_path, "state", "ocupada", "--job", "Video Historia 1 (2/5)")
        assert r.returncode == 0, r.stderr
        out = wait_until_sync(lambda: "Heartbeat enviado - Estado: ocupada" in (o := agent.output()) and o)
        for line in (
            "💓 SERVICIO DE HEARTBEAT",
            "📋 Console ID: consola-7",
            f"🌐 API Base URL: {url}/api",
            "⏱️  Intervalo: cada 0.01 minuto(s)",
            "✅ Consola registrada exitosamente",
            "✅ Servicio de heartbeat iniciado",
            "🔄 Estado de consola: esperando → ocupada",
            "💓 Heartbeat enviado - Estado: ocupada (Video Historia 1 (2/5))",
        ):
            assert line in out
        assert agent.stop() == 0


def test_agent_without_api_base_url_says_heartbeat_is_disabled(tmp_path: Path) -> None:
    r = cli(tmp_path, "run")
    assert r.returncode == 2
    assert r.stderr.strip() == (
        "supervisor-tui agent: API_BASE_URL is not set: heartbeat is disabled "
        "(set it, e.g. API_BASE_URL=http://localhost:4000/api)"
    )
    r = cli(tmp_path, "run", "--dialect", "es")
    assert r.returncode == 2 and "API_BASE_URL no configurado" in r.stderr
    r = cli(tmp_path, "run", "--interval-minutes", "soon", API_BASE_URL="http://127.0.0.1:9/api")
    assert r.returncode == 2 and "HEARTBEAT_INTERVAL_MINUTES" in r.stderr
    assert "Traceback" not in r.stderr


def test_python_api_for_worker_code(tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with server_process(tmp_path / "data", port, "--enrollment-token", "join"):
        refused = Agent(f"{url}/api", state_dir=tmp_path / "a", interval_minutes=0.01, echo=None)
        with refused:
            assert refused.set_state(State.BUSY, current_job="x", wait=10) is False
            assert "enrollment" in refused.last_result
        assert consoles(url) == []

        agent = Agent(f"{url}/api", state_dir=tmp_path / "b", interval_minutes=10, enrollment_token="join", echo=None)
        with agent:
            assert agent.set_state(State.BUSY, current_job="Video 1 (2/5)", wait=10)
            c = one_console(url)
            assert c is not None and c["id"] == agent.console_id
            assert c["state"] == "busy" and c["current_job"] == "Video 1 (2/5)"
            try:
                raise ValueError("codec missing")
            except ValueError as exc:
                assert agent.set_error(exc, wait=10)
            c = one_console(url)
            assert c is not None and c["state"] == "error"
            assert c["last_error"] == {"message": "codec missing", "type": "ValueError"}
            assert agent.set_state("idle", wait=10)
        assert json.loads((tmp_path / "b" / ".console-id").read_text())["console_id"] == agent.console_id
