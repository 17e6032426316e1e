"""Every row of the plugins table holds one cell per column it can show, sub-rows of replicas included."""

from __future__ import annotations

import msgspec

from supervisor_tui.plugins.model import PluginSnapshot, PluginState, ReplicaSnapshot
from supervisor_tui.tui.cells import PLUGIN_STATE_STYLES, PLUGIN_TABLE_COLUMNS, plugin_cells, replica_cells


def test_plugin_rows_and_replica_sub_rows_fill_every_column() -> None:
    replica = {"index": 1, "state": "RUNNING", "pid": 42, "port": 4002, "started_at": 1.0, "restarts": 0}
    p = msgspec.convert(
        {"key": "web", "name": "Web", "version": "1", "state": "RUNNING", "group": "front", "replicas": [replica]},
        PluginSnapshot,
    )
    row = plugin_cells(p, 10.0, None, 0)
    sub = replica_cells(p, msgspec.convert(replica, ReplicaSnapshot), 10.0)
    assert len(row) == len(sub) == len(PLUGIN_TABLE_COLUMNS)
    names = [name for name, _, _ in PLUGIN_TABLE_COLUMNS]
    assert row[names.index("group")][0] == "front" and sub[names.index("port")][0] == "4002"


def test_every_plugin_state_has_its_colour() -> None:
    """The states are the core's enum: a state added there without a colour here fails."""
    assert set(PLUGIN_STATE_STYLES) == set(PluginState)
