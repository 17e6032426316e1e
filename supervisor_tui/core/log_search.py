"""Regex search over log lines (``ctl logs --grep``, ``GET /api/v1/logs?grep=``, the logs pane's ``re:`` filter).

Log lines are plugin output, which anyone who can make a plugin print can shape: a pattern that backtracks
catastrophically on such a line (``(a|aa)+$`` against a long run of "a") would hold the supervisor's event
loop for minutes with the ``re`` module, which cannot be interrupted. The ``regex`` module takes a timeout per
call: each line gets ``LINE_TIMEOUT`` and a whole search ``SEARCH_BUDGET``, and a pattern that runs out is
refused with a clear message (``PatternTooSlow``) instead of answering a partial result as if it were all.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, TypeVar

if TYPE_CHECKING:
    import regex

MAX_PATTERN = 1000  # characters; a pattern longer than this is refused before it is compiled
LINE_TIMEOUT = 0.05  # seconds one line may take
SEARCH_BUDGET = 10.0  # seconds a whole search may take (a full 20 x 10,000-line tail takes about 1 s here)


class LogSearchError(ValueError):
    """A pattern that cannot be used; ``code`` names the kind for the API (bad_pattern, pattern_too_slow)."""

    code = "bad_pattern"


class PatternTooSlow(LogSearchError):
    """The pattern took longer than its time on a line, or the search as a whole did."""

    code = "pattern_too_slow"


class _HasMessage(Protocol):
    @property
    def message(self) -> str: ...


R = TypeVar("R", bound=_HasMessage)


@dataclass(frozen=True, slots=True)
class LogPattern:
    """A compiled search pattern; ``matches`` raises PatternTooSlow instead of running on and on."""

    text: str
    compiled: regex.Pattern[str]

    def matches(self, message: str, timeout: float = LINE_TIMEOUT) -> bool:
        try:
            # concurrent: the GIL is released while matching, so a search in a worker thread leaves the loop free
            return self.compiled.search(message, timeout=timeout, concurrent=True) is not None
        except TimeoutError:
            raise PatternTooSlow(
                f"the pattern {self.text!r} takes too long on a log line (over {timeout * 1000:g} ms): simplify it "
                "(nested repeats like (a+)+ backtrack without end)"
            ) from None


def compile_pattern(text: str) -> LogPattern:
    """``text`` as a pattern (regex syntax, like Python's re); LogSearchError says what is wrong with it."""
    if not text:
        raise LogSearchError("the pattern is empty")
    if len(text) > MAX_PATTERN:
        raise LogSearchError(f"the pattern is longer than {MAX_PATTERN} characters")
    import regex  # loaded by the first search, not by every supervisor (its module costs RSS)

    try:
        return LogPattern(text, regex.compile(text, regex.VERSION0))
    except regex.error as exc:
        raise LogSearchError(f"not a valid regular expression: {exc}") from None
    except (OverflowError, RecursionError, MemoryError):
        raise LogSearchError("the pattern is too large to compile") from None


def grep(records: Sequence[R], pattern: LogPattern, limit: int, budget: float = SEARCH_BUDGET) -> list[R]:
    """The newest ``limit`` records whose message matches, oldest first; PatternTooSlow past ``budget`` seconds."""
    found: list[R] = []
    if limit <= 0:
        return found
    deadline = time.monotonic() + budget
    for rec in reversed(records):
        if len(found) >= limit:
            break
        left = deadline - time.monotonic()
        if left <= 0:
            raise _over_budget(pattern, budget)
        try:
            hit = pattern.matches(rec.message, min(LINE_TIMEOUT, left))
        except PatternTooSlow:
            if left >= LINE_TIMEOUT:
                raise
            raise _over_budget(pattern, budget) from None  # the budget, not the line's time, ran out
        if hit:
            found.append(rec)
    found.reverse()
    return found


def _over_budget(pattern: LogPattern, budget: float) -> PatternTooSlow:
    return PatternTooSlow(
        f"the search for {pattern.text!r} took longer than {budget:g}s: narrow it (one source, a simpler pattern)"
    )


def filter_matching(records: Iterable[R], pattern: LogPattern, budget: float = SEARCH_BUDGET) -> list[R]:
    """Every record whose message matches, in order; PatternTooSlow past ``budget`` seconds."""
    items = list(records)
    return grep(items, pattern, len(items), budget)
