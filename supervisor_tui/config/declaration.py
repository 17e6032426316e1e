"""Every setting, declared once: one frozen dataclass per TOML section, one field per key.

A field's annotation is its type (mypy checks ``settings.gateway.timeout`` as a float), and ``setting(...)`` gives
the rest: the default as an operator writes it in TOML, the parser, what is allowed, what it is for, and whether it
is a secret. ``[section] key`` in TOML is env ``SUPERVISOR_TUI_SECTION_KEY``. ``FIELDS`` is derived from these
classes for what needs to walk every key (loading, ``supervisor-tui config``, the README's table).
"""

from __future__ import annotations

import dataclasses
import json
import re
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar, cast, get_type_hints

from supervisor_tui.config.parse import (
    parse_admin_url,
    parse_bool,
    parse_caddy_name,
    parse_choice,
    parse_console_store,
    parse_duration,
    parse_host,
    parse_host_patterns,
    parse_http_url,
    parse_int,
    parse_listen,
    parse_networks,
    parse_node_name,
    parse_redis_url,
    parse_size,
    parse_str,
    positive_duration,
    size_between,
)
from supervisor_tui.config.urls import masked_url

ENV_PREFIX = "SUPERVISOR_TUI_"

T = TypeVar("T")
_SETTING = "setting"  # the metadata key of a setting's declaration on a section's dataclass field


@dataclass(frozen=True)
class Declared:
    """What ``setting()`` records about a key besides its name and type."""

    written_default: object  # as in TOML: "10m", "10MiB", 4000
    parse: Callable[[object], Any]
    allowed: str
    help: str
    secret: bool
    mask: Callable[[str], str] | None
    shown_default: str | None


def setting(
    default: object,
    parse: Callable[[object], T],
    allowed: str,
    help: str,
    *,
    secret: bool = False,
    mask: Callable[[str], str] | None = None,
    shown_default: str | None = None,
) -> T:
    """One key of a section. ``default`` is written as in TOML and parsed here, so a default passes the same
    check as a user's value. ``secret``: never shown; ``mask``: shown without the secret it holds (a URL's
    password); ``shown_default`` documents a default computed on this machine (the host name)."""
    declared = Declared(default, parse, allowed, help, secret, mask, shown_default)
    return cast(T, dataclasses.field(default=parse(default), metadata={_SETTING: declared}))


def _default_node() -> str:
    """The host name, trimmed to what a node name may hold."""
    name = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname())[:64].strip("-.") or "node"
    return name if name[0].isalnum() else f"n{name}"[:64]


_PORT = parse_int(1, 65535)
_PORT0 = parse_int(0, 65535)
_BOOL = "true or false"


@dataclass(frozen=True)
class ServerSettings:
    host: str = setting("127.0.0.1", parse_host, "a host name or IP address", "address the API binds to")
    port: int = setting(4000, _PORT0, "an integer 0-65535 (0 = any free port)", "API port")
    max_body: int = setting("1MiB", parse_size, "a size like 1MiB", "largest admin API request body")
    max_header_bytes: int = setting(
        "64KiB",
        size_between(1024, 16 * 1024**2),
        "a size 1KiB-16MiB like 64KiB",
        "largest request head (request line and headers): 431 beyond it",
    )
    max_headers: int = setting(
        100, parse_int(8, 10_000), "an integer 8-10000", "most header lines in one request: 431 beyond it"
    )
    header_timeout: float = setting(
        "15s",
        positive_duration,
        "a duration over 0 like 15s",
        "time a request head may take to arrive: 408 and close after it",
    )
    idle_timeout: float = setting(
        "5s",
        positive_duration,
        "a duration over 0 like 5s",
        "idle time after which a keep-alive connection is closed",
    )
    max_connections: int = setting(
        0,
        parse_int(0, 1_000_000),
        "an integer 0-1000000 (0 = half the open-files limit)",
        "open client connections; beyond it new ones get 503 and are closed",
    )
    allowed_hosts: tuple[str, ...] = setting(
        (),
        parse_host_patterns,
        "a list of host names, .domains, IPs or networks, or *",
        "Host values answered besides loopback names (none listed: loopback only when bound to loopback)",
    )


@dataclass(frozen=True)
class PluginsSettings:
    dir: str = setting("./plugins", parse_str, "a directory path", "where plugin folders live")
    port_range_start: int = setting(4001, _PORT, "an integer 1-65535", "first port handed to plugins")
    port_range_end: int = setting(4999, _PORT, "an integer 1-65535", "last port handed to plugins")
    watch: bool = setting(True, parse_bool, _BOOL, "reload plugins when their folders change")
    cgroups: bool = setting(
        True,
        parse_bool,
        _BOOL,
        "track plugin processes in cgroups v2 where writable (false: process group, marker and subreaper only)",
    )


