"""Several changes of one console in one group commit are written as if they had come one by one."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
from fixtures.consoles.harness import served_consoles

from supervisor_tui.consoles.models import decode_heartbeat, decode_registration


async def test_heartbeats_of_one_console_in_one_batch_keep_the_last_hostname_given(tmp_path: Path) -> None:
    async with served_consoles(tmp_path) as srv:
        await srv.service.register(decode_registration(b'{"id": "h", "name": "H"}', False))
        named = decode_heartbeat(b'{"state": "busy", "system": {"hostname": "render-7"}}', False)
        unnamed = decode_heartbeat(b'{"state": "busy", "system": {"cpus": 8}}', False)
        # Queued before the writer wakes: one batch, one UPDATE of the console's row.
        await asyncio.gather(srv.service.submit_heartbeat("h", named), srv.service.submit_heartbeat("h", unnamed))
        async with httpx.AsyncClient(base_url=srv.url) as client:
            record = (await client.get("/api/consoles/h", headers=srv.admin)).json()
            found = (await client.get("/api/consoles", params={"q": "render-7"}, headers=srv.admin)).json()
        # One by one, the second heartbeat (a system without a hostname) would not have cleared the first's.
        assert record["hostname"] == "render-7"
        assert record["system"] == {"cpus": 8} and record["heartbeats"] == 2
        assert [c["id"] for c in found["consoles"]] == ["h"]
