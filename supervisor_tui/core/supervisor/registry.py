"""The plugin registry: one plugin object per key, of any kind; adding or dropping one is published on the bus."""

from __future__ import annotations

from supervisor_tui.core.events import EventBus, PluginRegistered, PluginUnregistered
from supervisor_tui.core.supervisor.managed import FolderPlugin, ManagedPlugin
from supervisor_tui.plugins.external import ExternalPlugin
from supervisor_tui.plugins.model import PluginActionError, PluginNotFound


class PluginRegistry(dict[str, ManagedPlugin]):
    """Plugin objects by key. A dict, so readers look keys up as before; changes go through ``add`` and ``drop``.

    Two typed views, filled by the parts that make the plugins, so none asks a plugin which class it is:
    ``from_folders`` (``add_from_folder``) the plugins of folders under plugins/, read by reload, install and the
    metrics loop; ``announced`` (``add_announced``) the external plugins and the peers' stand-ins (PeerPlugin)."""

    def __init__(self, bus: EventBus) -> None:
        super().__init__()
        self.bus = bus
        self.from_folders: dict[str, FolderPlugin] = {}
        self.announced: dict[str, ExternalPlugin] = {}

    def add(self, plugin: ManagedPlugin) -> None:
        """Add a plugin object under its key; PluginActionError when the key is taken."""
        if plugin.key in self:
            raise PluginActionError(plugin.key, "a plugin with this key already exists")
        self[plugin.key] = plugin
        self.bus.publish(PluginRegistered(key=plugin.key, kind=plugin.kind))

    def add_from_folder(self, plugin: FolderPlugin) -> None:
        """Add the plugin object of a folder under plugins/ (see ``add``)."""
        self.add(plugin)
        self.from_folders[plugin.key] = plugin

    def add_announced(self, plugin: ExternalPlugin) -> None:
        """Add an external plugin, or the stand-in of a key other nodes serve (see ``add``)."""
        self.add(plugin)
        self.announced[plugin.key] = plugin

    def drop(self, key: str, reason: str) -> None:
        """Drop a plugin object (it must already be stopped); nothing happens for an unknown key."""
        self.from_folders.pop(key, None)
        self.announced.pop(key, None)
        if self.pop(key, None) is not None:
            self.bus.publish(PluginUnregistered(key=key, reason=reason))

    def require(self, key: str) -> ManagedPlugin:
        """The plugin object of ``key``; raises PluginNotFound."""
        plugin = self.get(key)
        if plugin is None:
            raise PluginNotFound(key)
        return plugin
