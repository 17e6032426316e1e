"""Regenerate the SVG screenshots in this folder from the deterministic demo (fixed clock and data).

.venv/bin/python screenshots/make.py
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

from supervisor_tui.tui.app import SupervisorApp
from supervisor_tui.tui.demo import DemoClient

HERE = Path(__file__).resolve().parent

# name, terminal size, keys pressed before the picture, consoles in the demo
SHOTS: list[tuple[str, tuple[int, int], Sequence[str], int]] = [
    ("main", (160, 48), (), 40),
    ("main-80x24", (80, 24), (), 24),
    ("plugin-detail", (120, 44), ("enter",), 24),
    ("console-detail", (120, 44), ("2", "down", "down", "down", "enter"), 24),
    ("help", (100, 40), ("question_mark",), 24),
    ("graph", (100, 24), ("g",), 24),
]


async def shoot(name: str, size: tuple[int, int], keys: Sequence[str], consoles: int) -> Path:
    app = SupervisorApp(DemoClient(consoles=consoles), handle_signals=False)
    async with app.run_test(size=size) as pilot:
        await pilot.pause(0.3)
        for key in keys:
            await pilot.press(key)
        await pilot.pause(0.3)
        await pilot.wait_for_scheduled_animations()
        path = HERE / f"{name}.svg"
        app.save_screenshot(filename=path.name, path=str(HERE))
    return path


async def main() -> None:
    for name, size, keys, consoles in SHOTS:
        path = await shoot(name, size, keys, consoles)
        print(f"wrote {path.relative_to(HERE.parent)}")


if __name__ == "__main__":
    asyncio.run(main())
