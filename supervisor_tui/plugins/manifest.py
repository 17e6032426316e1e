"""manifest.json parsing and validation: one plugin folder -> one ``Manifest``, or a ``ManifestError``.

Every problem names the file, the field and what is wrong, so an operator can fix it without reading code.
Checks that need every manifest at once (unique keys, known dependencies, no cycles) live in ``check_graph``.
"""

from __future__ import annotations

import json
import re
import signal
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from supervisor_tui.config import parse_duration, parse_size

MANIFEST_FILE = "manifest.json"
KEY_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS")
RESTART_POLICIES = ("on-failure", "always", "never")
# Set by the supervisor for every plugin process; a manifest or an override may not set them.
RESERVED_ENV = ("PORT", "PLUGIN_KEY", "SUPERVISOR_URL")
# Names a plugin key may not take: the supervisor's own log source, and the literal admin routes beside
# /api/v1/plugins/{key} (a plugin called "install" could not be read at /api/v1/plugins/install).
RESERVED_KEYS = {
    "supervisor": "the supervisor's own log source",
    "install": "an admin route, POST /api/v1/plugins/install",
    "register": "an admin route, POST /api/v1/plugins/register",
}
# A command starting with one of these runs with the supervisor's own interpreter (sys.executable).
PYTHON_NAMES = ("python", "python3")
# An in-process plugin's entry point: a module path (dotted, relative to the folder) and a class name.
MODULE_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$")
_PATH_SEGMENT = re.compile(r"^(\{[A-Za-z_][A-Za-z0-9_]*\}|[A-Za-z0-9._~!$&'()*+,;=:@%-]*)$")


class ManifestError(Exception):
    """A manifest (or a field of it) is not acceptable: which file, which field, what is wrong."""

    def __init__(self, path: Path | str, field: str, problem: str) -> None:
        self.path, self.field, self.problem = str(path), field, problem
        where = f"{self.path}: " if self.path else ""
        super().__init__(f"{where}{field}: {problem}" if field else f"{where}{problem}")


def check_key_not_reserved(path: Path | str, key: str) -> None:
    """Raise ManifestError when ``key`` is one the supervisor keeps for itself (``RESERVED_KEYS``)."""
    if key in RESERVED_KEYS:
        raise ManifestError(path, "key", f"{key!r} is reserved ({RESERVED_KEYS[key]}); choose another key")


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One route a plugin serves; ``path`` may hold ``{param}`` segments."""

    method: str
    path: str
    description: str = ""


@dataclass(frozen=True, slots=True)
class HealthCheck:
    """Active health probing: GET ``path`` every ``interval_s``; ``failures`` in a row = unhealthy."""

    path: str
    interval_s: float = 10.0
    timeout_s: float = 2.0
    failures: int = 3
    start_timeout_s: float = 60.0  # STARTING gives up (counts as a failed start) when never healthy by then
    restart: bool = False  # restart the plugin when it turns unhealthy


@dataclass(frozen=True, slots=True)
class Manifest:
    """A validated plugin manifest; ``folder`` is where the command runs."""

    key: str
    command: tuple[str, ...]
    folder: Path
    path: Path
    name: str = ""
    version: str = "0.0.0"
    description: str = ""
    env: Mapping[str, str] = field(default_factory=dict)
    port: int | None = None
    endpoints: tuple[Endpoint, ...] = ()
    health: HealthCheck | None = None
    autostart: bool = True
    restart: str = "on-failure"
    startsecs: float = 1.0
    startretries: int = 3
    backoff_max_s: float = 30.0
    stopsignal: str = "TERM"
    stopwaitsecs: float = 10.0
    depends_on: tuple[str, ...] = ()
    timeout: float | None = None  # gateway: upstream response timeout (None = the gateway's default)
    max_body: int | None = None  # gateway: largest request body (None = the gateway's default)
    module: str | None = None  # in-process plugin: "file:Class" in the folder (then there is no command)
    config: Mapping[str, Any] = field(default_factory=dict)  # in-process plugin: passed to initialize()

    @property
    def stop_signal(self) -> signal.Signals:
        return signal.Signals[f"SIG{self.stopsignal}"]

    def argv(self) -> list[str]:
        """The command to execute: "python"/"python3" first means this supervisor's own interpreter."""
        argv = list(self.command)
        if argv and argv[0] in PYTHON_NAMES:
            argv[0] = sys.executable
        return argv


# -- field parsers: each returns the parsed value or raises ValueError with the problem -----------------------


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"must be a string, got {_kind(value)}")
    return value


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"must be true or false, got {_kind(value)}")
    return value


def _int(lo: int, hi: int) -> Any:
    def parse(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"must be an integer, got {_kind(value)}")
        if not lo <= value <= hi:
            raise ValueError(f"must be between {lo} and {hi}, got {value}")
        return value

    return parse


