"""The gateway against request smuggling and path tricks, with raw sockets on a real gateway and real upstreams.

- Framing: a Connection header cannot strip Content-Length, Transfer-Encoding, Host or the gateway's own headers;
  the upstream always gets the gateway's framing of exactly the body it forwards.
- Pooled upstream connections are reused only after an exchange that ended at a message boundary: not after
  an answer with bytes behind it, nor after an answer that came before the whole request was sent.
- Paths with ``.``/``..`` segments (plain or percent-encoded), an encoded ``/``, a backslash or NUL are refused
  with 400 before they can match a ``{param}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

import pytest
from conftest import REPO, wait_until, wait_until_sync
from fixtures.gateway.harness import fixture_process, serve, served_gateway
from fixtures.ports import free_port

from supervisor_tui.plugins.manifest import load_manifest
from supervisor_tui.server.gateway import Gateway, PluginRoute, RouteTable

ECHO = REPO / "plugins" / "echo"
# The body of the smuggling attack: a whole request, waiting for 40 bytes of somebody else's request as its body.
SMUGGLED = b"POST /echo HTTP/1.1\r\nHost: x\r\nX-Injected-By: attacker\r\nContent-Length: 40\r\n\r\n"
VICTIM = b"GET /api/plugins/echo/echo?me=victim HTTP/1.1\r\nHost: x\r\n\r\n"


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> dict:
        return json.loads(self.body)


async def read_answer(reader: asyncio.StreamReader) -> Answer:
    """One HTTP/1.1 response, framed by Content-Length or chunked."""
    head = await reader.readuntil(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")[:-2]
    headers: dict[str, str] = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    else:
        assert headers.get("transfer-encoding") == "chunked", head
        body = b""
        while size := int((await reader.readline()).strip(), 16):
            body += await reader.readexactly(size)
            await reader.readline()
        await reader.readline()
    return Answer(int(status_line.split()[1]), headers, body)


async def exchange(port: int, *pieces: bytes) -> Answer:
    """Send ``pieces`` on a new connection to the gateway and read the one answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for piece in pieces:
            writer.write(piece)
        await writer.drain()
        return await asyncio.wait_for(read_answer(reader), 10)
    finally:
        writer.close()


def port_of(base: str) -> int:
    return int(base.rsplit(":", 1)[1])


def seen_headers(answer: Answer) -> dict[str, str]:
    """The request headers the echo plugin received, by lowercase name."""
    return {k.lower(): v for k, v in answer.json()["headers"].items()}


# -- the example echo plugin as the upstream --------------------------------------------------------------------


@pytest.fixture(scope="module")
def echo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """plugins/echo as a real process on a free port (its request log goes to a file); yields its URL."""
    port = free_port()
    log = tmp_path_factory.mktemp("echo") / "stdout.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "server.py"],
            cwd=ECHO,
            env={**os.environ, "PORT": str(port), "PYTHONUNBUFFERED": "1"},
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:

        def listening() -> bool:
            assert proc.poll() is None, log.read_text()
            return "listening" in log.read_text()

        wait_until_sync(listening, 20, failure=log.read_text)  # the process is not ours to await: poll its log
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture
async def echo_gateway(echo: str) -> AsyncIterator[int]:
    """A fresh gateway (an empty pool) in front of the echo plugin, routes from its manifest; yields its port."""
    endpoints = tuple((e.method, e.path) for e in load_manifest(ECHO).endpoints)
    async with served_gateway(RouteTable([PluginRoute("echo", echo, endpoints)])) as base:
        yield port_of(base)


async def assert_victim_gets_its_own_answer(port: int) -> None:
    answer = await exchange(port, VICTIM)
    seen = answer.json()
    assert answer.status == 200
    assert (seen["method"], seen["path"], seen["query"], seen["body"]) == ("GET", "/echo", {"me": ["victim"]}, "")
    assert "x-injected-by" not in seen_headers(answer)


async def test_the_two_request_smuggling_attack_leaves_the_victim_its_own_answer(echo_gateway: int) -> None:
    attack = await exchange(
        echo_gateway,
        b"POST /api/plugins/echo/echo HTTP/1.1\r\nHost: x\r\nConnection: content-length\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(SMUGGLED), SMUGGLED),
    )
    await assert_victim_gets_its_own_answer(echo_gateway)
    # The attacker's bytes stayed the attacker's body: the plugin saw one request with that body.
    assert attack.status == 200 and attack.json()["body"] == SMUGGLED.decode()


