"""Value parsers of settings: each takes what TOML, an env var or a flag gave and returns the typed value, or
raises ValueError (the settings turn it into a ConfigError naming the key and what is allowed)."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from urllib.parse import urlsplit

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


def parse_redis_url(value: object) -> str:
    """Empty (no Redis), or redis://[user:password@]host[:port][/db], rediss:// for TLS."""
    s = parse_str(value).strip()
    if not s:
        return ""
    parts = urlsplit(s)
    if parts.scheme not in ("redis", "rediss") or not parts.hostname:
        raise ValueError("not a redis URL")
    parts.port  # noqa: B018 - raises ValueError on a bad port
    if parts.path.strip("/") and not parts.path.strip("/").isdigit():
        raise ValueError("not a database number")
    return s


def parse_name(pattern: str, what: str) -> Callable[[object], str]:
    """A parser of names (a fleet node, a server in Caddy's config) that must match ``pattern`` whole."""

    def parse(value: object) -> str:
        s = parse_str(value).strip()
        if not re.fullmatch(pattern, s):
            raise ValueError(f"not a {what}")
        return s

    return parse


parse_node_name = parse_name(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", "node name")
parse_caddy_name = parse_name(r"[A-Za-z0-9._-]{1,64}", "name")


def parse_http_url(value: object) -> str:
    """Empty (derived), or an http(s):// base URL without path, query or credentials."""
    s = parse_str(value).strip().rstrip("/")
    if not s:
        return ""
    parts = urlsplit(s)
    parts.port  # noqa: B018 - raises ValueError on a bad port
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.username or parts.path or parts.query:
        raise ValueError("not a base URL")
    return s


def parse_bool(value: object) -> bool:
    if isinstance(value, bool):
        return value
    s = str(value).strip().lower()
    if s in ("1", "true", "yes", "on"):
        return True
    if s in ("0", "false", "no", "off"):
        return False
    raise ValueError("not a boolean")


def parse_int(lo: int, hi: int) -> Callable[[object], int]:
    def parse(value: object) -> int:
        if isinstance(value, bool):
            raise ValueError("not an integer")
        n = int(str(value).strip()) if not isinstance(value, int) else value
        if not lo <= n <= hi:
            raise ValueError("out of range")
        return n

    return parse


def parse_console_store(value: object) -> str:
    """``sqlite`` or a PostgreSQL DSN (postgresql:// or postgres://)."""
    text = parse_str(value).strip()
    if text == "sqlite" or re.match(r"^postgres(ql)?://[^\s]+$", text):
        return text
    raise ValueError(text)


def parse_str(value: object) -> str:
    if not isinstance(value, str | int | float) or isinstance(value, bool):
        raise ValueError("not a string")
    return str(value)


def parse_choice(*choices: str) -> Callable[[object], str]:
    def parse(value: object) -> str:
        s = str(value).strip().lower()
        if s not in choices:
            raise ValueError("not allowed")
        return s

    return parse


def parse_networks(value: object) -> tuple[str, ...]:
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


def parse_host_patterns(value: object) -> tuple[str, ...]:
    """Host names, ".example.com" (the domain and its subdomains), IPs or networks, or "*" for any Host."""
    items = value.split(",") if isinstance(value, str) else value
    if isinstance(items, list | tuple) and any(str(item).strip() == "*" for item in items):
        return ("*",)
    return parse_networks(value)


def size_between(lo: int, hi: int) -> Callable[[object], int]:
    def parse(value: object) -> int:
        n = parse_size(value)
        if not lo <= n <= hi:
            raise ValueError("out of range")
        return n

    return parse


def positive_duration(value: object) -> float:
    seconds = parse_duration(value)
    if seconds <= 0:
        raise ValueError("not positive")
    return seconds


def parse_host(value: object) -> str:
    s = parse_str(value).strip()
    if not s or not re.fullmatch(r"[A-Za-z0-9.:\-\[\]]+", s):
        raise ValueError("not a host")
    return s


def parse_admin_url(value: object) -> str:
    s = parse_str(value).strip()
    try:
        parts = urlsplit(s)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        raise ValueError("not a URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("not an http(s) URL")
    return s.rstrip("/")


def parse_listen(value: object) -> str:
    """``host:port`` (``[v6]:port``), or empty for unset."""
    s = parse_str(value).strip()
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
