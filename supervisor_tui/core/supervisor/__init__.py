"""The supervisor: the Supervisor class (``root``) and the modules that do its jobs (docs/architecture.md).

    async with Supervisor(settings) as sup:
        await sup.start_all()
        snap = await sup.start("echo")

Callers import from here: the Supervisor, its errors and the plugin model it hands out.
"""

from supervisor_tui.core.lock import LockError
from supervisor_tui.core.store import StoreError
from supervisor_tui.core.supervisor.managed import ManagedPlugin, ReloadResult
from supervisor_tui.core.supervisor.process_tracking import owner_id
from supervisor_tui.core.supervisor.root import Supervisor
from supervisor_tui.plugins.external import UpstreamNotAllowed
from supervisor_tui.plugins.manifest import Endpoint, ManifestError
from supervisor_tui.plugins.model import PluginActionError, PluginNotFound, PluginSnapshot, PluginState

__all__ = [
    "Endpoint",
    "LockError",
    "ManagedPlugin",
    "ManifestError",
    "PluginActionError",
    "PluginNotFound",
    "PluginSnapshot",
    "PluginState",
    "ReloadResult",
    "StoreError",
    "Supervisor",
    "UpstreamNotAllowed",
    "owner_id",
]
