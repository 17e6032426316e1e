"""HTTP health probes (httpx) and the consecutive-failure rule shared by active and passive health."""

from __future__ import annotations

import time

import httpx


def make_client() -> httpx.AsyncClient:
    """One client for every probe: no proxies from the environment (plugins are local), no keep-alive reuse
    across restarts that could hit a dead process."""
    return httpx.AsyncClient(
        trust_env=False,
        follow_redirects=False,
        limits=httpx.Limits(max_keepalive_connections=0, max_connections=200),
    )


async def probe(client: httpx.AsyncClient, url: str, timeout: float) -> tuple[bool, str]:  # noqa: ASYNC109
    """GET ``url``: healthy on a 2xx/3xx answer within ``timeout`` seconds. Returns (ok, detail)."""
    started = time.monotonic()
    try:
        response = await client.get(url, timeout=timeout)
    except httpx.TimeoutException:
        return False, f"no answer within {timeout:g}s"
    except httpx.HTTPError as exc:
        return False, f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    ms = (time.monotonic() - started) * 1000
    if 200 <= response.status_code < 400:
        return True, f"HTTP {response.status_code} in {ms:.0f} ms"
    return False, f"HTTP {response.status_code}"


class HealthTracker:
    """Counts consecutive failures; reports a flip to unhealthy after ``failures`` of them, and back to healthy
    on the first success. ``healthy`` is None until the first result."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.consecutive = 0
        self.healthy: bool | None = None
        self.detail = ""

    def record(self, ok: bool, detail: str) -> bool | None:
        """Record one outcome; returns the new health when it flipped, else None."""
        self.detail = detail
        if ok:
            self.consecutive = 0
            if self.healthy is not True:
                self.healthy = True
                return True
            return None
        self.consecutive += 1
        if self.consecutive >= self.failures and self.healthy is not False:
            self.healthy = False
            return False
        return None

    def reset(self) -> None:
        self.consecutive = 0
        self.healthy = None
        self.detail = ""
