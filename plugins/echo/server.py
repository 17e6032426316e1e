"""echo: answers every request with what it received (method, path, query, headers, body) as JSON.

Standard library only. Listens on 127.0.0.1:$PORT; GET /health answers {"status": "ok"}.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

MAX_BODY = 10 * 1024 * 1024


class EchoHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive for the gateway's connection pool
    server_version = "echo/1.0"

    def _reply(self, status: int, payload: dict) -> None:
        body = json.dumps(payload, indent=None).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _handle(self) -> None:
        url = urlsplit(self.path)
        if url.path == "/health":
            self._reply(200, {"status": "ok"})
            return
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            self._reply(413, {"error": {"code": "too_large", "message": f"body over {MAX_BODY} bytes"}})
            self.close_connection = True
            return
        raw = self.rfile.read(length) if length else b""
        try:
            body: object = raw.decode("utf-8")
            encoding = "utf-8"
        except UnicodeDecodeError:
            body, encoding = base64.b64encode(raw).decode(), "base64"
        self._reply(
            200,
            {
                "method": self.command,
                "path": url.path,
                "query": parse_qs(url.query),
                "headers": dict(self.headers.items()),
                "body": body,
                "body_encoding": encoding,
            },
        )

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _handle

    def log_message(self, format: str, *args: object) -> None:
        sys.stdout.write(f"{self.address_string()} {format % args}\n")


def main() -> None:
    port = int(os.environ.get("PORT", "8080"))
    server = ThreadingHTTPServer(("127.0.0.1", port), EchoHandler)
    server.daemon_threads = True
    signal.signal(signal.SIGTERM, lambda *_: (server.server_close(), sys.exit(0)))
    print(f"echo listening on 127.0.0.1:{port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
