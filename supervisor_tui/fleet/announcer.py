"""This node speaks the Redis registration protocol too: its plugins go out on its three channels.

A local plugin reaching RUNNING is published on ``plugin:registered`` with the protocol's fields plus ``url`` (this
node's gateway: ``advertise_url + /api/plugins/<key>``) and ``node``; while it runs, ``plugin:heartbeat`` every
``redis.heartbeat_interval``; when it leaves RUNNING, ``plugin:unregistered``. The registration is also kept in
the hash ``fleet:plugins:<node>`` (expiring with the presence record): a node that starts later hears only
heartbeats, and reads the registration it missed from there. Plugins registered here by others
(external ones) are not announced again: they announce themselves.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

from redis.exceptions import RedisError

from supervisor_tui.core.events import PluginStateChanged
from supervisor_tui.core.supervisor import Supervisor
from supervisor_tui.fleet.link import RedisLink
from supervisor_tui.fleet.listener import gateway_path
from supervisor_tui.fleet.messages import (
    ENCODER,
    HEARTBEAT,
    REGISTERED,
    UNREGISTERED,
    Heartbeat,
    Registered,
    Unregistered,
)
from supervisor_tui.plugins.external import ExternalPlugin

RUNNING = "RUNNING"
PLUGINS_PREFIX = "fleet:plugins:"


def plugins_key(node: str) -> str:
    return f"{PLUGINS_PREFIX}{node}"


def _millis() -> int:
    return int(time.time() * 1000)  # the registration protocol's Date.now()


class PluginAnnouncer:
    """Publishes this node's RUNNING plugins; ``announced`` is what Redis was last told runs here."""

    def __init__(self, sup: Supervisor, link: RedisLink, node: str, advertise_url: str, expire: int) -> None:
        self.sup, self.link, self.node = sup, link, node
        self.expire = expire  # seconds the registrations hash outlives this node's last refresh
        self.advertise_url = advertise_url.rstrip("/")
        self.announced: set[str] = set()
        self.published = 0

    def registered(self, snap: Any) -> Registered:
        """The plugin:registered message of a local plugin snapshot."""
        return Registered(
            key=snap.key,
            name=snap.name,
            version=snap.version,
            port=snap.port,
            endpoints=[{"method": e.method, "path": e.path, "description": e.description} for e in snap.endpoints],
            timestamp=_millis(),
            url=f"{self.advertise_url}{gateway_path(snap.key)}",
            node=self.node,
        )

    def _local(self, key: str) -> Any | None:
        plugin = self.sup.registry.get(key)
        if plugin is None or isinstance(plugin, ExternalPlugin):
            return None
        return plugin.snapshot()

    async def on_event(self, event: PluginStateChanged) -> None:
        if event.to_state == RUNNING:
            snap = self._local(event.key)
            if snap is not None and snap.state == RUNNING:
                await self._announce(snap)
        elif event.key in self.announced:
            self.announced.discard(event.key)
            await self._keep(event.key, None)
            await self._publish(UNREGISTERED, Unregistered(key=event.key, timestamp=_millis(), node=self.node))

    async def _announce(self, snap: Any) -> None:
        message = self.registered(snap)
        await self._keep(snap.key, message)
        await self._publish(REGISTERED, message)
        self.announced.add(snap.key)

    async def _keep(self, key: str, message: Registered | None) -> None:
        """Keep (or drop) ``key``'s registration in this node's hash, for nodes that start later."""
        client = self.link.client
        if client is None:
            return
        with contextlib.suppress(RedisError, OSError):
            if message is None:
                await client.hdel(plugins_key(self.node), key)
            else:
                await client.hset(plugins_key(self.node), key, ENCODER.encode(message))
                await client.expire(plugins_key(self.node), self.expire)

    async def lookup(self, node: str, key: str) -> bytes | None:
        """The registration ``node`` keeps for ``key``, or None."""
        client = self.link.client
        if client is None:
            return None
        try:
            value = await client.hget(plugins_key(node), key)
        except (RedisError, OSError):
            return None
        if value is None:
            return None
        return value if isinstance(value, bytes) else str(value).encode()

    async def announce_all(self) -> None:
        """Every local RUNNING plugin on plugin:registered (on connect: Redis may have missed them)."""
        client = self.link.client
        if client is not None:
            with contextlib.suppress(RedisError, OSError):
                await client.delete(plugins_key(self.node))  # what a previous run left: what runs now replaces it
        for snap in self.sup.plugins():
            if snap.state == RUNNING and self._local(snap.key) is not None:
                await self._announce(snap)

    async def heartbeat_all(self) -> None:
        client = self.link.client
        if client is not None and self.announced:
            with contextlib.suppress(RedisError, OSError):
                await client.expire(plugins_key(self.node), self.expire)
        for key in sorted(self.announced):
            snap = self._local(key)
            if snap is None or snap.state != RUNNING:
                continue
            await self._publish(HEARTBEAT, Heartbeat(key=key, timestamp=_millis(), status="alive", node=self.node))

    async def unannounce_all(self) -> None:
        """plugin:unregistered for everything announced (this node is stopping)."""
        for key in sorted(self.announced):
            await self._publish(UNREGISTERED, Unregistered(key=key, timestamp=_millis(), node=self.node))
        self.announced.clear()
        client = self.link.client
        if client is not None:
            with contextlib.suppress(RedisError, OSError):
                await client.delete(plugins_key(self.node))

    async def _publish(self, channel: str, message: Registered | Heartbeat | Unregistered) -> None:
        if await self.link.publish(channel, ENCODER.encode(message)):
            self.published += 1
