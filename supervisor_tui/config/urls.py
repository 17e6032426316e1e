"""URLs from settings: the local URL of a bound server, and any URL with its password hidden."""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit


def local_url(host: str, port: int) -> str:
    """The http:// base URL a client on this host uses to reach a server bound to (host, port)."""
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{port}"


def masked_url(url: str) -> str:
    """``url`` (a Redis or admin URL, a PostgreSQL DSN) with its password shown as ``***``: the one in the
    authority (``user:password@``) and a ``password=`` parameter; for logs, status and ``config``."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return "***"  # not a URL we can take apart: show none of it
    if password:
        userinfo, _, hostinfo = parts.netloc.rpartition("@")
        user = userinfo.partition(":")[0]
        url = urlunsplit(parts._replace(netloc=f"{user}:***@{hostinfo}"))
    return re.sub(r"([?&]password=)[^&#]*", r"\1***", url, flags=re.IGNORECASE)
