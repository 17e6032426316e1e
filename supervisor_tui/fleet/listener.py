"""Seed 000's messages received on Redis become external plugins, exactly like HTTP registrations.

``plugin:registered`` registers (or re-registers) the key with the supervisor, LOST after ``redis.dead_after``
without a heartbeat; ``plugin:heartbeat`` keeps it RUNNING (a LOST one comes back); ``plugin:unregistered``
drops it. The upstream is the message's ``url``, else its ``host`` (or ``redis.default_host``) and ``port``; the
allowlist and the rule that a local key cannot be taken over apply as for HTTP. A message of our own node (its
``node`` is ours) is our own announcement coming back and is skipped. Whatever is refused is one log line and a
counter on ``/metrics``; nothing else changes.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from supervisor_tui.core.events import RegistrationRefused
from supervisor_tui.core.printable import printable
from supervisor_tui.core.supervisor import Supervisor
from supervisor_tui.fleet.messages import (
    Heartbeat,
    MalformedMessage,
    Registered,
    Unregistered,
    decode,
    port_number,
)
from supervisor_tui.fleet.registrations import RegistrationStore
from supervisor_tui.plugins.external import ExternalPlugin
from supervisor_tui.plugins.manifest import ManifestError
from supervisor_tui.plugins.model import PluginActionError, PluginNotFound

SOURCE = "redis"
RESTORED = "restored after a restart: waiting for its next heartbeat"
MAX_UNKNOWN_REMEMBERED = 1000  # keys whose unknown heartbeat was logged (one line per key, bounded)


def gateway_path(key: str) -> str:
    """Where a node's gateway serves ``key``: the path of an announced ``url``."""
    return f"/api/plugins/{key}"