def framed(body: bytes, framing: str) -> bytes:
    if framing == "chunked":
        return b"Transfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    return b"Content-Length: %d\r\n\r\n%s" % (len(body), body)


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
@pytest.mark.parametrize(
    "named",
    [
        "content-length",
        "Content-Length",
        "keep-alive, content-length",
        "transfer-encoding",
        "host",
        "x-forwarded-for",
        "x-forwarded-host",
        "x-forwarded-proto",
        "x-forwarded-prefix",
        "x-request-id",
        "close, content-length, transfer-encoding, host, x-forwarded-for, x-forwarded-prefix, x-request-id",
    ],
)
async def test_connection_cannot_name_away_framing_or_forwarding_headers(
    echo_gateway: int, echo: str, framing: str, named: str
) -> None:
    answer = await exchange(
        echo_gateway,
        b"POST /api/plugins/echo/echo HTTP/1.1\r\nHost: public.example\r\nConnection: %s\r\n"
        b"X-Forwarded-For: 10.0.0.9\r\nX-Request-ID: rid-7\r\nX-Named-Away: yes\r\n%s"
        % (named.encode() + b", x-named-away", framed(SMUGGLED, framing)),
    )
    assert answer.status == 200
    seen, headers = answer.json(), seen_headers(answer)
    assert (seen["method"], seen["body"]) == ("POST", SMUGGLED.decode())
    assert headers["content-length"] == str(len(SMUGGLED)) and "transfer-encoding" not in headers
    assert headers["host"] == echo.removeprefix("http://")
    assert headers["x-forwarded-for"] == "10.0.0.9, 127.0.0.1"
    assert headers["x-forwarded-host"] == "public.example"
    assert headers["x-forwarded-proto"] == "http"
    assert headers["x-forwarded-prefix"] == "/api/plugins/echo"
    assert headers["x-request-id"] == answer.headers["x-request-id"] == "rid-7"
    assert "x-named-away" not in headers  # an end-to-end header it names is still dropped
    await assert_victim_gets_its_own_answer(echo_gateway)


# -- scripted upstreams: answers byte for byte -------------------------------------------------------------------


@dataclass
class ScriptedUpstream:
    """A keep-alive HTTP/1.1 server on a socket that answers the first request it gets with ``first_answer`` (reading
    its body only if ``read_first_body``), and every later one, body read, with "answer to <request line>"."""

    first_answer: bytes
    read_first_body: bool = True
    requests: list[bytes] = field(default_factory=list)
    connections: int = 0
    answered_first: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                line, *lines = head.split(b"\r\n")
                length = next((int(h.split(b":")[1]) for h in lines if h.lower().startswith(b"content-length:")), 0)
                self.requests.append(line)
                if len(self.requests) == 1:
                    if self.read_first_body:
                        await reader.readexactly(length)
                    writer.write(self.first_answer)
                    self.answered_first.set()
                else:
                    await reader.readexactly(length)
                    body = b"answer to " + line
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
                await writer.drain()
        writer.close()

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[str]:
        server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        try:
            yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        finally:
            server.close()


RAW_ENDPOINTS = (("GET", "/x"), ("POST", "/x"))


async def test_connection_in_an_upstream_answer_cannot_name_away_its_content_length() -> None:
    upstream = ScriptedUpstream(
        b"HTTP/1.1 200 OK\r\nConnection: content-length, x-private\r\nX-Private: 1\r\nContent-Length: 5\r\n\r\nhello"
    )
    async with upstream.running() as url, served_gateway(RouteTable([PluginRoute("raw", url, RAW_ENDPOINTS)])) as base:
        answer = await exchange(port_of(base), b"GET /api/plugins/raw/x HTTP/1.1\r\nHost: t\r\n\r\n")
    assert (answer.status, answer.body) == (200, b"hello")
    assert answer.headers.get("content-length") == "5" and "x-private" not in answer.headers


