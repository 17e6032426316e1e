"""The declared shape of manifest.json: msgspec Structs with unknown fields forbidden, and each field's rule.

- ``ManifestSchema`` (the file), ``HealthSchema`` (its ``health`` object), ``EndpointSchema`` (one of its
  ``endpoints``): the fields a manifest may have, their types, their defaults and their rules (manifest_rules.py:
  how a rule words a wrong value, and ``checked``/``diagnose``/``field_value`` that apply them).
  docs/manifest.md's field tables are checked against them by a test, so the two cannot drift.
- The checks the rules call (key, command, paths, signals, dependencies, probes...): each returns the value
  normalised or raises ValueError with the problem.
- ``parse_env``: an environment mapping (also used for the operator's overrides); ``reserved_key_problem``.
"""

from __future__ import annotations

import re
import signal
from typing import Annotated, Any

import msgspec
from msgspec import UNSET, UnsetType

from supervisor_tui.config import parse_size
from supervisor_tui.plugins.manifest_rules import (
    Rule,
    boolean_rule,
    checked,
    diagnose,
    integer_rule,
    kind,
    one_of_rule,
    seconds_rule,
    string_rule,
)

KEY_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS")
RESTART_POLICIES = ("on-failure", "always", "never")
HEALTH_TYPES = ("http", "tcp", "exec")
# What a dependent waits for: its dependency STARTING or later, RUNNING, ended (COMPLETED or FAILED), COMPLETED.
DEPENDENCY_CONDITIONS = ("started", "healthy", "completed", "completed_successfully")
READY_LINE_MAX = 1000  # characters of a ready_log_line pattern
# Set by the supervisor for every plugin process; a manifest or an override may not set them.
RESERVED_ENV = ("PORT", "PLUGIN_KEY", "SUPERVISOR_URL")
# Names a plugin key may not take: the supervisor's own log source, and the literal admin routes beside
# /api/v1/plugins/{key} (a plugin called "install" could not be read at /api/v1/plugins/install).
RESERVED_KEYS = {
    "supervisor": "the supervisor's own log source",
    "install": "an admin route, POST /api/v1/plugins/install",
    "register": "an admin route, POST /api/v1/plugins/register",
}
# An in-process plugin's entry point: a module path (dotted, relative to the folder) and a class name.
MODULE_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$")
_PATH_SEGMENT = re.compile(r"^(\{[A-Za-z_][A-Za-z0-9_]*\}|[A-Za-z0-9._~!$&'()*+,;=:@%-]*)$")


def _check_key(key: str) -> str:
    # fullmatch: match() lets a trailing newline through the pattern's "$"
    if not KEY_PATTERN.fullmatch(key):
        raise ValueError(f"{_KEY_WORDS}, got {key!r}")
    if key in RESERVED_KEYS:
        raise ValueError(reserved_key_problem(key))
    return key


def reserved_key_problem(key: str) -> str:
    """Why ``key`` (one of ``RESERVED_KEYS``) cannot name a plugin."""
    return f"{key!r} is reserved ({RESERVED_KEYS[key]}); choose another key"


_KEY_WORDS = f"must match {KEY_PATTERN.pattern} (lowercase letters, digits, - and _)"

_COMMAND_WORDS = 'must be a non-empty list of strings (argv), e.g. ["python", "server.py"]'
_PROGRAM_FIRST = "must be a list of strings with a non-empty program first"


def _check_command(argv: list[str]) -> tuple[str, ...]:
    if not argv:
        raise ValueError(_COMMAND_WORDS)
    if not argv[0]:
        raise ValueError(_PROGRAM_FIRST)
    if any("\x00" in a for a in argv):
        raise ValueError("must not contain NUL characters")
    return tuple(argv)


def parse_env(value: Any) -> dict[str, str]:
    """An environment mapping: names like shell variables, string values, no supervisor-reserved names."""
    if not isinstance(value, dict):
        raise ValueError(f'must be an object of NAME: "value" strings, got {kind(value)}')
    out: dict[str, str] = {}
    for name, v in value.items():
        if not ENV_NAME.fullmatch(name):
            raise ValueError(f"{name!r} is not a valid variable name")
        if name in RESERVED_ENV:
            raise ValueError(f"{name} is set by the supervisor and cannot be overridden")
        if not isinstance(v, str):
            raise ValueError(f"{name} must be a string, got {kind(v)}")
        if "\x00" in v:
            raise ValueError(f"{name} must not contain NUL characters")
        out[name] = v
    return out


def _check_method(method: str) -> str:
    if method.upper() not in METHODS:
        raise ValueError(f"{_METHOD_WORDS}, got {method!r}")
    return method.upper()