def _seconds(lo: float, hi: float) -> Any:
    def parse(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise ValueError(f'must be a number of seconds or a duration like "5s", got {_kind(value)}')
        try:
            seconds = parse_duration(value)
        except ValueError:
            raise ValueError(f'must be a number of seconds or a duration like "5s", got {value!r}') from None
        if not lo <= seconds <= hi:
            raise ValueError(f"must be between {lo:g} and {hi:g} seconds, got {seconds:g}")
        return seconds

    return parse


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    return {
        bool: "a boolean",
        int: "a number",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "an object",
    }.get(type(value), type(value).__name__)


def _command(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise ValueError('must be a non-empty list of strings (argv), e.g. ["python", "server.py"]')
    if not all(isinstance(a, str) for a in value) or not value[0]:
        raise ValueError("must be a list of strings with a non-empty program first")
    if any("\x00" in a for a in value):
        raise ValueError("must not contain NUL characters")
    return tuple(value)


def parse_env(value: Any) -> dict[str, str]:
    """An environment mapping: names like shell variables, string values, no supervisor-reserved names."""
    if not isinstance(value, dict):
        raise ValueError(f'must be an object of NAME: "value" strings, got {_kind(value)}')
    out: dict[str, str] = {}
    for name, v in value.items():
        if not ENV_NAME.match(name):
            raise ValueError(f"{name!r} is not a valid variable name")
        if name in RESERVED_ENV:
            raise ValueError(f"{name} is set by the supervisor and cannot be overridden")
        if not isinstance(v, str):
            raise ValueError(f"{name} must be a string, got {_kind(v)}")
        if "\x00" in v:
            raise ValueError(f"{name} must not contain NUL characters")
        out[name] = v
    return out


def _port(value: Any) -> int | None:
    if value is None:
        return None
    return int(_int(1, 65535)(value))


def parse_endpoints(value: Any) -> tuple[Endpoint, ...]:
    if not isinstance(value, list):
        raise ValueError(f"must be a list of {{method, path, description}}, got {_kind(value)}")
    out: list[Endpoint] = []
    seen: set[tuple[str, str]] = set()
    for i, item in enumerate(value):
        if not isinstance(item, dict):
            raise ValueError(f"[{i}] must be an object {{method, path, description}}, got {_kind(item)}")
        unknown = sorted(set(item) - {"method", "path", "description"})
        if unknown:
            raise ValueError(f"[{i}] has unknown field {unknown[0]!r} (allowed: method, path, description)")
        method = item.get("method")
        if not isinstance(method, str) or method.upper() not in METHODS:
            raise ValueError(f"[{i}].method must be one of {', '.join(METHODS)}, got {method!r}")
        path = item.get("path")
        if not isinstance(path, str) or not path.startswith("/"):
            raise ValueError(f"[{i}].path must be a string starting with '/', got {path!r}")
        if any(not _PATH_SEGMENT.match(seg) for seg in path[1:].split("/")):
            raise ValueError(f"[{i}].path {path!r} has an invalid segment (use plain segments or {{param}})")
        description = item.get("description", "")
        if not isinstance(description, str):
            raise ValueError(f"[{i}].description must be a string, got {_kind(description)}")
        ident = (method.upper(), path)
        if ident in seen:
            raise ValueError(f"[{i}] duplicates {method.upper()} {path}")
        seen.add(ident)
        out.append(Endpoint(method.upper(), path, description))
    return tuple(out)


_HEALTH_FIELDS: dict[str, Any] = {
    "path": _str,
    "interval_s": _seconds(0.05, 86400),
    "timeout_s": _seconds(0.05, 3600),
    "failures": _int(1, 1000),
    "start_timeout_s": _seconds(0.1, 86400),
    "restart": _bool,
}


def _health(value: Any) -> HealthCheck | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ValueError(f"must be an object {{path, interval_s, timeout_s, failures}} or null, got {_kind(value)}")
    kwargs: dict[str, Any] = {}
    for name, v in value.items():
        parse = _HEALTH_FIELDS.get(name)
        if parse is None:
            raise ValueError(f"has unknown field {name!r} (allowed: {', '.join(_HEALTH_FIELDS)})")
        try:
            kwargs[name] = parse(v)
        except ValueError as exc:
            raise ValueError(f".{name} {exc}") from None
    if "path" not in kwargs:
        raise ValueError('.path is required (e.g. "/health")')
    if not kwargs["path"].startswith("/"):
        raise ValueError(f".path must start with '/', got {kwargs['path']!r}")
    return HealthCheck(**kwargs)


def _restart(value: Any) -> str:
    if value not in RESTART_POLICIES:
        raise ValueError(f"must be one of {', '.join(RESTART_POLICIES)}, got {value!r}")
    return str(value)


def _stopsignal(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f'must be a signal name like "TERM" or "INT", got {_kind(value)}')
    name = value.upper().removeprefix("SIG")
    if name in ("KILL", "STOP") or not hasattr(signal.Signals, f"SIG{name}"):
        raise ValueError(f"must be a signal name like TERM, INT, QUIT, HUP, USR1 (not KILL/STOP), got {value!r}")
    return name


def _depends_on(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(k, str) for k in value):
        raise ValueError(f"must be a list of plugin keys, got {_kind(value)}")
    for k in value:
        if not KEY_PATTERN.match(k):
            raise ValueError(f"{k!r} is not a valid plugin key")
    return tuple(dict.fromkeys(value))


def _optional(parse: Any) -> Any:
    return lambda v: None if v is None else parse(v)


def _max_body(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f'must be a size like 10485760 or "10MiB", got {_kind(value)}')
    try:
        return parse_size(value)
    except ValueError:
        raise ValueError(f'must be a size like 10485760 or "10MiB", got {value!r}') from None


def _module(value: Any) -> str:
    if not isinstance(value, str) or not MODULE_PATTERN.match(value):
        raise ValueError(f'must name a module and a class like "plugin:StatsPlugin", got {value!r}')
    return value


def _config(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError(f"must be an object, got {_kind(value)}")
    return value


FIELDS: dict[str, Any] = {
    "name": _str,
    "version": _str,
    "description": _str,
    "command": _command,
    "env": parse_env,
    "port": _port,
    "endpoints": parse_endpoints,
    "health": _health,
    "autostart": _bool,
    "restart": _restart,
    "startsecs": _seconds(0, 3600),
    "startretries": _int(0, 1000),
    "backoff_max_s": _seconds(0, 86400),
    "stopsignal": _stopsignal,
    "stopwaitsecs": _seconds(0, 3600),
    "depends_on": _depends_on,
    "timeout": _optional(_seconds(0.001, 86400)),
    "max_body": _optional(_max_body),
    "module": _module,
    "config": _config,
}


def parse_manifest(data: Any, path: Path) -> Manifest:
    """Validate one manifest's content (already decoded JSON); ``path`` is its manifest.json (for errors)."""
    if not isinstance(data, dict):
        raise ManifestError(path, "", f"must be a JSON object, got {_kind(data)}")
    data = dict(data)
    if "id" in data:  # seed 003's name for the key
        if "key" in data:
            raise ManifestError(path, "id", "give either key or id (its alias), not both")
        data["key"] = data.pop("id")
    key = data.pop("key", None)
    if key is None:
        raise ManifestError(path, "key", "is required")
    if not isinstance(key, str) or not KEY_PATTERN.match(key):
        raise ManifestError(
            path, "key", f"must match {KEY_PATTERN.pattern} (lowercase letters, digits, - and _), got {key!r}"
        )
    check_key_not_reserved(path, key)
    if "module" in data:  # an in-process plugin runs inside the supervisor: no command
        if "command" in data:
            raise ManifestError(path, "command", "give either command (a process) or module (in-process), not both")
    elif "command" not in data:
        raise ManifestError(path, "command", 'is required (argv list, e.g. ["python", "server.py"])')
    kwargs: dict[str, Any] = {}
    for name in data:
        if name not in FIELDS:
            raise ManifestError(path, name, f"unknown field (allowed: key, {', '.join(FIELDS)})")
    for name, value in data.items():
        try:
            kwargs[name] = FIELDS[name](value)
        except ValueError as exc:
            raise _field_error(path, name, str(exc)) from None
    if key in kwargs.get("depends_on", ()):
        raise ManifestError(path, "depends_on", f"{key} cannot depend on itself")
    kwargs.setdefault("name", key)
    kwargs.setdefault("command", ())
    return Manifest(key=key, folder=path.parent, path=path, **kwargs)


def _field_error(path: Path, name: str, text: str) -> ManifestError:
    """A sub-field problem like "[2].method must be ..." names the sub-field: endpoints[2].method."""
    if text.startswith(("[", ".")) and " " in text:
        sub, problem = text.split(" ", 1)
        return ManifestError(path, name + sub, problem)
    return ManifestError(path, name, text)


def load_manifest(folder: Path) -> Manifest:
    """Read and validate ``folder/manifest.json``."""
    path = folder / MANIFEST_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ManifestError(path, "", "file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError(path, "", f"cannot be read: {exc}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ManifestError(path, "", f"is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    return parse_manifest(data, path)


@dataclass
class Discovery:
    """What a plugins folder holds: valid manifests by key, and rejected folders by key (or folder name)."""

    manifests: dict[str, Manifest] = field(default_factory=dict)
    invalid: dict[str, ManifestError] = field(default_factory=dict)


def discover(plugins_dir: Path, skip: Iterable[str] = ()) -> Discovery:
    """Load every ``plugins_dir/*/manifest.json``, then apply the checks that span all of them."""
    found = Discovery()
    skipped = set(skip)
    if not plugins_dir.is_dir():
        return found
    loaded: list[Manifest] = []
    broken: list[tuple[str, ManifestError]] = []  # (folder name, problem): keyed once the valid keys are known
    for folder in sorted(p for p in plugins_dir.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))):
        if not (folder / MANIFEST_FILE).exists():
            continue  # not a plugin folder (e.g. shared code)
        if folder.name in skipped:
            continue
        try:
            manifest = load_manifest(folder)
        except ManifestError as exc:
            broken.append((folder.name, exc))
            continue
        if manifest.key in skipped:
            continue
        loaded.append(manifest)
    by_key: dict[str, Manifest] = {}
    # On a duplicate key, the folder named after the key keeps it.
    for m in sorted(loaded, key=lambda m: (m.folder.name != m.key, m.folder.name)):
        if m.key in by_key:
            broken.append(
                (m.folder.name, ManifestError(m.path, "key", f"{m.key!r} is already used by {by_key[m.key].path}"))
            )
            continue
        by_key[m.key] = m
    for key, err in check_graph(by_key, rejected={name for name, _ in broken}).items():
        found.invalid[key] = err
        del by_key[key]
    for name, err in broken:  # a rejected folder is listed under its name, never under a key in use
        found.invalid[_invalid_key(name, found, by_key)] = err
    found.manifests = by_key
    return found


def _invalid_key(name: str, found: Discovery, taken: Mapping[str, object] = {}) -> str:
    key = name if KEY_PATTERN.match(name) else re.sub(r"[^a-z0-9_-]", "-", name.lower()).strip("-_")[:63] or "plugin"
    base, n = key, 2
    while key in found.invalid or key in taken or key in RESERVED_KEYS:
        key, n = f"{base}-{n}", n + 1
    return key


def check_graph(
    manifests: Mapping[str, Manifest], known: Iterable[str] = (), rejected: Iterable[str] = ()
) -> dict[str, ManifestError]:
    """Unknown dependencies and dependency cycles; a plugin depending on a rejected one is rejected too.

    ``known`` are keys of other plugins (e.g. external ones) that count as existing; ``rejected`` are keys of
    plugins already found invalid.
    """
    bad: dict[str, ManifestError] = {}
    already_bad = set(rejected)
    others = set(known)
    changed = True
    while changed:  # propagate: depending on a rejected plugin rejects the dependent
        changed = False
        for key, m in manifests.items():
            if key in bad:
                continue
            for dep in m.depends_on:
                if dep in bad or dep in already_bad:
                    bad[key] = ManifestError(m.path, "depends_on", f"dependency {dep!r} is invalid")
                elif dep not in manifests and dep not in others:
                    bad[key] = ManifestError(m.path, "depends_on", f"unknown plugin {dep!r}")
                else:
                    continue
                changed = True
                break
    # Cycles among the rest: depth-first search with colours.
    colour: dict[str, int] = {}

    def visit(key: str, trail: list[str]) -> None:
        colour[key] = 1
        for dep in manifests[key].depends_on:
            if dep not in manifests or dep in bad:
                continue
            if colour.get(dep) == 1:
                cycle = [*trail[trail.index(dep) :], dep] if dep in trail else [key, dep]
                for k in trail[trail.index(dep) :] if dep in trail else [key]:
                    bad.setdefault(
                        k, ManifestError(manifests[k].path, "depends_on", "dependency cycle: " + " -> ".join(cycle))
                    )
            elif colour.get(dep) is None:
                visit(dep, [*trail, dep])
        colour[key] = 2

    for key in sorted(manifests):
        if key not in bad and colour.get(key) is None:
            visit(key, [key])
    if bad:  # dependents of plugins rejected for cycles
        rest = {k: m for k, m in manifests.items() if k not in bad}
        for key, err in check_graph(rest, others, set(bad) | already_bad).items():
            bad.setdefault(key, err)
        for key, m in rest.items():
            if key not in bad and any(d in bad for d in m.depends_on):
                dep = next(d for d in m.depends_on if d in bad)
                bad[key] = ManifestError(m.path, "depends_on", f"dependency {dep!r} is invalid")
    return bad


def start_order(manifests: Mapping[str, Manifest]) -> list[str]:
    """Keys with every dependency before its dependents (ties by key); unknown dependencies are ignored."""
    order: list[str] = []
    done: set[str] = set()

    def visit(key: str, seen: frozenset[str]) -> None:
        if key in done or key in seen:
            return
        for dep in manifests[key].depends_on:
            if dep in manifests:
                visit(dep, seen | {key})
        done.add(key)
        order.append(key)

    for key in sorted(manifests):
        visit(key, frozenset())
    return order