@dataclass(frozen=True)
class GatewaySettings:
    max_body: int = setting("10MiB", parse_size, "a size like 10MiB", "largest proxied body")
    timeout: float = setting("30s", parse_duration, "a duration like 30s", "upstream response timeout")
    upstream_allowlist: tuple[str, ...] = setting(
        ("127.0.0.0/8", "::1/128", "localhost"),
        parse_networks,
        "a list of hosts or networks",
        "hosts external plugins may announce as upstreams",
    )


@dataclass(frozen=True)
class RoutesSettings:
    export: str = setting(
        "none",
        parse_choice("none", "caddy"),
        "none or caddy",
        "keep a gateway in front in step with the route table (caddy: through its admin API)",
    )
    caddy_admin: str = setting(
        "http://127.0.0.1:2019", parse_admin_url, "an http(s) URL", "Caddy's admin API", mask=masked_url
    )
    caddy_listen: str = setting(
        "",
        parse_listen,
        "host:port, e.g. 127.0.0.1:8080",
        "address of the server the supervisor owns in Caddy (required with routes.export = caddy)",
    )
    caddy_server: str = setting(
        "supervisor-tui", parse_caddy_name, "letters, digits, . _ -", "name of that server in Caddy's config"
    )


@dataclass(frozen=True)
class ExternalSettings:
    heartbeat_interval: float = setting(
        "30s",
        parse_duration,
        "a duration like 30s",
        "expected heartbeat interval of external plugins (LOST after twice that)",
    )


@dataclass(frozen=True)
class RedisSettings:
    url: str = setting(
        "",
        parse_redis_url,
        "empty, or redis://[user:password@]host:port/db (rediss:// for TLS)",
        "the fleet's Redis: the Redis registration protocol's channels and node presence (empty = off)",
        mask=masked_url,
    )
    dead_after: float = setting(
        "60s",
        positive_duration,
        "a duration over 0 like 60s",
        "silence after which a plugin registered over Redis is LOST, and a node is lost",
    )
    heartbeat_interval: float = setting(
        "30s",
        positive_duration,
        "a duration over 0 like 30s",
        "how often this node's running plugins are announced on plugin:heartbeat and its presence refreshed",
    )
    default_host: str = setting(
        "127.0.0.1",
        parse_host,
        "a host name or IP address",
        "upstream host of a Redis registration that names no host or url",
    )
    announce: bool = setting(
        True, parse_bool, _BOOL, "publish this node's plugins on the registration protocol's channels"
    )


@dataclass(frozen=True)
class FleetSettings:
    node: str = setting(
        _default_node(),
        parse_node_name,
        "a name of letters, digits, '.', '_' or '-' (at most 64)",
        "this supervisor's name in the fleet",
        shown_default="the host name",
    )
    advertise_url: str = setting(
        "",
        parse_http_url,
        "empty, or an http(s):// base URL like http://10.0.0.5:4000",
        "where other nodes reach this node's gateway (empty: from server.host and server.port)",
    )


@dataclass(frozen=True)
class DataSettings:
    dir: str = setting("./data", parse_str, "a directory path", "database, logs and admin token")
    log_max_bytes: int = setting("10MiB", parse_size, "a size like 10MiB", "rotate plugin logs at")
    log_backups: int = setting(3, parse_int(0, 100), "an integer 0-100", "rotated log files kept")
    log_ring_lines: int = setting(
        10_000, parse_int(100, 10_000_000), "an integer >= 100", "log lines kept in memory per source"
    )


@dataclass(frozen=True)
class AuthSettings:
    admin_token: str = setting("", parse_str, "a string", "admin API token (generated if empty)", secret=True)
    plugin_token: str = setting(
        "", parse_str, "a string", "token external plugins register with (generated if empty)", secret=True
    )
    public_metrics: bool = setting(False, parse_bool, _BOOL, "serve /metrics without a token")


