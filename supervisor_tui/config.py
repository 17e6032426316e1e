"""One Settings object: defaults < supervisor.toml (or --config) < env SUPERVISOR_TUI_* < CLI flags.

Every key is declared once in ``FIELDS`` with its type, default and what is allowed; a bad value raises
``ConfigError`` naming the key, the value and what is allowed (the CLI turns it into one line and exit 2).
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

ENV_PREFIX = "SUPERVISOR_TUI_"
DEFAULT_CONFIG_FILE = "supervisor.toml"


class ConfigError(Exception):
    """A setting has a value that is not allowed."""

    def __init__(self, key: str, value: object, allowed: str, source: str = "") -> None:
        self.key, self.value, self.allowed, self.source = key, value, allowed, source
        where = f" (from {source})" if source else ""
        super().__init__(f"invalid setting {key}={value!r}{where}: expected {allowed}")


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
_SIZE = re.compile(r"^\s*(\d+)\s*(b|kb|kib|mb|mib|gb|gib|k|m|g)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {
    None: 1,
    "b": 1,
    "k": 1024,
    "kb": 1000,
    "kib": 1024,
    "m": 1024**2,
    "mb": 1000**2,
    "mib": 1024**2,
    "g": 1024**3,
    "gb": 1000**3,
    "gib": 1024**3,
}


def parse_duration(value: object) -> float:
    """Seconds from a number or a string like "30s", "10m", "1.5h", "250ms"."""
    if isinstance(value, bool):
        raise ValueError("not a duration")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("negative")
        return float(value)
    m = _DURATION.match(str(value))
    if not m:
        raise ValueError("not a duration")
    return float(m.group(1)) * _DURATION_UNITS[m.group(2)]


def parse_size(value: object) -> int:
    """Bytes from a number or a string like "10MiB", "64KiB"."""
    if isinstance(value, bool):
        raise ValueError("not a size")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("negative")
        return value
    m = _SIZE.match(str(value))
    if not m:
        raise ValueError("not a size")
    unit = m.group(2).lower() if m.group(2) else None
    return int(m.group(1)) * _SIZE_UNITS[unit]


def local_url(host: str, port: int) -> str:
    """The http:// base URL a client on this host uses to reach a server bound to (host, port)."""
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{port}"


def masked_url(url: str) -> str:
    """``url`` (a Redis or admin URL, a PostgreSQL DSN) with its password shown as ``***``: the one in the
    authority (``user:password@``) and a ``password=`` parameter; for logs, status and ``config``."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return "***"  # not a URL we can take apart: show none of it
    if password:
        userinfo, _, hostinfo = parts.netloc.rpartition("@")
        user = userinfo.partition(":")[0]
        url = urlunsplit(parts._replace(netloc=f"{user}:***@{hostinfo}"))
    return re.sub(r"([?&]password=)[^&#]*", r"\1***", url, flags=re.IGNORECASE)


def _parse_redis_url(value: object) -> str:
    """Empty (no Redis), or redis://[user:password@]host[:port][/db], rediss:// for TLS."""
    s = _parse_str(value).strip()
    if not s:
        return ""
    parts = urlsplit(s)
    if parts.scheme not in ("redis", "rediss") or not parts.hostname:
        raise ValueError("not a redis URL")
    parts.port  # noqa: B018 - raises ValueError on a bad port
    if parts.path.strip("/") and not parts.path.strip("/").isdigit():
        raise ValueError("not a database number")
    return s


def _parse_name(pattern: str, what: str) -> Callable[[object], str]:
    """A parser of names (a fleet node, a server in Caddy's config) that must match ``pattern`` whole."""

    def parse(value: object) -> str:
        s = _parse_str(value).strip()
        if not re.fullmatch(pattern, s):
            raise ValueError(f"not a {what}")
        return s

    return parse


_parse_node_name = _parse_name(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", "node name")
_parse_caddy_name = _parse_name(r"[A-Za-z0-9._-]{1,64}", "name")


def _parse_http_url(value: object) -> str:
    """Empty (derived), or an http(s):// base URL without path, query or credentials."""
    s = _parse_str(value).strip().rstrip("/")
    if not s:
        return ""
    parts = urlsplit(s)
    parts.port  # noqa: B018 - raises ValueError on a bad port
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.username or parts.path or parts.query:
        raise ValueError("not a base URL")
    return s


def _default_node() -> str:
    """The host name, trimmed to what a node name may hold."""
    name = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname())[:64].strip("-.") or "node"
    return name if name[0].isalnum() else f"n{name}"[:64]


