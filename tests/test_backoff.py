"""The one backoff formula: doubling from a base, never over a cap, safe after very many attempts."""

from __future__ import annotations

from supervisor_tui.core.backoff import backoff_delay


def test_waits_double_from_the_base_up_to_the_cap() -> None:
    assert [backoff_delay(n, 1.0, 30.0) for n in range(7)] == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]


def test_the_attached_tui_reconnects_after_half_a_second_then_up_to_every_five() -> None:
    assert [backoff_delay(n, 0.5, 5.0) for n in range(6)] == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0]


def test_a_cap_below_the_base_caps_the_first_wait_too() -> None:
    assert backoff_delay(0, 10.0, 3.0) == 3.0


def test_a_long_outage_stays_at_the_cap_without_overflowing() -> None:
    assert backoff_delay(100_000, 1.0, 60.0) == 60.0


def test_a_zero_base_never_waits_and_a_negative_attempt_counts_as_the_first() -> None:
    assert backoff_delay(5, 0.0, 60.0) == 0.0
    assert backoff_delay(-1, 1.0, 60.0) == 1.0
