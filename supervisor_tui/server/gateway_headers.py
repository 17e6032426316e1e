"""The gateway's HTTP/1.1 messages: the request head it writes upstream and the response headers it relays.

- ``read_client_head(headers)``: one pass over the client's header pairs; returns a ``ClientHead`` with the pairs
  to forward already as bytes (hop-by-hop headers, those a Connection header names and the ones the gateway sets
  itself left out) and what the gateway reads from the rest, or None for an invalid Content-Length.
- ``add_forwarded_headers(...)``: X-Forwarded-For/Proto/Host/Prefix and X-Request-ID (a request another fleet
  node forwarded keeps the first node's Proto and Host, which are the client's).
- ``request_target(scope, prefix, sub)``: the path and query to send, as the client encoded them when it can.
- ``request_head(method, upstream, target, headers)`` and ``request_start(head, first, content_length,
  body_done)``: the request line, the upstream's Host and the gateway's own framing (never the client's
  header): ``Content-Length`` with the client's (validated) length, a chunked body that arrived whole with its
  ``Content-Length``, else chunked.
- ``response_headers(pairs, request_id)``: the upstream's answer headers to relay, hop-by-hop ones dropped.
- ``RequestIds``: a new X-Request-ID per call (``new()``), or the client's when it is well formed (``for_answer``).

A Connection header can never name away ``Content-Length``, ``Transfer-Encoding`` or ``Host``: the next hop would
read the body as another request.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from urllib.parse import quote

from supervisor_tui.server.asgi import Scope
from supervisor_tui.server.gateway_routes import HOP_HEADER, STANDARD_METHODS, CompiledUpstream

METHOD_BYTES = {m: m.encode() for m in STANDARD_METHODS}
LAST_CHUNK = b"0\r\n\r\n"
REQUEST_ID_OK = re.compile(rb"^[\x21-\x7e]{1,200}$")

_HOP_BY_HOP = frozenset(
    (
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"trailers",
        b"transfer-encoding",
        b"upgrade",
    )
)
# Request headers the gateway sets itself (or that only make sense on the client's connection). The framing
# (Content-Length or chunked) is written by the gateway from what it forwards, never copied from the client.
_REQUEST_DROP = _HOP_BY_HOP | {
    HOP_HEADER,
    b"host",
    b"expect",
    b"content-length",
    b"x-forwarded-proto",
    b"x-forwarded-host",
    b"x-forwarded-prefix",
    b"x-request-id",
}
# The server in front adds its own Date; a second one from the upstream would make the header invalid.
_RESPONSE_DROP = _HOP_BY_HOP | {b"x-request-id", b"date"}
# What a Connection header can never name away: the message's framing (the next hop would read the body as another
# request) and Host.
_ALWAYS_END_TO_END = frozenset((b"content-length", b"transfer-encoding", b"host"))
# Path characters forwarded unescaped when the gateway has to encode the path itself.
_TARGET_SAFE = "/:@!$&'()*+,;=-._~"


class ClientHead:
    """What the gateway read from the client's request headers; ``parts`` is the flat
    ``[name, ": ", value, CRLF, ...]`` list of the headers it forwards as they are."""

    __slots__ = (
        "chunked",
        "content_length",
        "first_forwarded",
        "forwarded_for",
        "hopped",
        "host",
        "parts",
        "request_id",
    )

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.request_id: bytes | None = None
        self.host: bytes | None = None
        self.forwarded_for: bytes | None = None
        self.content_length = -1  # -1: no Content-Length (none, or the body came chunked)
        self.chunked = False
        self.hopped = False  # another fleet node forwarded the request
        self.first_forwarded: list[bytes] = []  # X-Forwarded-Host/-Proto of the node that forwarded the request


def read_client_head(headers: Iterable[tuple[bytes, bytes]]) -> ClientHead | None:
    """The client's headers read in one pass, or None when a Content-Length is not one valid length."""
    head = ClientHead()
    parts = head.parts
    content_length = -1
    connection_tokens: list[bytes] | None = None
    for name, value in headers:
        if name in _REQUEST_DROP or name.startswith(b"proxy-"):
            if name == b"host":
                head.host = value
            elif name == HOP_HEADER:
                head.hopped = True
            elif name == b"x-forwarded-host" or name == b"x-forwarded-proto":
                head.first_forwarded += (name, b": ", value, b"\r\n")
            elif name == b"x-request-id":
                if REQUEST_ID_OK.match(value):
                    head.request_id = value
            elif name == b"content-length":
                # Digits only (int() would take "+1", " 1", "1_0"), and one value however often it is sent.
                if not value.isdigit() or (content_length >= 0 and int(value) != content_length):
                    return None
                content_length = int(value)
            elif name == b"connection":
                connection_tokens = connection_header_tokens(value)
            elif name == b"transfer-encoding":
                head.chunked = True
            continue
        if name == b"x-forwarded-for":
            head.forwarded_for = value
            continue
        parts += (name, b": ", value, b"\r\n")
    # A chunked body was decoded by the server in front: its length is what arrives, not any header.
    head.content_length = -1 if head.chunked else content_length
    if connection_tokens:
        head.parts = _without_headers(parts, connection_tokens)
    return head


