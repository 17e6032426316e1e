"""Groups, the dependency graph and log search as operators use them: `ctl` in a subprocess and the admin API,
against a real headless supervisor running real plugin processes."""

from __future__ import annotations

import asyncio
import re
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import HeadlessProcess
from fixtures.api.harness import REPORTER, REPORTER_ENDPOINTS, REPORTER_HEALTH, bearer
from test_ctl import ctl, one_line, start_supervisor

from supervisor_tui.config import Settings
from supervisor_tui.tui.client import ClientError
from supervisor_tui.tui.client_remote import RemoteClient

pytestmark = pytest.mark.usefixtures("no_plugin_leftovers")

Headless = Callable[..., HeadlessProcess]


async def api(method: str, url: str, token: str, **params: str) -> httpx.Response:
    async with httpx.AsyncClient(timeout=60) as client:
        return await client.request(method, url, headers=bearer(token), params=params)


async def states(url: str, token: str) -> dict[str, dict[str, Any]]:
    body = (await api("GET", f"{url}/api/v1/plugins", token)).json()
    return {p["key"]: p for p in body["plugins"]}


async def shop(
    make_plugin: Callable[..., Path], headless: Headless, settings: Settings
) -> tuple[HeadlessProcess, str, str]:
    """A supervisor of web -> api -> db, web -> cache (web, api and cache in group "front", db in "data", tools in
    none), none of them started: the process, its URL and its admin token."""
    make_plugin("db", "sleeper.py", group="data", autostart=False)
    make_plugin("api", "sleeper.py", group="front", depends_on=["db"], autostart=False)
    make_plugin("cache", "sleeper.py", group="front", autostart=False)
    make_plugin("web", "sleeper.py", group="front", depends_on=["api", "cache"], autostart=False)
    make_plugin("tools", "sleeper.py", autostart=False)
    proc, url = await start_supervisor(headless)
    return proc, url, (settings.data_dir / "admin.token").read_text().strip()


async def test_group_start_stop_restart_over_ctl_and_the_api(
    headless: Headless, settings: Settings, make_plugin: Callable[..., Path]
) -> None:
    proc, url, token = await shop(make_plugin, headless, settings)
    cwd = settings.base_dir

    r = ctl("--url", url, "group", "start", "front", cwd=cwd)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert sorted(r.stdout.splitlines()) == ["api: RUNNING", "cache: RUNNING", "web: RUNNING"]
    now = await states(url, token)
    assert {k: p["state"] for k, p in now.items()} == {
        "api": "RUNNING",
        "cache": "RUNNING",
        "web": "RUNNING",
        "db": "RUNNING",  # a dependency outside the group starts with it, as for a single start
        "tools": "STOPPED",
    }
    assert now["web"]["group"] == "front" and now["tools"]["group"] is None
    assert now["web"]["depends_on"] == ["api", "cache"]

    r = ctl("--url", url, "status", cwd=cwd)
    rows = {line.split()[0]: line.split() for line in r.stdout.splitlines()}
    assert rows["KEY"][7] == "GROUP" and rows["web"][7] == "front" and rows["tools"][7] == "-"

    groups = (await api("GET", f"{url}/api/v1/groups", token)).json()
    assert groups == {
        "groups": [{"name": "data", "plugins": ["db"]}, {"name": "front", "plugins": ["api", "cache", "web"]}]
    }

    pids = {k: p["pid"] for k, p in now.items()}
    resp = await api("POST", f"{url}/api/v1/groups/front/restart", token)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["group"] == "front" and {p["key"]: p["state"] for p in body["plugins"]} == {
        "api": "RUNNING",
        "cache": "RUNNING",
        "web": "RUNNING",
    }
    after = await states(url, token)
    assert all(after[k]["pid"] != pids[k] for k in ("api", "cache", "web"))
    assert after["db"]["pid"] == pids["db"]  # not in the group: left alone

    r = ctl("--url", url, "group", "stop", "front", cwd=cwd)
    assert r.returncode == 0 and sorted(r.stdout.splitlines()) == ["api: STOPPED", "cache: STOPPED", "web: STOPPED"]
    stopped = await states(url, token)
    assert [stopped[k]["state"] for k in ("api", "cache", "web", "db")] == ["STOPPED", "STOPPED", "STOPPED", "RUNNING"]
    # dependents went first: web was STOPPED before api began STOPPING (and cache, web's other dependency)
    changes = proc.find(lambda r: r.get("event") == "plugin_state" and r.get("plugin") in ("api", "cache", "web"))
    order = [(r["plugin"], r["to"]) for r in changes[-6:]]
    assert order.index(("web", "STOPPED")) < order.index(("api", "STOPPING"))
    assert order.index(("web", "STOPPED")) < order.index(("cache", "STOPPING"))

    # unknown group: 404 JSON error; ctl says it in one line, exit 1; nothing changed
    resp = await api("POST", f"{url}/api/v1/groups/nope/start", token)
    assert resp.status_code == 404
    assert resp.json() == {"error": {"code": "group_not_found", "message": "no plugin is in group 'nope'"}}
    r = ctl("--url", url, "group", "start", "nope", cwd=cwd)
    assert r.returncode == 1 and "no plugin is in group 'nope'" in one_line(r.stderr)
    r = ctl("--url", url, "group", "launch", "front", cwd=cwd)
    assert r.returncode == 2 and "launch" in one_line(r.stderr)
    assert {k: p["state"] for k, p in (await states(url, token)).items()} == {k: p["state"] for k, p in stopped.items()}
    resp = await api("POST", f"{url}/api/v1/groups/front/start", "wrong-token")
    assert resp.status_code == 401
    proc.signal(signal.SIGTERM)
    assert await proc.wait() == 0