def _parse_bool(value: object) -> bool:
    if isinstance(value, bool):
        return value
    s = str(value).strip().lower()
    if s in ("1", "true", "yes", "on"):
        return True
    if s in ("0", "false", "no", "off"):
        return False
    raise ValueError("not a boolean")


def _parse_int(lo: int, hi: int) -> Callable[[object], int]:
    def parse(value: object) -> int:
        if isinstance(value, bool):
            raise ValueError("not an integer")
        n = int(str(value).strip()) if not isinstance(value, int) else value
        if not lo <= n <= hi:
            raise ValueError("out of range")
        return n

    return parse


def _parse_console_store(value: object) -> str:
    """``sqlite`` or a PostgreSQL DSN (postgresql:// or postgres://)."""
    text = _parse_str(value).strip()
    if text == "sqlite" or re.match(r"^postgres(ql)?://[^\s]+$", text):
        return text
    raise ValueError(text)


def _parse_str(value: object) -> str:
    if not isinstance(value, str | int | float) or isinstance(value, bool):
        raise ValueError("not a string")
    return str(value)


def _parse_choice(*choices: str) -> Callable[[object], str]:
    def parse(value: object) -> str:
        s = str(value).strip().lower()
        if s not in choices:
            raise ValueError("not allowed")
        return s

    return parse


def _parse_networks(value: object) -> tuple[str, ...]:
    """A list of hostnames, IPs or CIDR networks (a comma-separated string in env/flags)."""
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list | tuple):
        raise ValueError("not a list")
    out = []
    for item in items:
        s = str(item).strip()
        if not s:
            continue
        try:
            ipaddress.ip_network(s, strict=False)
        except ValueError:
            if not re.fullmatch(r"[A-Za-z0-9.-]+", s):
                raise ValueError("not a host or network") from None
        out.append(s)
    return tuple(out)


def _parse_host_patterns(value: object) -> tuple[str, ...]:
    """Host names, ".example.com" (the domain and its subdomains), IPs or networks, or "*" for any Host."""
    items = value.split(",") if isinstance(value, str) else value
    if isinstance(items, list | tuple) and any(str(item).strip() == "*" for item in items):
        return ("*",)
    return _parse_networks(value)


def _size_between(lo: int, hi: int) -> Callable[[object], int]:
    def parse(value: object) -> int:
        n = parse_size(value)
        if not lo <= n <= hi:
            raise ValueError("out of range")
        return n

    return parse


def _positive_duration(value: object) -> float:
    seconds = parse_duration(value)
    if seconds <= 0:
        raise ValueError("not positive")
    return seconds


def _parse_host(value: object) -> str:
    s = _parse_str(value).strip()
    if not s or not re.fullmatch(r"[A-Za-z0-9.:\-\[\]]+", s):
        raise ValueError("not a host")
    return s


