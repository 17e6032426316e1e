"""The requirements of one end of pyproject.toml's pins, for scripts/test_pins.sh.

``python scripts/pins.py low`` (or ``high``) prints pip requirements, one a line: each fenced package (the ones
whose internals server/fast_http.py, server/gateway_upstream.py and tui/widgets/keyed_table.py use) pinned with
``==`` to the lowest (highest) release on the package index that its range in ``[project] dependencies`` allows,
extras kept, then the test tools from the ``dev`` extra as pyproject.toml states them. Releases come from
``pip index versions`` (pip's own rules: no pre-releases, only releases this Python can install), so a new
release inside a range is picked up by the next run. Errors are one line on stderr and exit code 1.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"
FENCED = ("uvicorn", "httptools", "textual")  # the packages whose internals the fenced modules rely on
TEST_TOOLS = ("pytest", "pytest-asyncio", "pytest-timeout", "pytest-textual-snapshot")  # what their tests need


class PinError(Exception):
    """A pin that cannot be resolved; the message is the one line shown."""


def requirements(section: list[str], names: tuple[str, ...]) -> list[Requirement]:
    """The requirements of ``names`` in a pyproject list, in the order of ``names``."""
    by_name = {Requirement(line).name.lower(): Requirement(line) for line in section}
    missing = [name for name in names if name not in by_name]
    if missing:
        raise PinError(f"pyproject.toml does not list {', '.join(missing)}")
    return [by_name[name] for name in names]


def releases(name: str) -> list[Version]:
    """The releases of ``name`` the package index offers this Python (pip's rules)."""
    command = [sys.executable, "-m", "pip", "index", "versions", name, "--json", "--disable-pip-version-check"]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        reason = (done.stderr.strip().splitlines() or ["no answer"])[-1]
        raise PinError(f"cannot ask the package index for {name}'s releases: {reason}")
    return [Version(v) for v in json.loads(done.stdout)["versions"]]


def pinned(requirement: Requirement, available: list[Version], end: str) -> str:
    """``requirement`` pinned to the lowest or highest of ``available`` its range allows."""
    allowed = [v for v in available if requirement.specifier.contains(v)]
    if not allowed:
        raise PinError(f"no release of {requirement.name} satisfies {requirement.specifier}")
    version = min(allowed) if end == "low" else max(allowed)
    extras = f"[{','.join(sorted(requirement.extras))}]" if requirement.extras else ""
    return f"{requirement.name}{extras}=={version}"


def resolve(end: str) -> list[str]:
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    fenced = requirements(project["dependencies"], FENCED)
    tools = requirements(project["optional-dependencies"]["dev"], TEST_TOOLS)
    with ThreadPoolExecutor(len(fenced)) as pool:
        available = list(pool.map(releases, [r.name for r in fenced]))
    return [pinned(r, a, end) for r, a in zip(fenced, available, strict=True)] + [str(r) for r in tools]


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0] not in ("low", "high"):
        print("usage: pins.py low|high", file=sys.stderr)
        return 2
    try:
        print("\n".join(resolve(argv[0])))
    except PinError as e:
        print(f"pins: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
