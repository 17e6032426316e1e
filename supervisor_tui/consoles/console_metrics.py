"""What the console service counts for /metrics: heartbeats accepted and refused (by reason), registrations."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

REJECT_REASONS = (
    "invalid_json",
    "invalid_field",
    "too_large",
    "unsupported_encoding",
    "console_not_found",
    "unauthorized",
    "forbidden",
    "unavailable",
)


@dataclass(slots=True)
class ConsoleMetrics:
    """Figures for /metrics: heartbeat counters (every refusal reason listed), console counts by state, and the
    writer's transactions."""

    heartbeats_accepted: int
    heartbeats_rejected: dict[str, int]
    registrations: int
    consoles_by_state: dict[str, int]
    write_batches: int
    write_failures: int
    history_skipped: int = 0  # rows of a damaged history table not written


@dataclass
class ConsoleCounters:
    """The service's running counts (ConsoleMetrics is their snapshot with the gauges)."""

    accepted: int = 0
    registrations: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
