"""manifest.json parsing and validation: one plugin folder -> one ``Manifest``, or a ``ManifestError``.

- ``load_manifest(folder)``, ``parse_manifest(data, path)``: a validated ``Manifest`` (with ``HealthCheck`` and
  ``Endpoint`` values) or a ``ManifestError``. The fields, their types, defaults and rules are declared once in
  ``manifest_schema``; a valid file decodes at once with msgspec, and only a rejected one is walked field by
  field (in file order) to name its first problem.
- ``discover(plugins_dir)``: every plugin folder's manifest, valid ones by key and rejected ones apart.
- ``check_graph``: the checks that need every manifest at once (known dependencies, no cycles);
  ``start_order``: dependencies first.

Every problem names the file, the field and what is wrong, so an operator can fix it without reading code.
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

import msgspec
from msgspec import UNSET

from supervisor_tui.plugins.manifest_rules import checked, diagnose, field_value, fields_of, kind
from supervisor_tui.plugins.manifest_schema import (
    ENV_NAME,
    KEY_PATTERN,
    METHODS,
    MODULE_PATTERN,
    RESERVED_ENV,
    RESERVED_KEYS,
    RESTART_POLICIES,
    EndpointSchema,
    HealthSchema,
    LivenessSchema,
    ManifestSchema,
    parse_env,
    reserved_key_problem,
)
from supervisor_tui.plugins.model import Endpoint  # the snapshot's (and the wire's) endpoint

__all__ = [
    "ENV_NAME",
    "KEY_PATTERN",
    "MANIFEST_FILE",
    "METHODS",
    "MODULE_PATTERN",
    "RESERVED_ENV",
    "RESERVED_KEYS",
    "RESTART_POLICIES",
    "Discovery",
    "Endpoint",
    "HealthCheck",
    "Manifest",
    "ManifestError",
    "check_graph",
    "check_key_not_reserved",
    "dependencies",
    "discover",
    "load_manifest",
    "parse_endpoints",
    "parse_env",
    "parse_manifest",
    "start_order",
]

MANIFEST_FILE = "manifest.json"
# A command starting with one of these runs with the supervisor's own interpreter (sys.executable).
PYTHON_NAMES = ("python", "python3")
_DECODER = msgspec.json.Decoder(ManifestSchema)


class ManifestError(Exception):
    """A manifest (or a field of it) is not acceptable: which file, which field, what is wrong."""

    def __init__(self, path: Path | str, field: str, problem: str) -> None:
        self.path, self.field, self.problem = str(path), field, problem
        where = f"{self.path}: " if self.path else ""
        super().__init__(f"{where}{field}: {problem}" if field else f"{where}{problem}")


def check_key_not_reserved(path: Path | str, key: str) -> None:
    """Raise ManifestError when ``key`` is one the supervisor keeps for itself (``RESERVED_KEYS``)."""
    if key in RESERVED_KEYS:
        raise ManifestError(path, "key", reserved_key_problem(key))


@dataclass(frozen=True, slots=True)
class HealthCheck:
    """Active health probing every ``interval_s``: ``type`` "http" (GET ``path``), "tcp" (the port accepts a
    connection) or "exec" (``command`` exits 0; a string runs with /bin/sh -c); ``failures`` in a row = unhealthy."""

    type: str
    path: str | None
    command: tuple[str, ...] | str | None
    interval_s: float
    timeout_s: float
    failures: int
    start_timeout_s: float  # STARTING gives up (counts as a failed start) when never healthy by then
    restart: bool  # restart the plugin when it turns unhealthy


@dataclass(frozen=True, slots=True)
class Manifest:
    """A validated plugin manifest; ``folder`` is where the command runs. Defaults are ``ManifestSchema``'s."""

    key: str
    command: tuple[str, ...]
    folder: Path
    path: Path
    name: str
    version: str
    description: str
    env: Mapping[str, str]
    port: int | None
    replicas: int  # processes started for this plugin, each on its own port, balanced by the gateway
    endpoints: tuple[Endpoint, ...]
    health: HealthCheck | None  # readiness: gates RUNNING and routing
    liveness: HealthCheck | None  # while RUNNING: failures in a row restart the plugin (restart: true)
    autostart: bool
    restart: str
    startsecs: float
    startretries: int
    backoff_max_s: float
    stopsignal: str
    stopwaitsecs: float
    depends_on: tuple[str, ...]  # the keys; what each one waits for is in ``dependency_conditions``
    timeout: float | None  # gateway: upstream response timeout (None = the gateway's default)
    max_body: int | None  # gateway: largest request body (None = the gateway's default)
    module: str | None  # in-process plugin: "file:Class" in the folder (then there is no command)
    config: Mapping[str, Any]  # in-process plugin: passed to initialize()
    oneshot: bool  # a task run to completion: COMPLETED on exit 0, FAILED otherwise
    ready_log_line: str | None  # a regex on the plugin's output that gates RUNNING
    dependency_conditions: Mapping[str, str]  # depends_on key -> "started" | "healthy" | "completed" | ...

    def condition(self, dependency: str) -> str:
        """What this plugin waits for of ``dependency`` before it starts ("healthy" unless the manifest says)."""
        return self.dependency_conditions.get(dependency, "healthy")

    group: str | None  # plugins started, stopped and restarted together
    env_file: str | None  # a .env file (relative to the folder), read at each start
    working_dir: str | None  # where the command runs (relative to the folder); None = the folder
    user: str | None  # the user the command runs as (the supervisor must be root)

    @property
    def stop_signal(self) -> signal.Signals:
        return signal.Signals[f"SIG{self.stopsignal}"]

    def argv(self) -> list[str]:
        """The command to execute: "python"/"python3" first means this supervisor's own interpreter."""
        argv = list(self.command)
        if argv and argv[0] in PYTHON_NAMES:
            argv[0] = sys.executable
        return argv