_METHOD_WORDS = f"must be one of {', '.join(METHODS)}"


def _check_path(path: str) -> str:
    if not path.startswith("/"):
        raise ValueError(f"must be a string starting with '/', got {path!r}")
    if any(not _PATH_SEGMENT.match(seg) for seg in path[1:].split("/")):
        raise ValueError(f"{path!r} has an invalid segment (use plain segments or {{param}})")
    return path


def _check_health_path(path: str) -> str:
    if not path.startswith("/"):
        raise ValueError(f"must start with '/', got {path!r}")
    return path


def _check_signal(value: str) -> str:
    name = value.upper().removeprefix("SIG")
    if name in ("KILL", "STOP") or not hasattr(signal.Signals, f"SIG{name}"):
        raise ValueError(f"must be a signal name like TERM, INT, QUIT, HUP, USR1 (not KILL/STOP), got {value!r}")
    return name


def _check_group(name: str) -> str:
    if not KEY_PATTERN.fullmatch(name):
        raise ValueError(f"{_GROUP_WORDS}, got {name!r}")
    return name


_GROUP_WORDS = f"must match {KEY_PATTERN.pattern} (lowercase letters, digits, - and _)"


def _check_relative_file(value: str) -> str:
    """A path inside or beside the plugin folder: not empty, no NUL (whether it exists is a start's business)."""
    if not value or "\x00" in value:
        raise ValueError(f"must be a non-empty path without NUL characters, got {value!r}")
    return value


_USER_PATTERN = re.compile(r"^[a-z_][a-z0-9_.-]{0,31}\$?$")
_USER_WORDS = 'must be a user name like "www-data" or a numeric uid'


def _check_user(value: str) -> str:
    if not (_USER_PATTERN.fullmatch(value) or value.isdecimal()):
        raise ValueError(f"{_USER_WORDS}, got {value!r}")
    return value


_DEPENDENCY_WORDS = "must be a plugin key or an object {key, condition}"


def _check_depends_on(items: list[Any]) -> tuple[tuple[str, str], ...]:
    """(key, condition) pairs from plain keys (condition "healthy") and {key, condition} objects; a key listed
    twice must ask the same condition."""
    out: dict[str, str] = {}
    for i, item in enumerate(items):
        if isinstance(item, str):
            key, condition = item, "healthy"
        elif isinstance(item, tuple):  # a pair this check returned already (a Manifest built a second time)
            key, condition = item
        elif isinstance(item, DependencySchema):
            values = checked(item, f"[{i}]")
            key, condition = values["key"], values["condition"]
        elif isinstance(item, dict):
            values = diagnose(item, DependencySchema, f"[{i}]")
            key, condition = values["key"], values["condition"]
        else:
            raise ValueError(f"[{i}] {_DEPENDENCY_WORDS}, got {kind(item)}")
        if not KEY_PATTERN.fullmatch(key):
            raise ValueError(f"{key!r} is not a valid plugin key")
        if out.get(key, condition) != condition:
            raise ValueError(f"{key!r} is listed twice, with conditions {out[key]} and {condition}")
        out[key] = condition
    return tuple(out.items())


_SIZE_WORDS = 'must be a size like 10485760 or "10MiB"'


def _check_size(value: int | str) -> int:
    try:
        return parse_size(value)
    except ValueError:
        raise ValueError(f"{_SIZE_WORDS}, got {value!r}") from None


def _check_module(value: str) -> str:
    if not MODULE_PATTERN.fullmatch(value):
        raise ValueError(f"{_MODULE_WORDS}, got {value!r}")
    return value


_MODULE_WORDS = 'must name a module and a class like "plugin:StatsPlugin"'


class EndpointSchema(msgspec.Struct, forbid_unknown_fields=True):
    """One route a plugin serves: ``{method, path, description}``; ``path`` may hold ``{param}`` segments."""

    method: Annotated[str, Rule(_METHOD_WORDS, got=repr, check=_check_method, missing=f"{_METHOD_WORDS}, got None")]
    path: Annotated[
        str,
        Rule(
            "must be a string starting with '/'",
            got=repr,
            check=_check_path,
            missing="must be a string starting with '/', got None",
        ),
    ]
    description: Annotated[str, string_rule()] = ""


class DependencySchema(msgspec.Struct, forbid_unknown_fields=True):
    """One ``depends_on`` entry written as an object: the dependency's key and what to wait for."""

    key: Annotated[str, Rule("must be a string", missing="is required (the dependency's key)")]
    condition: Annotated[str, one_of_rule(DEPENDENCY_CONDITIONS)] = "healthy"


_PROBE_COMMAND_WORDS = "must be a non-empty list of strings (argv) or a string (run by /bin/sh -c)"