def add_forwarded_headers(head: ClientHead, scope: Scope, prefix: bytes, request_id: bytes) -> None:
    """Append X-Forwarded-For/-Prefix/-Proto/-Host and X-Request-ID to ``head.parts``."""
    client = scope.get("client")
    client_ip = client[0].encode("latin-1") if client else b""
    forwarded_for = head.forwarded_for
    parts = head.parts
    parts += (
        b"x-forwarded-for: ",
        forwarded_for + b", " + client_ip if forwarded_for else client_ip,
        b"\r\nx-forwarded-prefix: ",
        prefix,
        b"\r\nx-request-id: ",
        request_id,
        b"\r\n",
    )
    if head.hopped and head.first_forwarded:
        parts += head.first_forwarded
    else:
        parts += (b"x-forwarded-proto: ", b"https" if scope.get("scheme") == "https" else b"http", b"\r\n")
        if head.host is not None:
            parts += (b"x-forwarded-host: ", head.host, b"\r\n")


def request_target(scope: Scope, prefix: bytes, sub: str) -> bytes:
    """The path and query sent upstream: the path as the client encoded it, unless its key segment was encoded
    differently (then ``sub`` encoded again)."""
    raw_path: bytes | None = scope.get("raw_path")
    if raw_path and raw_path.startswith(prefix) and raw_path[len(prefix) : len(prefix) + 1] in (b"/", b""):
        target = raw_path[len(prefix) :]
    else:
        target = quote(sub, safe=_TARGET_SAFE).encode("latin-1")
    query: bytes = scope.get("query_string", b"")
    if query:
        target += b"?" + query
    return target


def request_head(method: bytes, upstream: CompiledUpstream, target: bytes, headers: list[bytes]) -> bytes:
    """The request line and headers for one upstream: its base path before the target, its authority as Host."""
    return b"".join(
        (
            method,
            b" ",
            upstream.base_path,
            target,
            b" HTTP/1.1\r\nhost: ",
            upstream.host_header,
            b"\r\n",
            upstream.hop,
            *headers,
        )
    )


def encode_chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data) if data else b""


def request_start(head: bytes, first: bytes, content_length: int, body_done: bool) -> tuple[bytes, bool]:
    """The request head with the gateway's own framing and the first piece of the body; and whether the rest
    goes chunked. A chunked body that arrived whole goes with a Content-Length, which every upstream reads."""
    if content_length >= 0:
        return b"%scontent-length: %d\r\n\r\n%s" % (head, content_length, first), False
    if body_done:
        return b"%scontent-length: %d\r\n\r\n%s" % (head, len(first), first), False
    return b"%stransfer-encoding: chunked\r\n\r\n%s" % (head, encode_chunk(first)), True


def response_headers(pairs: Iterable[tuple[bytes, bytes]], request_id: bytes) -> list[tuple[bytes, bytes]]:
    """The upstream's response headers the client gets (lower-cased), hop-by-hop ones and those its Connection
    header names dropped, with the exchange's X-Request-ID."""
    out: list[tuple[bytes, bytes]] = []
    connection: list[bytes] | None = None
    for name, value in pairs:
        lname = name.lower()
        if lname in _RESPONSE_DROP or lname.startswith(b"proxy-"):
            if lname == b"connection":
                connection = connection_header_tokens(value)
            continue
        out.append((lname, value))
    if connection:
        out = [(n, v) for n, v in out if n not in connection]
    out.append((b"x-request-id", request_id))
    return out


def connection_header_tokens(value: bytes) -> list[bytes]:
    """The header names a Connection header drops, framing headers excepted."""
    return [t for t in (t.strip().lower() for t in value.split(b",")) if t not in _ALWAYS_END_TO_END]


def _without_headers(parts: list[bytes], names: list[bytes]) -> list[bytes]:
    """Drop the headers a Connection header named from a flat [name, ": ", value, CRLF, ...] list."""
    out: list[bytes] = []
    for i in range(0, len(parts), 4):
        if parts[i] not in names:
            out += parts[i : i + 4]
    return out


class RequestIds:
    """X-Request-ID values: a random prefix per gateway and a counter, so ids are unique and cost no syscall."""

    __slots__ = ("_counter", "_prefix")

    def __init__(self) -> None:
        self._prefix = os.urandom(6).hex().encode()
        self._counter = 0

    def new(self) -> bytes:
        self._counter += 1
        return b"%s-%x" % (self._prefix, self._counter)

    def for_answer(self, headers: Iterable[tuple[bytes, bytes]]) -> tuple[bytes, bytes]:
        """The X-Request-ID header for an answer the gateway gives itself: the client's, or a new one."""
        for name, value in headers:
            if name == b"x-request-id" and REQUEST_ID_OK.match(value):
                return (b"x-request-id", value)
        return (b"x-request-id", self.new())
