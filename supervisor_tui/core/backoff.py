"""Backoff: how long to wait before the next attempt, one formula for every retry loop in the product.

    backoff_delay(0, base=1.0, cap=30.0)   # 1.0, then 2.0, 4.0 ... for attempts 1, 2 ..., never over 30.0

The wait doubles from ``base`` with each attempt (0 is the first retry) and never exceeds ``cap``. Each caller
keeps its own figures: plugin start retries and crash restarts (1 s up to the manifest's ``backoff_max_s``), the
console agent (1 s up to 60 s or its interval), webhook deliveries (``backoff`` up to ``backoff_max``), the
attached TUI's event stream (0.5 s up to 5 s), the PostgreSQL store's after-commit NOTIFYs (0.05 s up to 2 s) and
its listener's reconnects (0.2 s up to 5 s).
"""

from __future__ import annotations

MAX_DOUBLINGS = 62  # far past any cap in seconds; keeps 2**attempt a float after a long outage's thousand attempts


def backoff_delay(attempt: int, base: float, cap: float) -> float:
    """Seconds to wait before retry number ``attempt`` (0-based): ``base * 2**attempt``, at most ``cap``."""
    return min(cap, base * 2 ** min(max(attempt, 0), MAX_DOUBLINGS))