async def test_a_group_member_that_fails_is_named_and_the_others_run(
    headless: Headless, settings: Settings, make_plugin: Callable[..., Path]
) -> None:
    make_plugin("good", "sleeper.py", group="pair", autostart=False)
    make_plugin("bad", "crash_at_start.py", group="pair", autostart=False, startretries=0)
    proc, url = await start_supervisor(headless)
    token = (settings.data_dir / "admin.token").read_text().strip()
    resp = await api("POST", f"{url}/api/v1/groups/pair/start", token)
    assert resp.status_code == 409
    error = resp.json()["error"]
    assert error["code"] == "action_failed"
    assert error["message"].startswith("1 of 2 failed: bad: did not start: FATAL")
    assert (await states(url, token))["good"]["state"] == "RUNNING"
    r = ctl("--url", url, "group", "start", "pair", cwd=settings.base_dir)
    assert r.returncode == 1 and "bad: did not start" in one_line(r.stderr)
    proc.signal(signal.SIGTERM)
    assert await proc.wait() == 0


MERMAID_LINE = re.compile(
    r'^(graph TD|  p\d+\["[a-z0-9_-]+ \([A-Z]+\)"\]|    p\d+\["[a-z0-9_-]+ \([A-Z]+\)"\]'
    r'|  subgraph g\d+\["group [a-z0-9_-]+"\]|  end|  p\d+ --> p\d+|  classDef [a-z]+ [^ ]+'
    r"|  class p\d+(,p\d+)* [a-z]+)$"
)


def mermaid_nodes(lines: list[str]) -> dict[str, str]:
    """Node id -> its label's key, checking every line is one mermaid accepts in a graph TD block."""
    assert lines[0] == "graph TD"
    for line in lines:
        assert MERMAID_LINE.match(line), line
    assert sum(line.strip().startswith("subgraph") for line in lines) == sum(line == "  end" for line in lines)
    return {m[1]: m[2] for m in (re.match(r'\s+(p\d+)\["([a-z0-9_-]+) ', line) for line in lines) if m}


async def test_graph_as_text_as_mermaid_and_from_the_api(
    headless: Headless, settings: Settings, make_plugin: Callable[..., Path]
) -> None:
    proc, url, token = await shop(make_plugin, headless, settings)
    cwd = settings.base_dir
    await api("POST", f"{url}/api/v1/plugins/api/start", token)

    r = ctl("--url", url, "graph", cwd=cwd)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert r.stdout.splitlines() == [
        "level 0 (needs nothing)",
        "  cache  STOPPED  group front",
        "  db     RUNNING  group data",
        "  tools  STOPPED",
        "level 1",
        "  api    RUNNING  group front  needs db",
        "level 2",
        "  web    STOPPED  group front  needs api, cache",
    ]

    r = ctl("--url", url, "graph", "--mermaid", cwd=cwd)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    nodes = mermaid_nodes(lines)
    assert sorted(nodes.values()) == ["api", "cache", "db", "tools", "web"]
    ids = {key: node for node, key in nodes.items()}
    edges = {(nodes[a], nodes[b]) for a, b in (re.findall(r"^  (p\d+) --> (p\d+)$", "\n".join(lines), re.M))}
    assert edges == {("api", "db"), ("web", "api"), ("web", "cache")}
    front = next(i for i, line in enumerate(lines) if line.endswith('["group front"]'))
    assert lines[front + 1 : front + 4] == [
        f'    {ids["api"]}["api (RUNNING)"]',
        f'    {ids["cache"]}["cache (STOPPED)"]',
        f'    {ids["web"]}["web (STOPPED)"]',
    ]
    assert f"  class {ids['api']},{ids['db']} running" in lines

    body = (await api("GET", f"{url}/api/v1/graph", token)).json()
    assert {n["key"]: n["level"] for n in body["nodes"]} == {"cache": 0, "db": 0, "tools": 0, "api": 1, "web": 2}
    assert {(e["from"], e["to"]) for e in body["edges"]} == edges
    proc.signal(signal.SIGTERM)
    assert await proc.wait() == 0


