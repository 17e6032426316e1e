"""Plugins that run elsewhere: external plugins (the registration protocol over HTTP or Redis) and peers (other
fleet nodes serving a key at their gateway). Both stay known while their heartbeats come; silent, they are LOST.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from supervisor_tui.core.events import EventBus, PluginPeersChanged
from supervisor_tui.core.supervisor.registry import PluginRegistry
from supervisor_tui.core.supervisor.reports import PluginReports
from supervisor_tui.plugins.external import ExternalPlugin, ExternalRegistrations
from supervisor_tui.plugins.model import PluginActionError, PluginNotFound, PluginSnapshot, PluginState
from supervisor_tui.plugins.peers import Peer, PeerPlugin

EXTERNAL_SWEEP_INTERVAL = 1.0  # seconds between checks for silent external plugins


class ExternalPlugins:
    """Registers, keeps alive and sweeps external plugins and peers in ``registry``; ``parser`` validates their
    messages (the upstream allowlist, the defaults)."""

    def __init__(
        self, registry: PluginRegistry, parser: ExternalRegistrations, reports: PluginReports, bus: EventBus
    ) -> None:
        self.registry = registry
        self.parser = parser
        self.reports = reports
        self.bus = bus
        self.peers: dict[str, dict[str, Peer]] = {}  # other fleet nodes serving a key, by key and node

    # -- external plugins ----------------------------------------------------------------------------------------
    def register(
        self, payload: dict[str, Any], lost_after: float | None, source: str, node: str, lost: str, base_path: str
    ) -> PluginSnapshot:
        plugin = self.parser.parse(payload, lost_after=lost_after, source=source, node=node, base_path=base_path)
        existing = self.registry.get(plugin.key)
        if existing is not None and existing.kind != ExternalPlugin.kind:
            raise PluginActionError(plugin.key, f"the key is used by a {existing.kind} plugin and cannot be taken over")
        old = existing.snapshot().state if existing is not None else str(PluginState.STOPPED)
        if existing is not None:
            self.registry.drop(plugin.key, "re-registered")
        if lost:
            plugin.set_state(PluginState.LOST, lost)
        plugin.on_health = self._on_health
        self.registry.add_announced(plugin)
        reason = lost or f"registered from {plugin.upstream}" + (f" over {source}" if source != "http" else "")
        self.reports.record_state_change(plugin, old, str(plugin.state), reason)
        return plugin.snapshot()

    def _on_health(self, plugin: ExternalPlugin, healthy: bool, detail: str) -> None:
        self.reports.publish_health(plugin.key, healthy, detail)

    def heartbeat(self, key: str) -> PluginSnapshot:
        plugin = self._external(key)
        plugin.last_heartbeat = time.time()
        if plugin.state == PluginState.LOST:
            plugin.set_state(PluginState.RUNNING, "heartbeat received")
            self.reports.record_state_change(
                plugin, str(PluginState.LOST), str(PluginState.RUNNING), "heartbeat received"
            )
        return plugin.snapshot()

    def unregister(self, key: str) -> None:
        plugin = self._external(key)
        old = str(plugin.state)
        plugin.set_state(PluginState.STOPPED, "unregistered")
        self.reports.record_state_change(plugin, old, str(PluginState.STOPPED), "unregistered")
        self.registry.drop(key, "unregistered")

    def _external(self, key: str) -> ExternalPlugin:
        plugin = self.registry.require(key)
        external = self.registry.announced.get(key)
        if external is None:
            raise PluginActionError(key, f"not an external plugin (kind {plugin.kind})")
        return external

    # -- peers ---------------------------------------------------------------------------------------------------
    def add_peer(self, payload: dict[str, Any], node: str, base_path: str, lost_after: float, lost: str) -> str:
        """Node ``node`` serves ``payload``'s key: returns the key."""
        parsed = self.parser.parse(payload, lost_after=lost_after, source="redis", node=node, base_path=base_path)
        peers = self.peers.setdefault(parsed.key, {})
        peers[node] = Peer(node, parsed.upstream, lost_after, time.time(), up=not lost, detail=lost or "announced")
        existing = self.registry.get(parsed.key)
        if existing is None:
            plugin = PeerPlugin(parsed, peers)
            self.registry.add_announced(plugin)
            self.reports.record_state_change(plugin, str(PluginState.STOPPED), str(plugin.state), plugin.detail)
        else:
            self._peers_changed(parsed.key, node, not lost)
        return parsed.key

    def heartbeat_peer(self, key: str, node: str) -> None:
        peer = self.peers.get(key, {}).get(node)
        if peer is None:
            raise PluginNotFound(key)
        peer.last_heartbeat = time.time()
        if not peer.up:
            peer.up, peer.detail = True, "heartbeat received"
            self._peers_changed(key, node, True)

    def remove_peer(self, key: str, node: str) -> bool:
        peers = self.peers.get(key, {})
        if peers.pop(node, None) is None:
            return False
        if not peers:
            del self.peers[key]
        plugin = self.registry.announced.get(key)
        if plugin is not None and plugin.stands_for_peers and not peers:
            plugin.set_state(PluginState.STOPPED, "no node serves it any more")
            self.reports.record_state_change(plugin, str(PluginState.RUNNING), str(PluginState.STOPPED), plugin.detail)
            self.registry.drop(key, "unregistered by its nodes")
        else:
            self._peers_changed(key, node, False)
        return True

    def _peers_changed(self, key: str, node: str, up: bool) -> None:
        plugin = self.registry.announced.get(key)
        if plugin is not None:
            changed = plugin.follow_peers()
            if changed is not None:
                self.reports.record_state_change(plugin, changed[0], changed[1], plugin.detail)
        self.bus.publish(PluginPeersChanged(key=key, node=node, up=up))

    # -- the sweep -----------------------------------------------------------------------------------------------
    def sweep(self, now: float | None = None) -> list[str]:
        """Mark LOST every external plugin whose heartbeats stopped (2 x its interval), and every silent peer;
        returns the external plugins' keys."""
        now = time.time() if now is None else now
        lost = []
        for plugin in list(self.registry.announced.values()):
            if plugin.state == PluginState.RUNNING and now >= plugin.deadline:
                silent = now - plugin.last_heartbeat
                plugin.set_state(
                    PluginState.LOST, f"no heartbeat for {silent:.0f}s (LOST after {plugin.lost_after:g}s)"
                )
                self.reports.record_state_change(plugin, str(PluginState.RUNNING), str(PluginState.LOST), plugin.detail)
                lost.append(plugin.key)
        self._sweep_peers(now)
        return lost

    def _sweep_peers(self, now: float) -> None:
        for key, peers in list(self.peers.items()):
            for peer in list(peers.values()):
                if peer.up and now >= peer.deadline:
                    peer.up = False
                    peer.detail = f"no heartbeat for {now - peer.last_heartbeat:.0f}s (LOST after {peer.lost_after:g}s)"
                    self._peers_changed(key, peer.node, False)

    async def watch(self) -> None:
        """Sweep every second, until cancelled."""
        while True:
            await asyncio.sleep(EXTERNAL_SWEEP_INTERVAL)
            self.sweep()
