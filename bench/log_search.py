"""What log search costs: ``core.log_search.grep`` (the regex module, a timeout per line) over full ring buffers,
against the same pattern with the ``re`` module and no timeout (the baseline), in the same run.

    .venv/bin/python bench/log_search.py                  # 20 sources x 10,000 lines, 5 rounds
    .venv/bin/python bench/log_search.py --sources 50 --rounds 3

Prints the best of ``--rounds`` per pattern and the ratio to the baseline. Nothing is started: the lines are
made in memory, shaped like plugin access logs.
"""

from __future__ import annotations

import argparse
import re
import time
from dataclasses import dataclass

from supervisor_tui.core.log_search import compile_pattern, grep

PATTERNS = {
    "literal": "timeout",
    "alternation": "timeout|refused|reset by peer",
    "anchored class": r'" 5\d\d \d+$',
    "case-insensitive": "(?i)ERROR .* order 4711",
}


@dataclass(frozen=True, slots=True)
class Line:
    message: str


def make_lines(sources: int, per_source: int) -> list[Line]:
    out = []
    for i in range(sources * per_source):
        status = 500 + i % 4 if i % 97 == 0 else 200
        extra = " upstream timeout" if i % 1013 == 0 else ""
        out.append(Line(f'127.0.0.1 - - "GET /api/orders/{i % 5000} HTTP/1.1" {status} {i % 9000}{extra}'))
    return out


def best(fn: object, rounds: int) -> tuple[float, int]:
    times, found = [], 0
    for _ in range(rounds):
        t0 = time.perf_counter()
        found = fn()  # type: ignore[operator]
        times.append(time.perf_counter() - t0)
    return min(times), found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sources", type=int, default=20)
    parser.add_argument("--lines", type=int, default=10_000, help="lines per source (data.log_ring_lines)")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    lines = make_lines(args.sources, args.lines)
    limit = len(lines)  # every match: the whole buffer is scanned
    print(f"{len(lines):,} lines ({args.sources} sources x {args.lines:,}), best of {args.rounds} rounds")
    print(f"{'pattern':<18} {'re, no bound':>13} {'log_search':>11} {'ratio':>6}  matches")
    for name, text in PATTERNS.items():
        plain = re.compile(text)
        base, base_found = best(lambda p=plain: sum(1 for r in lines if p.search(r.message)), args.rounds)
        pattern = compile_pattern(text)
        ours, found = best(lambda p=pattern: len(grep(lines, p, limit, budget=60.0)), args.rounds)
        assert found == base_found, (name, found, base_found)
        print(f"{name:<18} {base * 1000:>10.1f} ms {ours * 1000:>8.1f} ms {ours / base:>5.2f}x  {found}")


if __name__ == "__main__":
    main()
