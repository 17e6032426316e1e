"""The console agent: registers this machine with a supervisor and keeps sending heartbeats (English or Spanish).

    agent = Agent("http://host:4000/api")          # API_BASE_URL, as the Spanish console clients set it
    agent.start()                                   # registers, then heartbeats every interval in a thread
    agent.set_state(State.BUSY, current_job="Video 1 (2/5)")   # sends a heartbeat at once
    agent.set_error(exc); agent.set_state(State.IDLE)
    agent.console_id; agent.stop()

The id (a UUID v4 unless given) and the console's token live in ``.console-id`` (mode 0600) in ``state_dir``,
so the id never changes between runs. When the server is down or slow the agent keeps going: it retries with
growing waits, says so once per outage, re-registers when the server has forgotten the console (404), and never
raises into the worker it runs in.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import socket
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, TextIO

import httpx
import psutil

from supervisor_tui.core.backoff import backoff_delay

ID_FILE = ".console-id"
DEFAULT_INTERVAL_MINUTES = 5.0
FIRST_BACKOFF = 1.0  # seconds before the first retry of a failed heartbeat, doubling each time
MAX_BACKOFF = 60.0


class State(StrEnum):
    """What a console reports (``inactive`` is decided by the server, never reported)."""

    ACTIVE = "active"
    BUSY = "busy"
    IDLE = "idle"
    ERROR = "error"


SPANISH = {State.ACTIVE: "activa", State.BUSY: "ocupada", State.IDLE: "esperando", State.ERROR: "error"}
FROM_ANY_WORD: dict[str, State] = {s.value: s for s in State} | {v: k for k, v in SPANISH.items()}


def parse_state(word: str) -> State:
    """A State from its English or Spanish word; ValueError names the allowed words."""
    try:
        return FROM_ANY_WORD[word.strip().lower()]
    except KeyError:
        allowed = ", ".join([*(s.value for s in State), *SPANISH.values()][:-1])
        raise ValueError(f"unknown state {word!r}: use one of {allowed}") from None


def iso_now(ts: float | None = None) -> str:
    t = time.time() if ts is None else ts
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t * 1000) % 1000:03d}Z"


def system_info(spanish: bool) -> dict[str, Any]:
    """Host facts for the heartbeat (the Spanish console API's ``sistema`` keys in the Spanish dialect)."""
    vm = psutil.virtual_memory()
    try:
        load: list[float] | None = [round(x, 2) for x in os.getloadavg()]
    except (OSError, AttributeError):
        load = None
    facts = {
        "hostname": socket.gethostname(),
        "platform": sys.platform,
        "arch": platform.machine(),
        "cpus": os.cpu_count() or 1,
        "total_memory": round(vm.total / 2**30, 1),
        "free_memory": round(vm.available / 2**30, 1),
        "uptime": int((time.time() - psutil.boot_time()) / 60),
        "python_version": platform.python_version(),
        "cpu_percent": psutil.cpu_percent(interval=None),
        "load_average": load,
    }
    if not spanish:
        return facts
    names = {
        "total_memory": "totalMemory",
        "free_memory": "freeMemory",
        "python_version": "pythonVersion",
        "cpu_percent": "cpuPercent",
        "load_average": "loadAverage",
    }
    return {names.get(k, k): v for k, v in facts.items()}


@dataclass
class Identity:
    """What ``.console-id`` keeps."""

    console_id: str
    token: str | None = None


def load_identity(state_dir: Path) -> Identity | None:
    """Read ``.console-id``: JSON with the token, or the bare id the Spanish console clients write."""
    try:
        text = (state_dir / ID_FILE).read_text(encoding="utf-8").strip()
    except (FileNotFoundError, NotADirectoryError):
        return None
    if not text:
        return None
    if text.startswith("{"):
        try:
            data = json.loads(text)
            return Identity(str(data["console_id"]), data.get("token") or None)
        except (ValueError, KeyError, TypeError):
            return None
    return Identity(text.splitlines()[0].strip())


def save_identity(state_dir: Path, identity: Identity) -> None:
    """Write ``.console-id`` atomically with mode 0600 (it holds the console's token)."""
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / ID_FILE
    tmp = state_dir / f"{ID_FILE}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump({"console_id": identity.console_id, "token": identity.token}, f)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


class _Text:
    """The agent's lines, in Spanish or in English."""

    def __init__(self, spanish: bool) -> None:
        self.es = spanish

    def word(self, state: State) -> str:
        return SPANISH[state] if self.es else state.value

    def banner(self, console_id: str, base: str, minutes: float) -> str:
        rule = "=" * 80
        m = f"{minutes:g}"
        if self.es:
            return (
                f"💓 SERVICIO DE HEARTBEAT\n{rule}\n📋 Console ID: {console_id}\n🌐 API Base URL: {base}\n"
                f"⏱️  Intervalo: cada {m} minuto(s)\n{rule}\n"
            )
        return (
            f"💓 HEARTBEAT SERVICE\n{rule}\n📋 Console ID: {console_id}\n🌐 API Base URL: {base}\n"
            f"⏱️  Interval: every {m} minute(s)\n{rule}\n"
        )


class Agent:
    """Registers a console and sends its heartbeats from a background thread (see the module docstring)."""

    def __init__(
        self,
        api_base_url: str,
        console_id: str | None = None,
        interval_minutes: float = DEFAULT_INTERVAL_MINUTES,
        state_dir: str | Path = ".",
        name: str | None = None,
        dialect: str = "en",
        enrollment_token: str | None = None,
        echo: TextIO | None = sys.stdout,
        timeout: float = 10.0,
    ) -> None:
        if dialect not in ("en", "es"):
            raise ValueError(f"dialect must be 'en' or 'es', not {dialect!r}")
        self.base = api_base_url.rstrip("/")
        self.interval = max(0.01, float(interval_minutes) * 60.0)
        self.interval_minutes = float(interval_minutes)
        self.state_dir = Path(state_dir)
        self.spanish = dialect == "es"
        self.enrollment_token = enrollment_token or None
        self.echo = echo
        self.timeout = timeout
        self._text = _Text(self.spanish)
        stored = load_identity(self.state_dir)
        if console_id:
            token = stored.token if stored and stored.console_id == console_id else None
            self._identity = Identity(console_id, token)
        elif stored is not None:
            self._identity = stored
        else:
            self._identity = Identity(str(uuid.uuid4()))
        if stored is None or stored != self._identity:
            save_identity(self.state_dir, self._identity)
        host = socket.gethostname()
        self.name = name or (f"Consola {host}" if self.spanish else f"Console {host}")
        self._lock = threading.Lock()
        self._state = State.IDLE
        self._job: str | None = None
        self._error: Any = None
        self._last_activity = time.time()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._registered = False
        self._started_said = False
        self._failures = 0
        self._sent_seq = 0  # bumped after every heartbeat attempt, for callers waiting on delivery
        self._want_seq = 0
        self._delivered = threading.Condition(self._lock)
        self.heartbeats_sent = 0
        self.last_result: str = ""

    # -- public API --------------------------------------------------------------------------------------
    @property
    def console_id(self) -> str:
        return self._identity.console_id

    @property
    def state(self) -> State:
        return self._state

    def start(self) -> Agent:
        """Print the banner and start the heartbeat thread (registration happens there, retried until it works)."""
        if self._thread is not None:
            return self
        self._say(self._text.banner(self.console_id, self.base, self.interval_minutes))
        psutil.cpu_percent(interval=None)  # prime: the first reading of cpu_percent is always 0
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name="console-agent", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the heartbeat thread (no further heartbeats)."""
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def __enter__(self) -> Agent:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def set_state(
        self,
        state: State | str,
        current_job: str | None = None,
        error: Any = None,
        wait: float | None = None,
    ) -> bool:
        """Change the reported state and send a heartbeat at once.

        ``wait`` seconds: block until that heartbeat was attempted; returns whether it was accepted.
        """
        new = state if isinstance(state, State) else parse_state(state)
        with self._lock:
            old = self._state
            self._state = new
            self._job = current_job if new is State.BUSY else None
            self._error = error if new is State.ERROR else None
            self._last_activity = time.time()
            self._want_seq = self._sent_seq + 1
            target = self._want_seq
        if old is not new:
            word = self._text.word
            self._say(
                f"🔄 Estado de consola: {word(old)} → {word(new)}"
                if self.spanish
                else f"🔄 Console state: {word(old)} → {word(new)}"
            )
        self._wake.set()
        if wait is None:
            return True
        deadline = time.monotonic() + wait
        with self._delivered:
            while self._sent_seq < target:
                left = deadline - time.monotonic()
                if left <= 0 or self._thread is None:
                    return False
                self._delivered.wait(left)
        return self.last_result == "ok"

    def set_error(self, exc: BaseException | str, wait: float | None = None) -> bool:
        """Report the ERROR state with this exception (or message) as the last error."""
        if isinstance(exc, BaseException):
            detail: Any = {"message": str(exc) or type(exc).__name__, "type": type(exc).__name__}
        else:
            detail = {"message": str(exc)}
        return self.set_state(State.ERROR, error=detail, wait=wait)

    # -- the thread ------------------------------------------------------------------------------------------
    def _run(self) -> None:
        with httpx.Client(timeout=self.timeout) as client:
            failures = 0  # attempts in a row that failed
            while not self._stopping.is_set():
                with self._lock:
                    seq = self._want_seq  # the state changes this attempt covers
                try:
                    ok = self._beat(client)
                except Exception as exc:  # never let a bug end the heartbeats of a running worker
                    ok = False
                    self._outage(f"{type(exc).__name__}: {exc}")
                with self._delivered:
                    self._sent_seq = max(self._sent_seq, seq)
                    self._delivered.notify_all()
                if ok:
                    failures = 0
                    wait = self.interval
                else:
                    wait = min(backoff_delay(failures, FIRST_BACKOFF, MAX_BACKOFF), self.interval)
                    failures += 1
                self._wake.wait(wait)
                self._wake.clear()

    def _beat(self, client: httpx.Client) -> bool:
        if not self._registered and not self._register(client):
            return False
        with self._lock:
            state, job, error, activity = self._state, self._job, self._error, self._last_activity
        if self.spanish:
            url = f"{self.base}/consolas/{self.console_id}/heartbeat"
            body: dict[str, Any] = {
                "estado": SPANISH[state],
                "sistema": system_info(True),
                "ultimaActividad": iso_now(activity),
                "ultimoError": error,
                "videoEnProceso": job,
            }
        else:
            url = f"{self.base}/consoles/{self.console_id}/heartbeat"
            body = {
                "state": state.value,
                "system": system_info(False),
                "last_activity": iso_now(activity),
                "last_error": error,
                "current_job": job,
            }
        r = self._post(client, url, body)
        if r is None:
            return False
        if r.status_code == 404 or r.status_code in (401, 403):
            # The server forgot this console (database reset, console removed) or no longer knows our token.
            self._registered = False
            if not self._register(client):
                return False
            r = self._post(client, url, body)
            if r is None:
                return False
        if r.status_code >= 300:
            self._outage(f"HTTP {r.status_code}: {_message(r)}")
            return False
        self._recovered()
        self.heartbeats_sent += 1
        word = self._text.word(state)
        suffix = f" ({job})" if job else ""
        self._say(
            f"💓 Heartbeat enviado - Estado: {word}{suffix}"
            if self.spanish
            else f"💓 Heartbeat sent - State: {word}{suffix}"
        )
        self.last_result = "ok"
        return True

    def _register(self, client: httpx.Client) -> bool:
        with self._lock:
            state, activity = self._state, self._last_activity
        if self.spanish:
            url = f"{self.base}/consolas/registrar"
            body: dict[str, Any] = {
                "id": self.console_id,
                "nombre": self.name,
                "estado": SPANISH[state],
                "sistema": system_info(True),
                "ultimaActividad": iso_now(activity),
            }
        else:
            url = f"{self.base}/consoles/register"
            body = {
                "id": self.console_id,
                "name": self.name,
                "state": state.value,
                "system": system_info(False),
                "last_activity": iso_now(activity),
            }
        r = self._post(client, url, body, enrollment=True)
        if r is None:
            return False
        if r.status_code >= 300:
            self._outage(f"registration refused, HTTP {r.status_code}: {_message(r)}")
            return False
        token = None
        with contextlib.suppress(ValueError, KeyError, TypeError, AttributeError):
            token = r.json().get("token")
        if token and token != self._identity.token:
            self._identity = Identity(self.console_id, str(token))
            try:
                save_identity(self.state_dir, self._identity)
            except OSError as exc:
                self._say(f"⚠️  cannot save {self.state_dir / ID_FILE}: {exc}")
        self._registered = True
        self._recovered()
        self._say("✅ Consola registrada exitosamente" if self.spanish else "✅ Console registered")
        if not self._started_said:
            self._started_said = True
            self._say("✅ Servicio de heartbeat iniciado\n" if self.spanish else "✅ Heartbeat service started\n")
        return True

    def _post(self, client: httpx.Client, url: str, body: dict[str, Any], enrollment: bool = False) -> Any:
        headers = {}
        if self._identity.token:
            headers["Authorization"] = f"Bearer {self._identity.token}"
        if enrollment and self.enrollment_token:
            headers["X-Enrollment-Token"] = self.enrollment_token
        try:
            return client.post(url, json=body, headers=headers)
        except httpx.HTTPError as exc:
            self._outage(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
            return None

    # -- output ----------------------------------------------------------------------------------------------
    def _outage(self, why: str) -> None:
        """Say it once per outage, not once per try."""
        self.last_result = why
        self._failures += 1
        if self._failures == 1:
            self._say(
                f"⚠️  No se pudo enviar heartbeat: {why} (reintentando)"
                if self.spanish
                else f"⚠️  Could not send heartbeat: {why} (retrying with backoff)"
            )

    def _recovered(self) -> None:
        if self._failures:
            n, self._failures = self._failures, 0
            self._say(
                f"✅ Servidor disponible de nuevo ({n} intento(s) fallido(s))"
                if self.spanish
                else f"✅ Server reachable again after {n} failed attempt(s)"
            )

    def _say(self, line: str) -> None:
        if self.echo is None:
            return
        try:
            self.echo.write(line.rstrip("\n") + "\n")
            self.echo.flush()
        except (OSError, ValueError):
            pass


def _message(r: httpx.Response) -> str:
    try:
        return str(r.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return r.text[:200]