@dataclass(frozen=True)
class ConsolesSettings:
    auth: str = setting(
        "token",
        parse_choice("token", "none"),
        "token or none",
        "whether heartbeats must carry the console's token",
    )
    store: str = setting(
        "sqlite",
        parse_console_store,
        "sqlite or a postgresql:// DSN",
        "where consoles are kept: the SQLite database in data.dir, or a PostgreSQL shared by several supervisors",
        mask=masked_url,
    )
    enrollment_token: str = setting(
        "", parse_str, "a string", "required to register new consoles when set", secret=True
    )
    inactive_after: float = setting(
        "10m", parse_duration, "a duration like 10m", "silence after which a console is inactive"
    )
    heartbeat_retention: float = setting("7d", parse_duration, "a duration like 7d", "how long raw heartbeats are kept")
    heartbeats_per_console: int = setting(
        10_000, parse_int(1, 10_000_000), "an integer >= 1", "raw heartbeats kept per console"
    )
    transition_retention: float = setting(
        "93d", parse_duration, "a duration like 93d", "how long state transitions are kept"
    )
    register_rate: int = setting(
        60,
        parse_int(0, 1_000_000),
        "an integer >= 0 (0 = no limit)",
        "console registrations a minute from one address: 429 beyond it",
    )
    register_rate_global: int = setting(
        600,
        parse_int(0, 1_000_000),
        "an integer >= 0 (0 = no limit)",
        "console registrations a minute from all addresses together: 429 beyond it",
    )


@dataclass(frozen=True)
class LogSettings:
    format: str = setting("human", parse_choice("human", "json"), "human or json", "supervisor log format")
    level: str = setting(
        "info",
        parse_choice("debug", "info", "warning", "error"),
        "debug, info, warning or error",
        "lowest level printed",
    )


@dataclass(frozen=True)
class UiSettings:
    read_only: bool = setting(False, parse_bool, _BOOL, "refuse every action that changes state")


@dataclass
class Sections:
    """The TOML sections, in the order ``supervisor-tui config`` and the README list them."""

    server: ServerSettings = dataclasses.field(default_factory=ServerSettings)
    plugins: PluginsSettings = dataclasses.field(default_factory=PluginsSettings)
    gateway: GatewaySettings = dataclasses.field(default_factory=GatewaySettings)
    routes: RoutesSettings = dataclasses.field(default_factory=RoutesSettings)
    external: ExternalSettings = dataclasses.field(default_factory=ExternalSettings)
    redis: RedisSettings = dataclasses.field(default_factory=RedisSettings)
    fleet: FleetSettings = dataclasses.field(default_factory=FleetSettings)
    data: DataSettings = dataclasses.field(default_factory=DataSettings)
    auth: AuthSettings = dataclasses.field(default_factory=AuthSettings)
    consoles: ConsolesSettings = dataclasses.field(default_factory=ConsolesSettings)
    log: LogSettings = dataclasses.field(default_factory=LogSettings)
    ui: UiSettings = dataclasses.field(default_factory=UiSettings)


@dataclass(frozen=True)
class Field:
    """One setting as the code that walks all of them sees it: where it lives, how to parse and show it."""

    section: str
    key: str
    default: Any  # parsed
    declared: Declared

    @property
    def name(self) -> str:
        return f"{self.section}.{self.key}"

    @property
    def env(self) -> str:
        return f"{ENV_PREFIX}{self.section.upper()}_{self.key.upper()}"

    @property
    def parse(self) -> Callable[[object], Any]:
        return self.declared.parse

    @property
    def allowed(self) -> str:
        return self.declared.allowed

    @property
    def help(self) -> str:
        return self.declared.help

    @property
    def secret(self) -> bool:
        return self.declared.secret

    @property
    def mask(self) -> Callable[[str], str] | None:
        return self.declared.mask

    @property
    def toml_default(self) -> str:
        """The default as written in supervisor.toml (or what it is computed from)."""
        if self.declared.shown_default is not None:
            return self.declared.shown_default
        written = self.declared.written_default
        if isinstance(written, tuple):
            return json.dumps(list(written))
        return json.dumps(written)  # TOML's strings, integers and booleans are JSON's

    def value_in(self, sections: Sections) -> Any:
        return getattr(getattr(sections, self.section), self.key)


def _declared_fields() -> tuple[Field, ...]:
    found = []
    section_types = get_type_hints(Sections)
    for part in dataclasses.fields(Sections):
        for key in dataclasses.fields(section_types[part.name]):
            found.append(Field(part.name, key.name, key.default, key.metadata[_SETTING]))
    return tuple(found)


FIELDS: tuple[Field, ...] = _declared_fields()
FIELDS_BY_NAME: dict[str, Field] = {f.name: f for f in FIELDS}
SECTION_NAMES = frozenset(f.section for f in FIELDS)