class RegistrationListener:
    """Applies received registration messages to the supervisor; ``refused`` counts what it did not apply, by reason."""

    def __init__(self, sup: Supervisor, registrations: RegistrationStore, node: str) -> None:
        self.sup = sup
        self.registrations = registrations
        self.node = node
        self.dead_after = sup.settings.redis.dead_after
        self.default_host = sup.settings.redis.default_host
        self.received: Counter[str] = Counter()  # messages by channel
        self.refused: Counter[str] = Counter()  # messages not applied, by reason
        self._unknown_logged: set[str] = set()
        # (node, key) -> the plugin:registered message that node keeps in Redis for it, or None
        self.lookup: Callable[[str, str], Awaitable[bytes | None]] | None = None

    async def restore(self) -> int:
        """Register every saved registration LOST (its next heartbeat restores it); returns how many."""
        restored = 0
        for data, _ in await self.registrations.load():
            try:
                message = decode("plugin:registered", data)
            except MalformedMessage:
                continue  # written by us: cannot happen short of a hand-edited database
            assert isinstance(message, Registered)
            try:
                await self._register(message, lost=RESTORED)
            except (MalformedMessage, ManifestError, PermissionError, PluginActionError) as exc:
                self.sup.logs.warning(
                    f"redis: saved registration of {printable(message.key)!r} dropped: {exc}",
                    event="redis_registration",
                )
                self.registrations.forget(message.key, message.node or "")
                continue
            restored += 1
        return restored

    async def handle(self, channel: str, data: bytes) -> None:
        """One message as Redis delivered it."""
        self.received[channel] += 1
        try:
            message = decode(channel, data)
        except MalformedMessage as exc:
            self._refuse(exc.reason, f"{channel}: malformed message ignored: {exc}")
            return
        if message.node is not None and message.node == self.node:
            return  # our own announcement
        if isinstance(message, Registered):
            await self._registered(message)
        elif isinstance(message, Heartbeat):
            await self._heartbeat(message)
        elif isinstance(message, Unregistered):
            await self._unregistered(message)

    async def _registered(self, message: Registered) -> None:
        key = printable(message.key)
        try:
            snap = await self._register(message)
        except MalformedMessage as exc:
            self._refuse(exc.reason, f"plugin:registered {key!r}: malformed message ignored: {exc}")
            return
        except ManifestError as exc:
            self._refuse("invalid", f"plugin:registered {key!r}: refused: {exc}")
            return
        except PermissionError as exc:
            self._refuse("upstream_not_allowed", f"plugin:registered {key!r}: refused: {exc}", message.key)
            return
        except PluginActionError as exc:
            self._refuse("key_taken", f"plugin:registered {key!r}: refused: {exc}", message.key)
            return
        self.registrations.save(message)
        self._unknown_logged.discard(message.key)
        self.sup.logs.info(
            f"redis: {key} registered at {snap.upstream}"
            + (f" (node {printable(message.node)})" if message.node else ""),
            event="redis_registration",
            plugin=message.key,
        )

    async def _register(self, message: Registered, lost: str = "") -> Any:
        payload, base_path = self._payload(message)
        if message.node and base_path:  # another supervisor's plugin: one more upstream for the key
            return await self.sup.add_peer(payload, message.node, base_path, self.dead_after, lost=lost)
        return await self.sup.register_external(
            payload,
            lost_after=self.dead_after,
            source=SOURCE,
            node=message.node or "",
            lost=lost,
            base_path=base_path,
        )

    def _payload(self, message: Registered) -> tuple[dict[str, Any], str]:
        """The HTTP registration payload of a registration message, and its upstream's base path (a node's gateway)."""
        payload: dict[str, Any] = {
            "key": message.key,
            "name": message.name,
            "version": message.version,
            "endpoints": message.endpoints,
        }
        base_path = ""
        if message.url:
            url = message.url
            try:
                parts = urlsplit(url)
            except ValueError:
                raise MalformedMessage("wrong_type", f"url is not a URL: {url!r}") from None
            if message.node and parts.path.rstrip("/") == gateway_path(message.key):
                # Another supervisor's plugin: reached through that node's gateway, at the same path
                base_path, url = gateway_path(message.key), urlunsplit((parts.scheme, parts.netloc, "", "", ""))
            payload["url"] = url
            return payload, base_path
        port = port_number(message.port)
        if port is None:
            raise MalformedMessage("wrong_type", f"port must be a number or a numeric string, got {message.port!r}")
        payload["host"] = message.host or self.default_host
        payload["port"] = port
        return payload, base_path

    async def _heartbeat(self, message: Heartbeat) -> None:
        try:
            if message.node:  # another supervisor's plugin (PluginNotFound: one we have not learnt yet)
                self.sup.heartbeat_peer(message.key, message.node)
            else:
                self.sup.heartbeat_external(message.key)
        except PluginNotFound:
            if message.node and self.lookup is not None and await self._learn(message.node, message.key):
                return
            self.refused["unknown_key"] += 1
            if message.key not in self._unknown_logged and len(self._unknown_logged) < MAX_UNKNOWN_REMEMBERED:
                self._unknown_logged.add(message.key)
                self.sup.logs.warning(
                    f"plugin:heartbeat for {printable(message.key)!r}, which never registered here: ignored until "
                    "it publishes plugin:registered",
                    event="redis_message_refused",
                    reason="unknown_key",
                )
        except PluginActionError:
            self._refuse("key_taken", f"plugin:heartbeat {printable(message.key)!r}: the key is a local plugin's")

    async def _learn(self, node: str, key: str) -> bool:
        """A supervisor's plugin announced before we listened: its registration is in Redis (see announcer)."""
        assert self.lookup is not None
        data = await self.lookup(node, key)
        if data is None:
            return False
        try:
            message = decode("plugin:registered", data)
        except MalformedMessage:
            return False
        if not isinstance(message, Registered) or message.key != key or message.node != node:
            return False  # anyone can write to Redis: only the record that matches the heartbeat counts
        await self._registered(message)
        return True

    async def _unregistered(self, message: Unregistered) -> None:
        if message.node and self.sup.remove_peer(message.key, message.node):
            self.registrations.forget(message.key, message.node)
            return
        plugin = self.sup.registry.get(message.key)
        if not isinstance(plugin, ExternalPlugin):
            reason = "unknown_key" if plugin is None else "key_taken"
            self._refuse(
                reason, f"plugin:unregistered {printable(message.key)!r}: no such plugin registered over Redis"
            )
            return
        await self.sup.unregister_external(message.key)
        self.registrations.forget(message.key)

    def _refuse(self, reason: str, line: str, key: str | None = None) -> None:
        self.refused[reason] += 1
        self.sup.logs.warning(printable(f"redis: {line}"), event="redis_message_refused", reason=reason)
        if key is not None:
            self.sup.bus.publish(RegistrationRefused(key=key, source=SOURCE, reason=line))
