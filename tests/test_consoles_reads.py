"""ConsoleReads on its own (consoles/reads.py): it answers from the view and the store it is given, not from a
ConsoleService. The rows come from a real SQLite console store a running service wrote."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from fixtures.consoles.harness import started_service

from supervisor_tui.consoles.console_entry import ConsoleEntry
from supervisor_tui.consoles.errors import ConsoleNotFound, ConsoleUnavailable
from supervisor_tui.consoles.latest_activity import LatestActivity
from supervisor_tui.consoles.models import RegistrationInput
from supervisor_tui.consoles.reads import ConsoleReads
from supervisor_tui.consoles.recency import Recency
from supervisor_tui.consoles.search import SearchKeys
from supervisor_tui.consoles.sweeper import Deadlines
from supervisor_tui.consoles.writer import GroupCommitWriter, Plan


def _no_writes(ops: list[object]) -> Plan:
    raise AssertionError("the reads never write")


async def test_console_reads_answer_from_the_view_they_are_given(tmp_path: Path) -> None:
    async with started_service(tmp_path, consoles__auth="none") as service:
        for cid, name in (("c1", "alpha"), ("c2", "beta"), ("c3", "alpine")):
            await service.register(RegistrationInput(cid, name, "active", None, f"{name}.lan", None))
        # A view of two of the three consoles, built by hand: the reads know those and no other.
        entries: dict[str, ConsoleEntry] = {}
        by_state: Counter[str] = Counter()
        deadlines, recency, search, latest = Deadlines(60.0), Recency(), SearchKeys(), LatestActivity()
        for i, (cid, name) in enumerate((("c1", "alpha"), ("c3", "alpine"))):
            entries[cid] = ConsoleEntry(
                cid, name, "idle", "active", None, 100.0 + i, 100.0 + i, last_activity=50.0 + i, hostname=f"{name}.lan"
            )
            latest.changed(None, entries[cid])
            by_state["idle"] += 1
            deadlines.touch(cid, 100.0 + i)
            recency.touch(cid, 100.0 + i, "idle")
            search.put(cid, name, f"{name}.lan")
        writer = GroupCommitWriter(service.store, _no_writes)
        reads = ConsoleReads(service.store, 60.0, entries, by_state, deadlines, recency, search, writer, latest)

        assert reads.exists("c1") and not reads.exists("c2") and service.exists("c2")
        assert reads.view_of("c3") == ("idle", 101.0, "alpine.lan") and reads.state_of("c2") is None
        assert reads.deadline_of("c1") == 160.0
        assert reads.counts_by_state() == {"active": 0, "busy": 0, "idle": 2, "error": 0, "inactive": 0}
        page, total = await reads.list_consoles(limit=10)
        assert total == 2 and [r["id"] for r in page] == ["c3", "c1"]  # the view's order, the store's rows
        assert page[0]["name"] == "alpine"
        page, total = await reads.list_consoles(search="alp", sort="name")
        assert total == 2 and [r["id"] for r in page] == ["c1", "c3"]
        with pytest.raises(ConsoleNotFound):
            await reads.heartbeats("c2")  # in the store, not in this view
        assert await reads.transitions("c1") != []
        writer.mark_damaged("heartbeats", "database disk image is malformed")
        with pytest.raises(ConsoleUnavailable, match="heartbeats is damaged"):
            await reads.heartbeats("c1")
        assert reads.damaged_history() == {"heartbeats": "database disk image is malformed"}
        assert service.damaged_history() == {}  # another writer's damage: the service's own reads are apart
        assert reads.store_status()["kind"] == "sqlite"
        # The statistics too are the view's (the store holds three active consoles without activity).
        stats = await reads.stats()
        assert stats["total"] == 2
        assert [(s["state"], s["count"], s["last_activity"]) for s in stats["states"] if s["count"]] == [
            ("idle", 2, "1970-01-01T00:00:51.000Z")
        ]
        assert (await service.stats())["states"][0] == {"state": "active", "count": 3, "last_activity": None}
