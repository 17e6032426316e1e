"""RunsNoProcess: what a plugin without a process of its own here (in-process, external) answers to the questions
the supervisor asks of process plugins: it refuses to scale or take environment overrides, has no pids to reap,
no process tree to sample and no metrics history."""

from __future__ import annotations

from collections.abc import Mapping

from supervisor_tui.core.events import MetricsSample
from supervisor_tui.plugins.model import PluginActionError


class RunsNoProcess:
    """A part of InProcessPlugin and ExternalPlugin (declared here: what it uses of them)."""

    key: str
    kind: str
    is_task = False  # a oneshot task is a process that runs to its end
    replica_count: int | None = None  # no replicas: scale refuses

    def _not_a_process(self) -> PluginActionError:
        return PluginActionError(self.key, f"not a local process plugin (kind {self.kind})")

    def check_scale(self, count: int) -> None:
        """Refused: only a local process plugin runs replicas."""
        raise self._not_a_process()

    async def scale(self, count: int, reason: str = "scaled by operator") -> None:
        raise self._not_a_process()

    def check_env_overrides(self) -> None:
        """Refused: only a local process plugin gets an environment from the supervisor."""
        raise self._not_a_process()

    def set_env_overrides(self, env: Mapping[str, str]) -> None:
        raise self._not_a_process()

    def pids(self) -> set[int]:
        return set()

    def sample(self) -> MetricsSample | None:
        return None

    def history(self) -> list[MetricsSample]:
        return []
