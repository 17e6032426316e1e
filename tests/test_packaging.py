"""A bare `pip install supervisor-tui` (no extras) gives a working program: the project is installed from a clean
copy of its sources into a fresh virtualenv (once per run, with pip's cache), every module of the package imports
there, and `supervisor-tui --headless` starts in an empty directory, answers /health and /ready, and exits 0 on
SIGTERM. An import of something the package does not declare fails here, where the dev virtualenv (which has every
tool's dependencies) would hide it."""

from __future__ import annotations

import json
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import REPO, wait_until_sync

INSTALL_TIMEOUT = 300  # a cold pip cache downloads every dependency once


@pytest.fixture(scope="session")
def bare_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A virtualenv with the project installed as a user would: `pip install .`, no extras, not editable."""
    root = tmp_path_factory.mktemp("bare")
    # Only what the package is built from: a stale build/ or egg-info in the checkout cannot leak into the wheel.
    source = root / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, source / name)
    shutil.copytree(REPO / "supervisor_tui", source / "supervisor_tui", ignore=shutil.ignore_patterns("__pycache__"))
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    # This checkout's pip installs into the new environment (pip --python): no pip bootstrap, one shared cache.
    pip = [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "--disable-pip-version-check"]
    done = subprocess.run(
        [*pip, "install", "--quiet", str(source)], capture_output=True, text=True, timeout=INSTALL_TIMEOUT
    )
    assert done.returncode == 0, f"pip install . failed:\n{done.stdout}\n{done.stderr}"
    return venv


IMPORT_EVERY_MODULE = """
import importlib, pkgutil, sys, supervisor_tui
failed = []
for module in pkgutil.walk_packages(supervisor_tui.__path__, "supervisor_tui."):
    if module.name.rsplit(".", 1)[-1] == "__main__":  # running it starts the program
        continue
    try:
        importlib.import_module(module.name)
    except Exception as exc:
        failed.append(f"{module.name}: {type(exc).__name__}: {exc}")
print(supervisor_tui.__file__)
print("\\n".join(failed))
sys.exit(1 if failed else 0)
"""


def test_every_module_imports_without_the_extras(bare_venv: Path, tmp_path: Path) -> None:
    done = subprocess.run(
        [str(bare_venv / "bin" / "python"), "-c", IMPORT_EVERY_MODULE],
        cwd=tmp_path,  # not the checkout: the installed package is the one imported
        capture_output=True,
        text=True,
        timeout=120,
    )
    where, _, failed = done.stdout.partition("\n")
    assert Path(where).is_relative_to(bare_venv), where
    assert done.returncode == 0, f"modules that do not import with the declared dependencies:\n{failed}{done.stderr}"


class Program:
    """The installed console script as a child process; its JSON log lines arrive on a queue."""

    def __init__(self, args: list[str], cwd: Path) -> None:
        self.proc = subprocess.Popen(
            args, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        self.records: queue.Queue[dict[str, Any] | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                self.records.put(json.loads(line))
            except ValueError:
                continue
        self.records.put(None)  # stdout closed: the process is gone

    def wait_for_event(self, event: str, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                record = self.records.get(timeout=left)
            except queue.Empty:
                break
            if record is None:
                self.proc.wait(10)
                stderr = self.proc.stderr.read() if self.proc.stderr else ""
                raise AssertionError(f"exited with {self.proc.returncode} before {event!r}; stderr:\n{stderr}")
            if record.get("event") == event:
                return record
        raise AssertionError(f"no {event!r} within {timeout}s")


@pytest.fixture
def program() -> Iterator[list[Program]]:
    """Programs a test started; any still running at teardown is killed."""
    started: list[Program] = []
    yield started
    for p in started:
        if p.proc.poll() is None:
            p.proc.kill()
            p.proc.wait(10)


def test_headless_starts_answers_and_stops_without_the_extras(
    bare_venv: Path, tmp_path: Path, program: list[Program]
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    script = bare_venv / "bin" / "supervisor-tui"
    run = Program([str(script), "--headless", "--port", "0", "--log-format", "json"], cwd=empty)
    program.append(run)
    url = run.wait_for_event("api_listening", timeout=60)["url"]
    with httpx.Client(base_url=url, timeout=10) as client:
        assert client.get("/health").json() == {"status": "ok"}
        ready = wait_until_sync(lambda: (r := client.get("/ready")).status_code == 200 and r, 60)
        assert ready.json()["ready"] is True, ready.text
    run.proc.send_signal(signal.SIGTERM)
    try:
        code = run.proc.wait(60)
    except subprocess.TimeoutExpired:
        pytest.fail("supervisor-tui --headless did not exit within 60 s of SIGTERM")
    assert code == 0, run.proc.stderr.read() if run.proc.stderr else ""
