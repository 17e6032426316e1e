"""hasher: POST /hash returns the SHA-256 and SHA-512 of the request body (an example of a crypto service).

Standard library only. Listens on 127.0.0.1:$PORT. ``?algorithm=sha256`` (any of GET /algorithms) limits the
answer to one digest. GET /health answers {"status": "ok"}.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

MAX_BODY = int(os.environ.get("HASHER_MAX_BODY", str(64 * 1024 * 1024)))
DEFAULT = ("sha256", "sha512")
ALGORITHMS = sorted(a for a in hashlib.algorithms_guaranteed if not a.startswith("shake"))


class HashHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "hasher/1.0"

    def _reply(self, status: int, payload: dict) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _error(self, status: int, code: str, message: str) -> None:
        self._reply(status, {"error": {"code": code, "message": message}})

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        if path == "/health":
            self._reply(200, {"status": "ok"})
        elif path == "/algorithms":
            self._reply(200, {"algorithms": ALGORITHMS, "default": list(DEFAULT)})
        else:
            self._error(404, "not_found", f"no route GET {path}")

    def do_POST(self) -> None:
        url = urlsplit(self.path)
        if url.path != "/hash":
            self._error(404, "not_found", f"no route POST {url.path}")
            return
        wanted = parse_qs(url.query).get("algorithm", list(DEFAULT))
        unknown = [a for a in wanted if a not in ALGORITHMS]
        if unknown:
            self._error(400, "unknown_algorithm", f"unknown algorithm {unknown[0]!r}; see GET /algorithms")
            return
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            self._error(400, "bad_length", "Content-Length is not a number")
            return
        if length > MAX_BODY:
            self.close_connection = True
            self._error(413, "too_large", f"body over {MAX_BODY} bytes")
            return
        digests = {a: hashlib.new(a) for a in wanted}
        remaining = length
        while remaining > 0:  # stream: a large body is never held in memory at once
            chunk = self.rfile.read(min(remaining, 1 << 20))
            if not chunk:
                break
            remaining -= len(chunk)
            for d in digests.values():
                d.update(chunk)
        self._reply(200, {"size": length - remaining, **{a: d.hexdigest() for a, d in digests.items()}})

    def log_message(self, format: str, *args: object) -> None:
        sys.stdout.write(f"{self.address_string()} {format % args}\n")


def main() -> None:
    port = int(os.environ.get("PORT", "8080"))
    server = ThreadingHTTPServer(("127.0.0.1", port), HashHandler)
    server.daemon_threads = True
    signal.signal(signal.SIGTERM, lambda *_: (server.server_close(), sys.exit(0)))
    print(f"hasher listening on 127.0.0.1:{port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
