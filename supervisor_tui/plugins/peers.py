"""Peers: other fleet nodes serving a plugin key, reached through their gateways (``<node url>/api/plugins/<key>``).

A key can be served here (a local or self-registered plugin) and by other nodes at once: the route then has one
upstream per place, round robin over those up. A key only other nodes serve is a ``PeerPlugin`` in the registry
(kind "external"): RUNNING while any of its peers is, LOST when none is. Each peer is LOST on its own after
``lost_after`` seconds without a heartbeat from its node.
"""

from __future__ import annotations

from dataclasses import dataclass

from msgspec.structs import replace

from supervisor_tui.plugins.external import ExternalPlugin
from supervisor_tui.plugins.model import PluginSnapshot, PluginState, PluginUpstream


@dataclass
class Peer:
    """One other node serving a key: where its gateway serves it and whether it is heard from."""

    node: str
    url: str
    lost_after: float
    last_heartbeat: float
    up: bool = True
    detail: str = "announced"

    @property
    def deadline(self) -> float:
        return self.last_heartbeat + self.lost_after


class PeerPlugin(ExternalPlugin):
    """A key no plugin here serves, only other nodes: its snapshot shows the peers, its state follows them."""

    stands_for_peers = True  # dropped when no node serves its key any more

    def __init__(self, first: ExternalPlugin, peers: dict[str, Peer]) -> None:
        super().__init__(
            first.key,
            first.name,
            first.version,
            first.host,
            first.port,
            first.endpoints,
            first.interval,
            first.timeout,
            first.max_body,
            lost_after=first.lost_after,
            source=first.source,
            node=first.node,
            base_path=first.base_path,
        )
        self.peers = peers
        self.follow_peers()

    @property
    def deadline(self) -> float:
        return float("inf")  # its peers are swept one by one (Supervisor.sweep_external)

    def follow_peers(self) -> tuple[str, str] | None:
        """Take the state its peers give (RUNNING if any is up); (old, new) when it changed."""
        up = [p for p in self.peers.values() if p.up]
        state = PluginState.RUNNING if up else PluginState.LOST
        detail = "served by " + ", ".join(f"node {p.node}" for p in up) if up else "no node serving it is heard from"
        self.node = (up or list(self.peers.values()) or [Peer(self.node, "", 0, 0)])[0].node
        old = self.state
        if state == old and detail == self.detail:
            return None
        self.set_state(state, detail)
        return (str(old), str(state)) if state != old else None

    def snapshot(self) -> PluginSnapshot:
        snap = super().snapshot()
        up = [p for p in self.peers.values() if p.up] or list(self.peers.values())
        return replace(snap, upstream=up[0].url if up else None, description="served by other nodes of the fleet")


def with_peers(snap: PluginSnapshot, peers: dict[str, Peer] | None, this_node: str) -> PluginSnapshot:
    """``snap`` with every place that serves its key in ``upstreams``: here first (if it serves it), then peers."""
    if not peers:
        return snap
    here: tuple[PluginUpstream, ...] = ()
    if snap.upstream and snap.node == "" and snap.kind != "inprocess":
        here = (PluginUpstream(this_node, snap.upstream, snap.state == PluginState.RUNNING, False),)
    elsewhere = tuple(PluginUpstream(p.node, p.url, p.up, True) for p in sorted(peers.values(), key=lambda p: p.node))
    return replace(snap, upstreams=here + elsewhere)
