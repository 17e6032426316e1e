"""scripts/pins.py, the versions scripts/test_pins.sh tests at both ends of pyproject.toml's pins: which release a
range picks at each end, extras kept, and the one-line errors. The package index is not asked here."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import tomllib
from types import ModuleType

import pytest
from conftest import REPO
from packaging.requirements import Requirement
from packaging.version import Version


def load_pins() -> ModuleType:
    spec = importlib.util.spec_from_file_location("pins", REPO / "scripts" / "pins.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


pins = load_pins()
RELEASES = [Version(v) for v in ("0.29.0", "0.30.0", "0.30.6", "0.54.0", "0.55.0", "0.56.0rc1")]


@pytest.mark.parametrize(("end", "version"), [("low", "0.30.0"), ("high", "0.54.0")])
def test_each_end_is_the_outermost_release_the_range_allows(end: str, version: str) -> None:
    assert pins.pinned(Requirement("uvicorn[standard]>=0.30,<0.55"), RELEASES, end) == f"uvicorn[standard]=={version}"


def test_a_range_no_release_satisfies_is_an_error_naming_it() -> None:
    with pytest.raises(pins.PinError, match=r"no release of textual satisfies <9,>=8\.2"):
        pins.pinned(Requirement("textual>=8.2,<9"), RELEASES, "high")


def test_every_fenced_package_and_test_tool_is_found_in_pyproject() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    fenced = pins.requirements(project["dependencies"], pins.FENCED)
    tools = pins.requirements(project["optional-dependencies"]["dev"], pins.TEST_TOOLS)
    assert [r.name for r in fenced] == list(pins.FENCED)
    assert [r.name for r in tools] == list(pins.TEST_TOOLS)
    assert all(r.specifier for r in fenced)  # every fenced package has a range to test the ends of
    with pytest.raises(pins.PinError, match=r"pyproject\.toml does not list textual"):
        pins.requirements(["httpx>=0.27"], ("textual",))


def test_a_bad_argument_is_one_line_and_exit_code_2() -> None:
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "pins.py"), "middle"], capture_output=True, text=True, check=False
    )
    assert done.returncode == 2
    assert done.stderr == "usage: pins.py low|high\n" and done.stdout == ""
