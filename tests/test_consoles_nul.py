"""U+0000 in a console's system object or last error: PostgreSQL's jsonb cannot store it, and a store that refused
it would fail the whole write batch it was in (every console of the batch answered 503). Refused with 422 on both
stores, so they answer alike; the text ``\\u0000`` (a backslash, then u0000) is kept as sent."""

from __future__ import annotations

from pathlib import Path

import httpx
from fixtures.consoles.harness import count_rows, served_consoles


async def test_nul_in_the_system_object_or_the_last_error_is_refused_and_nothing_changes(
    tmp_path: Path, console_store: str
) -> None:
    async with (
        served_consoles(tmp_path, consoles__store=console_store, consoles__auth="none") as srv,
        httpx.AsyncClient(base_url=srv.url) as client,
    ):
        r = await client.post("/api/consolas/registrar", json={"id": "c1", "nombre": "uno", "sistema": {"k\u0000": 1}})
        assert r.status_code == 422 and r.json()["error"]["field"] == "sistema"
        assert (await client.post("/api/consolas/registrar", json={"id": "c1", "nombre": "uno"})).status_code == 201
        for body, field in (
            ({"estado": "ocupada", "sistema": {"hostname": "h", "x": ["a\u0000b"]}}, "sistema"),
            ({"estado": "error", "ultimoError": "disk \u0000 full"}, "ultimoError"),
            ({"estado": "error", "ultimoError": {"message": "\u0000"}}, "ultimoError"),
        ):
            r = await client.post("/api/consolas/c1/heartbeat", json=body)
            assert r.status_code == 422, r.text
            assert r.json()["error"]["field"] == field and "U+0000" in r.json()["error"]["message"]
        r = await client.post("/api/consoles/c1/heartbeat", json={"state": "error", "last_error": "\u0000"})
        assert r.status_code == 422 and r.json()["error"]["field"] == "last_error"
        assert await count_rows(srv, "heartbeats") == 0
        # The text \u0000 is no NUL: kept as sent, on both stores.
        literal = {"estado": "error", "ultimoError": "see \\u0000 in the log", "sistema": {"note": "\\u0000"}}
        r = await client.post("/api/consolas/c1/heartbeat", json=literal)
        assert r.status_code == 200, r.text
        record = (await client.get("/api/consoles/c1", headers=srv.admin)).json()
        assert record["last_error"] == "see \\u0000 in the log" and record["system"] == {"note": "\\u0000"}
