"""Rules between keys, checked once every layer is applied: each names the key to change and where it came from."""

from __future__ import annotations

from supervisor_tui.config.errors import ConfigError
from supervisor_tui.config.settings import Settings

WILDCARD_HOSTS = ("0.0.0.0", "::", "[::]", "")


def validate(settings: Settings) -> None:
    """Raise ConfigError for the first rule ``settings`` breaks."""
    if settings.routes.export == "caddy" and not settings.routes.caddy_listen:
        raise ConfigError(
            "routes.caddy_listen",
            "",
            "host:port of the server to own in Caddy (required with routes.export = caddy)",
            settings.sources["routes.caddy_listen"],
        )
    start, end = settings.port_range
    if start > end:
        raise ConfigError(
            "plugins.port_range_end",
            end,
            f"a port >= plugins.port_range_start ({start})",
            settings.sources["plugins.port_range_end"],
        )
    host = settings.server.host
    if settings.redis.url and not settings.fleet.advertise_url and host in WILDCARD_HOSTS:
        raise ConfigError(
            "fleet.advertise_url",
            "",
            f"the URL other nodes reach this node's gateway at (server.host is {host}, which names no host)",
            settings.sources["fleet.advertise_url"],
        )