def _parse_admin_url(value: object) -> str:
    s = _parse_str(value).strip()
    try:
        parts = urlsplit(s)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        raise ValueError("not a URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("not an http(s) URL")
    return s.rstrip("/")


def _parse_listen(value: object) -> str:
    """``host:port`` (``[v6]:port``), or empty for unset."""
    s = _parse_str(value).strip()
    if not s:
        return ""
    host, sep, port = s.rpartition(":")
    if not sep or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError("not host:port")
    if host.startswith("[") and host.endswith("]"):
        ipaddress.IPv6Address(host[1:-1])
    elif host and not re.fullmatch(r"[A-Za-z0-9.-]+", host):
        raise ValueError("not a host")
    return s


@dataclass(frozen=True)
class Field:
    """One setting: where it lives, how to parse it, and what to say when it is wrong."""

    section: str
    key: str
    default: Any
    parse: Callable[[object], Any]
    allowed: str
    help: str = ""
    secret: bool = False
    mask: Callable[[str], str] | None = None  # shows a value that holds a secret without it (a URL's password)

    @property
    def name(self) -> str:
        return f"{self.section}.{self.key}"

    @property
    def env(self) -> str:
        return f"{ENV_PREFIX}{self.section.upper()}_{self.key.upper()}"


_PORT = _parse_int(1, 65535)
_PORT0 = _parse_int(0, 65535)

FIELDS: tuple[Field, ...] = (
    Field("server", "host", "127.0.0.1", _parse_host, "a host name or IP address", "address the API binds to"),
    Field("server", "port", 4000, _PORT0, "an integer 0-65535 (0 = any free port)", "API port"),
    Field("server", "max_body", 1024**2, parse_size, "a size like 1MiB", "largest admin API request body"),
    Field(
        "server",
        "max_header_bytes",
        64 * 1024,
        _size_between(1024, 16 * 1024**2),
        "a size 1KiB-16MiB like 64KiB",
        "largest request head (request line and headers): 431 beyond it",
    ),
    Field(
        "server",
        "max_headers",
        100,
        _parse_int(8, 10_000),
        "an integer 8-10000",
        "most header lines in one request: 431 beyond it",
    ),
    Field(
        "server",
        "header_timeout",
        15.0,
        _positive_duration,
        "a duration over 0 like 15s",
        "time a request head may take to arrive: 408 and close after it",
    ),
    Field(
        "server",
        "idle_timeout",
        5.0,
        _positive_duration,
        "a duration over 0 like 5s",
        "idle time after which a keep-alive connection is closed",
    ),
    Field(
        "server",
        "max_connections",
        0,
        _parse_int(0, 1_000_000),
        "an integer 0-1000000 (0 = half the open-files limit)",
        "open client connections; beyond it new ones get 503 and are closed",
    ),
    Field(
        "server",
        "allowed_hosts",
        (),
        _parse_host_patterns,
        "a list of host names, .domains, IPs or networks, or *",
        "Host values answered besides loopback names (none listed: loopback only when bound to loopback)",
    ),
    Field("plugins", "dir", "./plugins", _parse_str, "a directory path", "where plugin folders live"),
    Field("plugins", "port_range_start", 4001, _PORT, "an integer 1-65535", "first port handed to plugins"),
    Field("plugins", "port_range_end", 4999, _PORT, "an integer 1-65535", "last port handed to plugins"),
    Field("plugins", "watch", True, _parse_bool, "true or false", "reload plugins when their folders change"),
    Field(
        "plugins",
        "cgroups",
        True,
        _parse_bool,
        "true or false",
        "track plugin processes in cgroups v2 where writable (false: process group, marker and subreaper only)",
    ),
    Field("gateway", "max_body", 10 * 1024**2, parse_size, "a size like 10MiB", "largest proxied body"),
    Field("gateway", "timeout", 30.0, parse_duration, "a duration like 30s", "upstream response timeout"),
    Field(
        "gateway",
        "upstream_allowlist",
        ("127.0.0.0/8", "::1/128", "localhost"),
        _parse_networks,
        "a list of hosts or networks",
        "hosts external plugins may announce as upstreams",
    ),
    Field(
        "routes",
        "export",
        "none",
        _parse_choice("none", "caddy"),
        "none or caddy",
        "keep a gateway in front in step with the route table (caddy: through its admin API)",
    ),
    Field(
        "routes",
        "caddy_admin",
        "http://127.0.0.1:2019",
        _parse_admin_url,
        "an http(s) URL",
        "Caddy's admin API",
    ),
    Field(
        "routes",
        "caddy_listen",
        "",
        _parse_listen,
        "host:port, e.g. 127.0.0.1:8080",
        "address of the server the supervisor owns in Caddy (required with routes.export = caddy)",
    ),
    Field(
        "routes",
        "caddy_server",
        "supervisor-tui",
        _parse_caddy_name,
        "letters, digits, . _ -",
        "name of that server in Caddy's config",
    ),
    Field(
        "external",
        "heartbeat_interval",
        30.0,
        parse_duration,
        "a duration like 30s",
        "expected heartbeat interval of external plugins (LOST after twice that)",
    ),
    Field(
        "redis",
        "url",
        "",
        _parse_redis_url,
        "empty, or redis://[user:password@]host:port/db (rediss:// for TLS)",
        "the fleet's Redis: the Redis registration protocol's channels and node presence (empty = off)",
        mask=masked_url,
    ),
    Field(
        "redis",
        "dead_after",
        60.0,
        _positive_duration,
        "a duration over 0 like 60s",
        "silence after which a plugin registered over Redis is LOST, and a node is lost",
    ),
    Field(
        "redis",
        "heartbeat_interval",
        30.0,
        _positive_duration,
        "a duration over 0 like 30s",
        "how often this node's running plugins are announced on plugin:heartbeat and its presence refreshed",
    ),
    Field(
        "redis",
        "default_host",
        "127.0.0.1",
        _parse_host,
        "a host name or IP address",
        "upstream host of a Redis registration that names no host or url",
    ),
    Field(
        "redis",
        "announce",
        True,
        _parse_bool,
        "true or false",
        "publish this node's plugins on the registration protocol's channels",
    ),
    Field(
        "fleet",
        "node",
        _default_node(),
        _parse_node_name,
        "a name of letters, digits, '.', '_' or '-' (at most 64)",
        "this supervisor's name in the fleet (default: the host name)",
    ),
    Field(
        "fleet",
        "advertise_url",
        "",
        _parse_http_url,
        "empty, or an http(s):// base URL like http://10.0.0.5:4000",
        "where other nodes reach this node's gateway (empty: from server.host and server.port)",
    ),
    Field("data", "dir", "./data", _parse_str, "a directory path", "database, logs and admin token"),
    Field("data", "log_max_bytes", 10 * 1024**2, parse_size, "a size like 10MiB", "rotate plugin logs at"),
    Field("data", "log_backups", 3, _parse_int(0, 100), "an integer 0-100", "rotated log files kept"),
    Field(
        "data",
        "log_ring_lines",
        10_000,
        _parse_int(100, 10_000_000),
        "an integer >= 100",
        "log lines kept in memory per source",
    ),
    Field("auth", "admin_token", "", _parse_str, "a string", "admin API token (generated if empty)", True),
    Field(
        "auth",
        "plugin_token",
        "",
        _parse_str,
        "a string",
        "token external plugins register with (generated if empty)",
        True,
    ),
    Field("auth", "public_metrics", False, _parse_bool, "true or false", "serve /metrics without a token"),
    Field(
        "consoles",
        "auth",
        "token",
        _parse_choice("token", "none"),
        "token or none",
        "whether heartbeats must carry the console's token",
    ),
    Field(
        "consoles",
        "store",
        "sqlite",
        _parse_console_store,
        "sqlite or a postgresql:// DSN",
        "where consoles are kept: the SQLite database in data.dir, or a PostgreSQL shared by several supervisors",
        mask=masked_url,
    ),
    Field(
        "consoles",
        "enrollment_token",
        "",
        _parse_str,
        "a string",
        "required to register new consoles when set",
        True,
    ),
    Field(
        "consoles",
        "inactive_after",
        600.0,
        parse_duration,
        "a duration like 10m",
        "silence after which a console is inactive",
    ),
    Field(
        "consoles",
        "heartbeat_retention",
        7 * 86400.0,
        parse_duration,
        "a duration like 7d",
        "how long raw heartbeats are kept",
    ),
    Field(
        "consoles",
        "heartbeats_per_console",
        10_000,
        _parse_int(1, 10_000_000),
        "an integer >= 1",
        "raw heartbeats kept per console",
    ),
    Field(
        "consoles",
        "transition_retention",
        93 * 86400.0,
        parse_duration,
        "a duration like 93d",
        "how long state transitions are kept",
    ),
    Field(
        "consoles",
        "register_rate",
        60,
        _parse_int(0, 1_000_000),
        "an integer >= 0 (0 = no limit)",
        "console registrations a minute from one address: 429 beyond it",
    ),
    Field(
        "consoles",
        "register_rate_global",
        600,
        _parse_int(0, 1_000_000),
        "an integer >= 0 (0 = no limit)",
        "console registrations a minute from all addresses together: 429 beyond it",
    ),
    Field("log", "format", "human", _parse_choice("human", "json"), "human or json", "supervisor log format"),
    Field(
        "log",
        "level",
        "info",
        _parse_choice("debug", "info", "warning", "error"),
        "debug, info, warning or error",
        "lowest level printed",
    ),
    Field("ui", "read_only", False, _parse_bool, "true or false", "refuse every action that changes state"),
)

WILDCARD_HOSTS = ("0.0.0.0", "::", "[::]", "")

FIELDS_BY_NAME: dict[str, Field] = {f.name: f for f in FIELDS}


@dataclass
class Settings:
    """The effective settings, with where each value came from."""

    values: dict[str, Any] = field(default_factory=lambda: {f.name: f.default for f in FIELDS})
    sources: dict[str, str] = field(default_factory=lambda: {f.name: "default" for f in FIELDS})
    config_file: Path | None = None
    tables: dict[str, Any] = field(default_factory=dict)  # free-form sections: [keys], [inprocess.*]
    base_dir: Path = field(default_factory=Path.cwd)

    def get(self, name: str) -> Any:
        return self.values[name]

    def set(self, name: str, value: object, source: str) -> None:
        """Parse and set one key; raises ConfigError when the value is not allowed."""
        f = FIELDS_BY_NAME.get(name)
        if f is None:
            raise ConfigError(name, value, "a known setting (see `supervisor-tui config`)", source)
        try:
            parsed = f.parse(value)
        except (ValueError, TypeError):
            shown = (
                "***"
                if f.secret
                else f.mask(str(value))
                if f.mask is not None
                else masked_url(value)
                if isinstance(value, str)
                else value
            )
            raise ConfigError(name, shown, f.allowed, source) from None
        self.values[name] = parsed
        self.sources[name] = source

    # Typed accessors for the keys every part uses.
    @property
    def host(self) -> str:
        return str(self.values["server.host"])

    @property
    def port(self) -> int:
        return int(self.values["server.port"])

    @property
    def plugins_dir(self) -> Path:
        return self._path("plugins.dir")

    @property
    def data_dir(self) -> Path:
        return self._path("data.dir")

    @property
    def db_path(self) -> Path:
        return self.data_dir / "supervisor.db"

    @property
    def logs_dir(self) -> Path:
        return self.data_dir / "logs"

    @property
    def port_range(self) -> tuple[int, int]:
        return int(self.values["plugins.port_range_start"]), int(self.values["plugins.port_range_end"])

    @property
    def read_only(self) -> bool:
        return bool(self.values["ui.read_only"])

    def _path(self, name: str) -> Path:
        p = Path(os.path.expanduser(str(self.values[name])))
        return p if p.is_absolute() else (self.base_dir / p).resolve()

    def validate(self) -> None:
        if self.values["routes.export"] == "caddy" and not self.values["routes.caddy_listen"]:
            raise ConfigError(
                "routes.caddy_listen",
                "",
                "host:port of the server to own in Caddy (required with routes.export = caddy)",
                self.sources["routes.caddy_listen"],
            )
        start, end = self.port_range
        if start > end:
            raise ConfigError(
                "plugins.port_range_end",
                end,
                f"a port >= plugins.port_range_start ({start})",
                self.sources["plugins.port_range_end"],
            )
        if self.values["redis.url"] and not self.values["fleet.advertise_url"] and self.host in WILDCARD_HOSTS:
            raise ConfigError(
                "fleet.advertise_url",
                "",
                f"the URL other nodes reach this node's gateway at (server.host is {self.host}, which names no host)",
                self.sources["fleet.advertise_url"],
            )

    def describe(self) -> list[tuple[str, str, str]]:
        """(key, shown value, source) for every setting; secrets are masked."""
        rows = []
        for f in FIELDS:
            value = self.values[f.name]
            if f.secret and value:
                shown = "*** (set)"
            elif f.mask is not None:
                shown = f.mask(str(value))
            elif isinstance(value, tuple):
                shown = ", ".join(value)
            else:
                shown = masked_url(value) if isinstance(value, str) and "@" in value else str(value)
            rows.append((f.name, shown, self.sources[f.name]))
        return rows


def load_settings(
    config_path: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, object] | None = None,
    base_dir: Path | None = None,
) -> Settings:
    """Build Settings from defaults, the TOML file, the environment and flag overrides (in that order).

    ``config_path`` None means ./supervisor.toml when it exists. ``overrides`` maps "section.key" to a value.
    """
    env = os.environ if env is None else env
    settings = Settings(base_dir=base_dir or Path.cwd())
    path: Path | None
    if config_path is not None:
        path = Path(config_path)
        if not path.is_file():
            raise ConfigError("--config", str(config_path), "an existing TOML file")
    else:
        candidate = settings.base_dir / DEFAULT_CONFIG_FILE
        path = candidate if candidate.is_file() else None
    if path is not None:
        _apply_file(settings, path)
    for f in FIELDS:
        if f.env in env:
            settings.set(f.name, env[f.env], f"env {f.env}")
    for name, value in (overrides or {}).items():
        if value is not None:
            settings.set(name, value, "flag")
    settings.validate()
    return settings


def _apply_file(settings: Settings, path: Path) -> None:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError("--config", str(path), f"a readable TOML file ({exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("--config", str(path), f"valid TOML ({exc})") from None
    settings.config_file = path
    sections = {f.section for f in FIELDS}
    for section, table in data.items():
        if section not in sections:
            settings.tables[section] = table
            continue
        if not isinstance(table, dict):
            raise ConfigError(section, table, "a [section] table", str(path))
        for key, value in table.items():
            settings.set(f"{section}.{key}", value, str(path))