def _check_probe_command(value: list[str] | str) -> tuple[str, ...] | str:
    if isinstance(value, str):
        if not value.strip():
            raise ValueError(f"{_PROBE_COMMAND_WORDS}, got an empty string")
        if "\x00" in value:
            raise ValueError("must not contain NUL characters")
        return value
    return _check_command(value)


class ProbeSchema(msgspec.Struct, forbid_unknown_fields=True):
    """What every probe has: http GET ``path``, a tcp connect, or an exec ``command``, every ``interval_s``;
    ``failures`` in a row = failed."""

    path: Annotated[
        str | UnsetType, Rule("must be a string", check=_check_health_path, doc_default="required for `http`")
    ] = UNSET
    type: Annotated[
        str | UnsetType, one_of_rule(HEALTH_TYPES, doc_default='`"exec"` with a `command`, else `"http"`')
    ] = UNSET
    command: Annotated[
        list[str] | str | UnsetType,
        Rule(_PROBE_COMMAND_WORDS, got=None, check=_check_probe_command, doc_default="required for `exec`"),
    ] = UNSET
    interval_s: Annotated[int | float | str, seconds_rule(0.05, 86400)] = 10.0
    timeout_s: Annotated[int | float | str, seconds_rule(0.05, 3600)] = 2.0
    failures: Annotated[int, integer_rule(1, 1000)] = 3


class HealthSchema(ProbeSchema, forbid_unknown_fields=True):
    """The readiness probe (``health``, alias ``readiness``): gates RUNNING and routing."""

    # STARTING gives up (counts as a failed start) when never healthy by then
    start_timeout_s: Annotated[int | float | str, seconds_rule(0.1, 86400)] = 60.0
    restart: Annotated[bool, boolean_rule()] = False  # restart the plugin when it turns unhealthy


class LivenessSchema(ProbeSchema, forbid_unknown_fields=True):
    """The liveness probe (``liveness``): runs while RUNNING; ``failures`` in a row restart the plugin."""

    restart: Annotated[bool, boolean_rule()] = True  # false: a failed liveness is only reported (logs, last_error)


def _check_endpoints(items: list[Any]) -> tuple[EndpointSchema, ...]:
    """Each endpoint checked (raw JSON objects or decoded ones), none twice."""
    out: list[EndpointSchema] = []
    seen: set[tuple[str, str]] = set()
    for i, item in enumerate(items):
        where = f"[{i}]"
        if isinstance(item, EndpointSchema):
            values = checked(item, where)
        elif not isinstance(item, dict):
            raise ValueError(f"{where} must be an object {{method, path, description}}, got {kind(item)}")
        else:
            values = diagnose(item, EndpointSchema, where)
        endpoint = EndpointSchema(**values)
        ident = (endpoint.method, endpoint.path)
        if ident in seen:
            raise ValueError(f"{where} duplicates {endpoint.method} {endpoint.path}")
        seen.add(ident)
        out.append(endpoint)
    return tuple(out)


def _check_probe(value: Any, schema: type[ProbeSchema], words: str) -> Any:
    """A probe object with durations in seconds and its type resolved (raw JSON or decoded)."""
    if isinstance(value, schema):
        probe = schema(**checked(value, ""))
    elif not isinstance(value, dict):
        raise ValueError(f"{words}, got {kind(value)}")
    else:
        probe = schema(**diagnose(value, schema, ""))
    if probe.type is UNSET:  # what the fields given say; neither: http, which asks for its path
        probe.type = "exec" if probe.command is not UNSET and probe.path is UNSET else "http"
    if probe.type == "http" and probe.path is UNSET:
        raise ValueError('.path is required (e.g. "/health"), or a type "tcp" or "exec"')
    if probe.type == "exec" and probe.command is UNSET:
        raise ValueError('.command is required for type "exec" (argv list, or a string run by /bin/sh -c)')
    if probe.type != "http" and probe.path is not UNSET:
        raise ValueError(f'.path is only for type "http", not {probe.type!r}')
    if probe.type != "exec" and probe.command is not UNSET:
        raise ValueError(f'.command is only for type "exec", not {probe.type!r}')
    return probe


_HEALTH_WORDS = "must be an object {type, path, command, interval_s, timeout_s, failures} or null"


def _check_health(value: Any) -> HealthSchema:
    """The ``health`` (readiness) object."""
    health: HealthSchema = _check_probe(value, HealthSchema, _HEALTH_WORDS)
    return health


def _check_liveness(value: Any) -> LivenessSchema:
    """The ``liveness`` object."""
    liveness: LivenessSchema = _check_probe(value, LivenessSchema, _HEALTH_WORDS)
    return liveness


