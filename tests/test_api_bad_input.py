"""Bad input at the HTTP surface gets a clear 4xx in the one error shape and changes nothing: keys the supervisor
keeps for itself, and JSON bodies nested deeper than any parser recurses, on every route that takes a body (admin
API, the console API over ASGI, and the heartbeat fast path). A real Runtime on 127.0.0.1."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from fixtures.api.harness import Api, bearer, running_api

from supervisor_tui.config import Settings
from supervisor_tui.plugins.manifest import RESERVED_KEYS

pytestmark = pytest.mark.usefixtures("no_plugin_leftovers")


def error_of(r: httpx.Response, *statuses: int) -> dict[str, Any]:
    """The response has one of ``statuses`` and a JSON body in the error shape; returns the error object."""
    assert r.status_code in statuses, (r.status_code, r.headers.get("content-type"), r.text[:300])
    assert r.headers["content-type"].startswith("application/json"), r.headers
    body = r.json()
    assert set(body) == {"error"}, body
    assert isinstance(body["error"]["code"], str) and body["error"]["code"]
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return dict(body["error"])


async def plugin_keys(api: Api) -> list[str]:
    return [p["key"] for p in (await api.client.get("/api/v1/plugins")).json()["plugins"]]


# -- reserved keys -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("key", sorted(RESERVED_KEYS))
async def test_a_reserved_key_is_refused_from_registration_and_install(settings: Settings, key: str) -> None:
    async with running_api(settings) as api:
        announced = {"key": key, "host": "127.0.0.1", "port": 3010, "endpoints": [{"method": "GET", "path": "/x"}]}
        r = await api.client.post("/api/v1/plugins/register", json=announced, headers=bearer(api.plugin_token))
        err = error_of(r, 422)
        assert err["code"] == "invalid_registration" and "reserved" in err["message"] and key in err["message"]
        manifest = {"key": key, "command": ["python", "-c", "pass"], "autostart": False}
        r = await api.client.post("/api/v1/plugins/install", json={"manifest": manifest})
        err = error_of(r, 422)
        assert err["code"] == "invalid_manifest" and "reserved" in err["message"] and key in err["message"]
        assert await plugin_keys(api) == []
        assert not (settings.plugins_dir / key).exists()