def dependencies(manifest: Manifest) -> tuple[str, ...]:
    """The keys ``manifest`` depends on: the one place views (the dependency graph) read ``depends_on``."""
    return manifest.depends_on


def parse_endpoints(value: Any) -> tuple[Endpoint, ...]:
    """Endpoints from decoded JSON; ValueError names the problem (and the endpoint, like "[2].method ...")."""
    return tuple(_endpoint(e) for e in field_value(ManifestSchema, "endpoints", value))


def parse_manifest(data: Any, path: Path) -> Manifest:
    """Validate one manifest's content (already decoded JSON); ``path`` is its manifest.json (for errors)."""
    readiness = isinstance(data, dict) and "readiness" in data
    data = _presence_checked(data, path)
    try:
        return _manifest(msgspec.convert(data, ManifestSchema), path)
    except (msgspec.ValidationError, ManifestError):
        pass  # find the first problem in file order, worded by its field's rule
    try:
        return _manifest(ManifestSchema(**diagnose(data, ManifestSchema)), path)
    except ValueError as exc:
        error = _field_error(path, str(exc))
    except ManifestError as exc:
        error = exc
    if readiness and error.field.startswith("health"):  # named as the file names it
        error = ManifestError(path, "readiness" + error.field.removeprefix("health"), error.problem)
    raise error from None


def _presence_checked(data: Any, path: Path) -> dict[str, Any]:
    """The checks that come before any field's value: an object, a key (or its alias id), command or module."""
    if not isinstance(data, dict):
        raise ManifestError(path, "", f"must be a JSON object, got {kind(data)}")
    if "id" in data:  # the key's older name, still accepted
        if "key" in data:
            raise ManifestError(path, "id", "give either key or id (its alias), not both")
        data = {"key": data["id"], **{k: v for k, v in data.items() if k != "id"}}
    if "readiness" in data:  # the readiness probe's own name; health is what it was always called
        if "health" in data:
            raise ManifestError(path, "readiness", "give either health or readiness (its alias), not both")
        data = {"health" if k == "readiness" else k: v for k, v in data.items()}
    if data.get("key") is None:
        raise ManifestError(path, "key", "is required")
    try:
        field_value(ManifestSchema, "key", data["key"])
    except ValueError as exc:
        raise ManifestError(path, "key", str(exc)) from None
    if "module" in data:  # an in-process plugin runs inside the supervisor: no command
        if "command" in data:
            raise ManifestError(path, "command", "give either command (a process) or module (in-process), not both")
    elif "command" not in data:
        raise ManifestError(path, "command", 'is required (argv list, e.g. ["python", "server.py"])')
    fields = fields_of(ManifestSchema)
    for name in data:
        if name not in fields:
            raise ManifestError(path, name, f"unknown field (allowed: {', '.join(fields)})")
    return data


