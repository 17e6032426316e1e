"""Fuzz every operation /openapi.json documents with schemathesis, against a real headless supervisor.

For each operation, schema-valid and schema-invalid requests (with the admin token) must never get a 5xx, and
every answer must match what the schema documents: status code, content type, headers and body.

Left out, on purpose:
- the gateway (/api/plugins/{key}/...): not in the schema (each plugin declares its own endpoints) and tested
  against real upstreams in test_gateway*.py;
- `logs?follow=true`: a stream that stays open until the client leaves, so a request-response fuzzer would only
  time out on it (tests/test_api.py follows it for real);
- WS /ws/events: a WebSocket, not in the schema (tests/test_api.py and test_api_auth.py cover it).

Bounded and repeatable: a fixed number of examples per operation, derandomized, no example database.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hypothesis
import pytest
import schemathesis
from conftest import HeadlessProcess
from fixtures.api.harness import REPORTER, REPORTER_ENDPOINTS
from hypothesis import HealthCheck, Phase
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from supervisor_tui.config import Settings

pytestmark = pytest.mark.usefixtures("no_plugin_leftovers")

EXAMPLES = 25  # per operation and generation mode
KEYED_EXAMPLES = 10  # the same with the real plugin's key (some of them restart it)
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


def streams(case: Any) -> bool:
    follow = (case.query or {}).get("follow")
    return str(follow).lower() in ("true", "1", "yes", "on")


# About 100 s on an idle machine, close to the suite's 120 s timeout: on a busy one the timeout cut it mid-run
# (on main too), reported as a flaky operation.
@pytest.mark.timeout(300)
async def test_no_5xx_and_every_answer_matches_the_schema(
    headless: Callable[..., HeadlessProcess], settings: Settings, make_plugin: Callable[..., Path]
) -> None:
    # A plugin to act on, so that generated keys sometimes hit something real.
    make_plugin("web", str(REPORTER), endpoints=REPORTER_ENDPOINTS)
    proc = headless()
    url = str((await proc.wait_for(lambda r: r.get("event") == "api_listening"))["url"])
    await proc.wait_state("web", "RUNNING")
    token = (settings.data_dir / "admin.token").read_text().strip()
    headers = {"Authorization": f"Bearer {token}"}

    schema = schemathesis.openapi.from_url(f"{url}/openapi.json", timeout=30)
    operations = [result.ok() for result in schema.get_all_operations()]
    # Generated keys almost never name a plugin, so every {key} operation also runs on the real one ("web"),
    # the DELETE last since it takes the plugin away.
    keyed = sorted((op for op in operations if "{key}" in op.path), key=lambda op: op.method.upper() == "DELETE")
    runs = [(op, {}, EXAMPLES) for op in operations] + [(op, {"key": "web"}, KEYED_EXAMPLES) for op in keyed]
    failures: list[str] = []
    for operation, path_parameters, examples in runs:
        for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):
            strategy = operation.as_strategy(generation_mode=mode, path_parameters=path_parameters or None)
            try:
                fuzz(
                    strategy,
                    mode,
                    examples,
                    url,
                    headers,
                    operation.path.startswith(("/api/consoles", "/api/consolas")),
                )
            except hypothesis.errors.Unsatisfiable:
                assert mode == schemathesis.GenerationMode.NEGATIVE  # nothing invalid to send (e.g. no parameters)
            except (Exception, BaseExceptionGroup) as exc:  # collect every operation's failure, then report them all
                failures.append(f"{operation.label} {path_parameters} [{mode.value}]: {exc}")
    assert len(operations) >= 25  # the admin API and the console API
    assert not failures, "\n\n".join(failures)
    proc.signal(signal.SIGTERM)
    assert await proc.wait() == 0


def fuzz(
    strategy: Any,
    mode: schemathesis.GenerationMode,
    examples: int,
    url: str,
    headers: dict[str, str],
    console_api: bool,
) -> None:
    """Send ``examples`` generated requests; raises on the first failing check."""
    checks = list(CHECKS)
    if mode == schemathesis.GenerationMode.NEGATIVE and not console_api:
        # Invalid input is refused. Not asked of the console API: its query parameters read an empty value
        # (`?limit=`) as "not given" on purpose, which the check counts as accepting an invalid integer.
        checks.append(negative_data_rejection)

    @hypothesis.settings(
        max_examples=examples,
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @hypothesis.given(case=strategy)
    def run(case: Any) -> None:
        hypothesis.assume(not streams(case))
        case.call_and_validate(base_url=url, headers=headers, checks=checks, timeout=30)

    run()