@pytest.mark.parametrize(
    "extra",
    [
        b"HTTP/1.1 200 OK\r\nX-Injected: 1\r\nContent-Length: 8\r\n\r\ninjected",  # a whole second answer
        b"HTTP/1.1 302 Found\r\nLocation: http://evil.example/\r\nContent-Length: 40\r\n\r\n",  # a head, body to come
        b"junk",
    ],
)
async def test_bytes_after_an_upstream_answer_never_reach_the_next_client(extra: bytes) -> None:
    upstream = ScriptedUpstream(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfirst" + extra)
    async with upstream.running() as url, served_gateway(RouteTable([PluginRoute("raw", url, RAW_ENDPOINTS)])) as base:
        port = port_of(base)
        first = await exchange(port, b"GET /api/plugins/raw/x?me=first HTTP/1.1\r\nHost: t\r\n\r\n")
        assert (first.status, first.body) == (200, b"first") and "x-injected" not in first.headers
        victim = await exchange(port, b"GET /api/plugins/raw/x?me=victim HTTP/1.1\r\nHost: t\r\n\r\n")
    assert (victim.status, victim.body) == (200, b"answer to GET /x?me=victim HTTP/1.1")
    assert "location" not in victim.headers and "x-injected" not in victim.headers
    assert upstream.connections == 2  # the first connection was out of step: not reused


async def test_an_upstream_answering_before_the_whole_body_is_not_reused() -> None:
    # The upstream answers after the head and never reads the body: it takes the body for its next request,
    # which here waits for 30 bytes of the next client's request as its own body.
    upstream = ScriptedUpstream(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 4\r\n\r\nwho?", read_first_body=False)
    first_part, rest = b"GET /smuggled HTTP/1.1\r\n", b"Host: x\r\nContent-Length: 30\r\n\r\n"
    async with upstream.running() as url:
        gateway = Gateway(RouteTable([PluginRoute("raw", url, RAW_ENDPOINTS)]))
        async with serve(gateway) as base:
            reader, writer = await asyncio.open_connection("127.0.0.1", port_of(base))
            writer.write(
                b"POST /api/plugins/raw/x HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n%s"
                % (len(first_part) + len(rest), first_part)
            )
            await writer.drain()
            # The rest of the body only goes once the gateway holds the upstream's early answer.
            await asyncio.wait_for(upstream.answered_first.wait(), 10)
            await wait_until(lambda: gateway.early_answers() == 1, 10)
            writer.write(rest)
            await writer.drain()
            early = await asyncio.wait_for(read_answer(reader), 10)
            writer.close()
            assert (early.status, early.body) == (401, b"who?")
            victim = await exchange(port_of(base), b"GET /api/plugins/raw/x?me=victim HTTP/1.1\r\nHost: t\r\n\r\n")
    assert (victim.status, victim.body) == (200, b"answer to GET /x?me=victim HTTP/1.1")
    assert upstream.connections == 2


# -- paths -------------------------------------------------------------------------------------------------------

PATH_ENDPOINTS = (("GET", "/public/{sub}/{name}"), ("GET", "/items/{item_id}"), ("GET", "/echo-request"))


@pytest.fixture(scope="module")
def upstream() -> Iterator[str]:
    with fixture_process("upstream.py") as (_, port):
        yield f"http://127.0.0.1:{port}"


@pytest.fixture
async def paths_gateway(upstream: str) -> AsyncIterator[int]:
    async with served_gateway(RouteTable([PluginRoute("static", upstream, PATH_ENDPOINTS)])) as base:
        yield port_of(base)


def get(path: bytes) -> bytes:
    return b"GET /api/plugins/static%s HTTP/1.1\r\nHost: t\r\n\r\n" % path


@pytest.mark.parametrize(
    "path",
    [
        b"/public/../secret.txt",
        b"/public/./secret.txt",
        b"/public/%2e%2e/secret.txt",
        b"/public/%2E%2E/secret.txt",
        b"/public/.%2e/secret.txt",
        b"/public/%2E./secret.txt",
        b"/public/%2e/secret.txt",
        b"/public/a/..",
        b"/items/..",
        b"/public/a%2fb/c",
        b"/public/a%2Fb/c",
        b"/public/..%2fsecret.txt/x",
        b"/public/a%5cb/c",
        b"/public/a%5C..%5Csecret.txt/c",
        b"/public/a\\b/c",
        b"/public/a%00b/c",
        b"/items/secret.txt%00.json",
    ],
)
async def test_dot_segments_and_encoded_separators_are_refused(paths_gateway: int, path: bytes) -> None:
    answer = await exchange(paths_gateway, get(path))
    assert answer.status == 400, answer
    assert answer.headers["content-type"] == "application/json"
    error = answer.json()["error"]
    assert error["code"] == "invalid_path" and error["message"]
    assert answer.headers["x-request-id"]


@pytest.mark.parametrize(
    ("path", "param"),
    [
        (b"/items/abc-1.json", "abc-1.json"),
        (b"/items/.hidden", ".hidden"),
        (b"/items/a..b", "a..b"),
        (b"/items/...", "..."),
        (b"/items/v1.2.3", "v1.2.3"),
        (b"/items/a%20b", "a b"),
        (b"/items/%41bc", "Abc"),
        (b"/items/%25", "%"),
    ],
)
async def test_ordinary_paths_and_params_still_pass(paths_gateway: int, path: bytes, param: str) -> None:
    answer = await exchange(paths_gateway, get(path))
    assert answer.status == 200
    seen = answer.json()
    assert seen["path"] == "/items/" + param and seen["raw_path"] == path.decode()


async def test_dots_in_names_and_in_the_query_pass(paths_gateway: int) -> None:
    answer = await exchange(paths_gateway, get(b"/public/css/site.v2.css"))
    assert (answer.status, answer.body) == (404, b'{"error": "upstream 404"}')  # the plugin's own answer
    answer = await exchange(paths_gateway, get(b"/echo-request?next=../x&dot=.&sep=%2F%5C%00"))
    assert answer.status == 200 and answer.json()["query_string"] == "next=../x&dot=.&sep=%2F%5C%00"