def _manifest(schema: ManifestSchema, path: Path) -> Manifest:
    """The Manifest of a decoded file: its fields' checks, then the rules that span fields."""
    if schema.command is UNSET and schema.module is UNSET:
        raise ManifestError(path, "command", 'is required (argv list, e.g. ["python", "server.py"])')
    if schema.command is not UNSET and schema.module is not UNSET:
        raise ManifestError(path, "command", "give either command (a process) or module (in-process), not both")
    try:
        v = checked(schema)
    except ValueError as exc:
        raise _field_error(path, str(exc)) from None
    key = v["key"]
    conditions = dict(v["depends_on"])  # (key, condition) pairs in file order
    if key in conditions:
        raise ManifestError(path, "depends_on", f"{key} cannot depend on itself")
    if v["port"] is not None and v["replicas"] > 1:
        raise ManifestError(path, "replicas", "must be 1 with a fixed port (each replica takes a port of the range)")
    # the values in the Manifest's own types: unset fields taken as their meaning, lists as tuples
    if v["name"] is UNSET:
        v["name"] = key
    if v["command"] is UNSET:
        v["command"] = ()
    if v["module"] is UNSET:
        v["module"] = None
    v["endpoints"] = tuple(_endpoint(e) for e in v["endpoints"]) if v["endpoints"] else ()
    v["depends_on"] = tuple(conditions)
    if v["restart"] is UNSET:  # a task is not run again unless the manifest says so
        v["restart"] = "never" if v["oneshot"] else "on-failure"
    if v["health"] is not None:
        v["health"] = _health_check(v["health"])
    if v["liveness"] is not None:
        v["liveness"] = _health_check(v["liveness"])
    return Manifest(
        **v,
        folder=path.parent,
        path=path,
        dependency_conditions=conditions,
    )


def _health_check(h: HealthSchema | LivenessSchema) -> HealthCheck:
    command = h.command if h.command is not UNSET else None
    return HealthCheck(
        type=str(h.type),
        path=h.path if h.path is not UNSET else None,
        command=tuple(command) if isinstance(command, list) else command,
        interval_s=float(h.interval_s),  # seconds after the schema's check
        timeout_s=float(h.timeout_s),
        failures=h.failures,
        start_timeout_s=float(h.start_timeout_s) if isinstance(h, HealthSchema) else 0.0,
        restart=h.restart,
    )


def _endpoint(e: EndpointSchema) -> Endpoint:
    return Endpoint(e.method, e.path, e.description)


def _field_error(path: Path, text: str) -> ManifestError:
    """A problem ".startsecs must be ..." or ".endpoints[2].method must be ..." names its field."""
    sub, problem = text.split(" ", 1)
    return ManifestError(path, sub.removeprefix("."), problem)


def load_manifest(folder: Path) -> Manifest:
    """Read and validate ``folder/manifest.json``."""
    path = folder / MANIFEST_FILE
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ManifestError(path, "", "file not found") from None
    except OSError as exc:
        raise ManifestError(path, "", f"cannot be read: {exc}") from None
    try:  # the fast path: a valid file decodes at once
        return _manifest(_DECODER.decode(raw), path)
    except (msgspec.DecodeError, ManifestError):
        pass  # the slow path words the problem exactly as for decoded JSON
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ManifestError(path, "", f"cannot be read: {exc}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ManifestError(path, "", f"is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except ValueError:  # Python refuses integers of more than sys.get_int_max_str_digits() digits
        raise ManifestError(
            path, "", f"is not valid JSON: a number has more than {sys.get_int_max_str_digits()} digits"
        ) from None
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