async def test_log_search_across_plugins_in_one_plugin_and_bad_patterns(
    headless: Headless, settings: Settings, make_plugin: Callable[..., Path]
) -> None:
    make_plugin("alpha", str(REPORTER), endpoints=REPORTER_ENDPOINTS, health=REPORTER_HEALTH)
    make_plugin("beta", str(REPORTER), endpoints=REPORTER_ENDPOINTS, health=REPORTER_HEALTH)
    proc, url = await start_supervisor(headless)
    await proc.wait_state("alpha", "RUNNING")
    await proc.wait_state("beta", "RUNNING")
    token = (settings.data_dir / "admin.token").read_text().strip()
    cwd = settings.base_dir
    async with httpx.AsyncClient() as client:
        for key, text in [("alpha", "order 17 paid"), ("beta", "order 18 failed"), ("alpha", "cart emptied")]:
            await client.get(f"{url}/api/plugins/{key}/say", params={"text": text})
        await client.get(f"{url}/api/plugins/beta/say", params={"text": "a" * 30_000 + "!"})
    await proc.wait_for(lambda r: r.get("source") == "beta" and str(r.get("message", "")).endswith("!"))

    r = ctl("--url", url, "logs", "--grep", r"order \d+", cwd=cwd)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert [line.split(" ", 1)[1] for line in r.stdout.splitlines()] == [
        "alpha out order 17 paid",
        "beta out order 18 failed",
    ]
    r = ctl("--url", url, "logs", "alpha", "--grep", "order|cart", cwd=cwd)
    assert [line.split(" ", 2)[2] for line in r.stdout.splitlines()] == ["order 17 paid", "cart emptied"]
    r = ctl("--url", url, "logs", "--grep", "(?i)ORDER 18", "-n", "5", cwd=cwd)
    assert [line.split(" ", 1)[1] for line in r.stdout.splitlines()] == ["beta out order 18 failed"]

    r = ctl("--url", url, "logs", "--grep", "order (", cwd=cwd)
    assert r.returncode == 1 and "not a valid regular expression" in one_line(r.stderr)
    r = ctl("--url", url, "logs", "--grep", "x", "-f", cwd=cwd)
    assert r.returncode == 2 and "-f follows one plugin" in one_line(r.stderr)
    resp = await api("GET", f"{url}/api/v1/logs", token, grep="order (")
    assert resp.status_code == 400 and resp.json()["error"]["code"] == "bad_pattern"

    # A pattern that backtracks without end on the long line is stopped and said; the supervisor answers meanwhile.
    slow = asyncio.create_task(api("GET", f"{url}/api/v1/plugins/beta/logs", token, grep="(a|aa)+$"))
    health = await api("GET", f"{url}/health", token)
    assert health.status_code == 200
    resp = await slow
    assert resp.status_code == 422, resp.text
    assert resp.json()["error"]["code"] == "pattern_too_slow"
    assert "takes too long on a log line" in resp.json()["error"]["message"]
    proc.signal(signal.SIGTERM)
    assert await proc.wait() == 0


async def test_an_attached_tui_client_acts_on_a_group_in_one_call(
    headless: Headless, settings: Settings, make_plugin: Callable[..., Path]
) -> None:
    """RemoteClient.group_action (the G dialog when attached) is the API's group route."""
    proc, url, token = await shop(make_plugin, headless, settings)
    client = RemoteClient(url, token)
    try:
        infos = await client.group_action("start", "front")
        assert {p.key: (p.state, p.group) for p in infos} == {
            "api": ("RUNNING", "front"),
            "cache": ("RUNNING", "front"),
            "web": ("RUNNING", "front"),
        }
        assert {p.key: p.depends_on for p in infos}["web"] == ("api", "cache")
        with pytest.raises(ClientError, match="no plugin is in group 'nope'"):
            await client.group_action("stop", "nope")
        await client.group_action("stop", "front")
        assert {k: p["state"] for k, p in (await states(url, token)).items() if p["group"] == "front"} == {
            "api": "STOPPED",
            "cache": "STOPPED",
            "web": "STOPPED",
        }
    finally:
        await client.close()
    proc.signal(signal.SIGTERM)
    assert await proc.wait() == 0