def _check_ready_log_line(pattern: str) -> str:
    if not pattern or len(pattern) > READY_LINE_MAX:
        raise ValueError(f"must be a regular expression of 1 to {READY_LINE_MAX} characters")
    try:
        re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"is not a valid regular expression: {exc}") from None
    return pattern


# The most replicas of one plugin: each is a process and a port, and the gateway balances over them.
MAX_REPLICAS = 64


class ManifestSchema(msgspec.Struct, forbid_unknown_fields=True):
    """A plugin's manifest.json: a process (``command``) or an in-process plugin (``module``), not both.

    ``id`` (the key's older name, an alias) is taken as ``key`` before decoding.
    """

    key: Annotated[str, Rule(_KEY_WORDS, got=repr, check=_check_key)]
    name: Annotated[str | UnsetType, string_rule(doc_default="the key")] = UNSET
    version: Annotated[str, string_rule()] = "0.0.0"
    description: Annotated[str, string_rule()] = ""
    command: Annotated[
        list[str] | UnsetType,
        Rule(_COMMAND_WORDS, got=None, check=_check_command, inner=_PROGRAM_FIRST, doc_default="required"),
    ] = UNSET
    env: Annotated[
        dict[str, str], Rule('must be an object of NAME: "value" strings', check=parse_env, raw_check=True)
    ] = {}
    port: Annotated[int | None, integer_rule(1, 65535)] = None
    replicas: Annotated[int, integer_rule(1, MAX_REPLICAS)] = 1
    endpoints: Annotated[
        list[EndpointSchema],
        Rule("must be a list of {method, path, description}", check=_check_endpoints, raw_check=True),
    ] = []
    # readiness: gates RUNNING and routing ("readiness" is the same field: an alias taken before decoding)
    health: Annotated[HealthSchema | None, Rule(_HEALTH_WORDS, check=_check_health, raw_check=True)] = None
    # liveness: while RUNNING, failures in a row restart the plugin
    liveness: Annotated[LivenessSchema | None, Rule(_HEALTH_WORDS, check=_check_liveness, raw_check=True)] = None
    # RUNNING waits for a line of the plugin's output matching this regex (with any health check)
    ready_log_line: Annotated[
        str | None, Rule("must be a string (a regular expression)", check=_check_ready_log_line)
    ] = None
    autostart: Annotated[bool, boolean_rule()] = True
    oneshot: Annotated[bool, boolean_rule()] = False  # a task run to completion: COMPLETED on exit 0, else FAILED
    restart: Annotated[
        str | UnsetType, one_of_rule(RESTART_POLICIES, doc_default='`"on-failure"` (`"never"` for a oneshot)')
    ] = UNSET
    startsecs: Annotated[int | float | str, seconds_rule(0, 3600)] = 1.0
    startretries: Annotated[int, integer_rule(0, 1000)] = 3
    backoff_max_s: Annotated[int | float | str, seconds_rule(0, 86400)] = 30.0
    stopsignal: Annotated[str, Rule('must be a signal name like "TERM" or "INT"', check=_check_signal)] = "TERM"
    stopwaitsecs: Annotated[int | float | str, seconds_rule(0, 3600)] = 10.0
    depends_on: Annotated[
        list[str | DependencySchema],
        Rule("must be a list of plugin keys or {key, condition} objects", check=_check_depends_on, raw_check=True),
    ] = []
    # a name shared by plugins started, stopped and restarted together (None = in no group)
    group: Annotated[str | None, Rule(_GROUP_WORDS, got=repr, check=_check_group)] = None
    # process plugins: a .env file read at each start, the directory the command runs in, the user it runs as
    env_file: Annotated[str | None, Rule("must be a path (a string)", check=_check_relative_file)] = None
    working_dir: Annotated[str | None, Rule("must be a path (a string)", check=_check_relative_file)] = None
    user: Annotated[str | None, Rule(_USER_WORDS, got=repr, check=_check_user)] = None
    # gateway: upstream response timeout and largest request body (None = the gateway's defaults)
    timeout: Annotated[int | float | str | None, seconds_rule(0.001, 86400, doc_default="`gateway.timeout`")] = None
    max_body: Annotated[int | str | None, Rule(_SIZE_WORDS, check=_check_size, doc_default="`gateway.max_body`")] = None
    # in-process plugin: "file:Class" in the folder (then there is no command); config is passed to initialize()
    module: Annotated[str | UnsetType, Rule(_MODULE_WORDS, got=repr, check=_check_module, doc_default="none")] = UNSET
    config: Annotated[dict[str, Any], Rule("must be an object")] = {}
