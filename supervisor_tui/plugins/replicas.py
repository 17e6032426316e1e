"""ReplicatedRunner: a process plugin run as N replicas behind one key (manifest ``replicas``, ``scale(n)``).

Replica 0 is the runner itself (so a plugin of one replica behaves exactly as a plain ProcessRunner); replicas
1..N-1 are ProcessRunners it owns, each its own process group on its own port, with ``PLUGIN_REPLICA`` in its
environment and its own log source, cgroup and recorded pid under ``key#N`` (see ProcessRunner.instance).

The key's state is its replicas' states taken together (``combined_state``): RUNNING while any replica is RUNNING,
else the most active of the others; its detail counts them (``2/3 replicas RUNNING``). Every replica's change is
reported as a change of the key, so the gateway's route follows the RUNNING replicas. Its metrics sample is the
sum over the replicas; each replica's own figures are in ``snapshot().replicas``.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Mapping

import msgspec

from supervisor_tui.config import local_url
from supervisor_tui.core.events import MetricsSample
from supervisor_tui.plugins.manifest import Manifest, ManifestError
from supervisor_tui.plugins.manifest_schema import MAX_REPLICAS
from supervisor_tui.plugins.model import PluginActionError, PluginSnapshot, PluginState, ReplicaSnapshot
from supervisor_tui.plugins.process import ProcessRunner, RunnerContext

S = PluginState
# Which state the key shows when replicas differ: the first one any replica is in.
_PRECEDENCE = (S.RUNNING, S.STARTING, S.BACKOFF, S.STOPPING, S.EXITED, S.FATAL, S.STOPPED, S.INVALID)


def combined_state(states: list[PluginState]) -> PluginState:
    """The state of a key from its replicas' states: RUNNING if any is, else the most active one."""
    for state in _PRECEDENCE:
        if state in states:
            return state
    return states[0]


class ReplicatedRunner(ProcessRunner):
    """A process plugin with ``count`` replicas; it is replica 0 and owns the others."""

    def __init__(
        self,
        key: str,
        manifest: Manifest | None,
        ctx: RunnerContext,
        error: ManifestError | None = None,
        env_overrides: Mapping[str, str] | None = None,
        count: int | None = None,
    ) -> None:
        self.others: list[ProcessRunner] = []  # replicas 1..count-1, in order
        self._own_sample: MetricsSample | None = None  # replica 0's last sample (last_sample is the key's sum)
        super().__init__(key, manifest, ctx, error, env_overrides)
        self._member_ctx = dataclasses.replace(ctx, on_state=self._member_changed)
        self.count = 1
        self._combined = str(self.state)
        self._grow(count or (manifest.replicas if manifest is not None else 1))

    # -- the replicas --------------------------------------------------------------------------------------------
    @property
    def members(self) -> list[ProcessRunner]:
        """Every replica, replica 0 (this runner) first."""
        return [self, *self.others]

    @property
    def env_overrides(self) -> dict[str, str]:
        return self._env_overrides

    @env_overrides.setter
    def env_overrides(self, value: dict[str, str]) -> None:
        self._env_overrides = value
        for other in self.others:
            other.env_overrides = value

    def _grow(self, count: int) -> list[ProcessRunner]:
        added = []
        while len(self.others) + 1 < count:
            other = ProcessRunner(
                self.key, self.manifest, self._member_ctx, self.error, self.env_overrides, replica=len(self.others) + 1
            )
            other.desired = self.desired
            self.others.append(other)
            added.append(other)
        self.count = count
        return added

    @property
    def replica_count(self) -> int | None:
        return self.count

    def check_scale(self, count: int) -> None:
        """PluginActionError when this plugin cannot run ``count`` replicas (bounds, fixed port, free ports)."""
        if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_REPLICAS:
            raise PluginActionError(self.key, f"replicas must be an integer from 1 to {MAX_REPLICAS}, got {count!r}")
        m = self.manifest
        if m is None:
            raise PluginActionError(self.key, f"cannot scale an INVALID plugin: {self.error}")
        if m.port is not None and count > 1:
            raise PluginActionError(self.key, f"it has the fixed port {m.port}: a fixed port serves one replica")
        if count > self.count:
            available = self.ctx.ports.free_count() + sum(1 for m in self.members if m.port is not None)
            if count > available:
                raise PluginActionError(
                    self.key, f"{count} replicas need {count} ports, the port range has {available} free for them"
                )

    async def scale(self, count: int, reason: str = "scaled by operator") -> None:
        """Run ``count`` replicas: new ones start when the plugin is meant to run; the highest ones stop (their
        whole process groups) when there are too many. Raises PluginActionError for a count it cannot run."""
        self.check_scale(count)
        if count > self.count:
            added = self._grow(count)
            self._report_change(added[0].replica, "STOPPED", "STOPPED", f"added ({reason})")
            if self.active or self.state == S.RUNNING:
                await asyncio.gather(*(other.start(reason) for other in added))
        elif count < self.count:
            removed = self.others[count - 1 :]
            del self.others[count - 1 :]
            self.count = count
            # Out of the route first, then stopped, highest first together.
            self._report_change(removed[0].replica, "RUNNING", "STOPPING", f"removed ({reason})")
            await asyncio.gather(*(other.stop(reason) for other in reversed(removed)))

    # -- state ---------------------------------------------------------------------------------------------------
    def _notify(self, old: str, new: str, reason: str) -> None:
        self._report_change(0, old, new, reason)

    def _member_changed(self, runner: ProcessRunner, old: str, new: str, reason: str) -> None:
        if runner in self.others:  # a replica scaled away reports nothing more about the key
            self._report_change(runner.replica, old, new, reason)

    def _report_change(self, replica: int, old: str, new: str, reason: str) -> None:
        if self.count == 1:
            self._combined = new
            self.ctx.on_state(self, old, new, reason)
            return
        before = self._combined
        self._combined = str(combined_state([m.state for m in self.members]))
        self.ctx.on_state(self, before, self._combined, f"replica {replica}: {old} -> {new}: {reason}")

    def snapshot(self) -> PluginSnapshot:
        own = super().snapshot()
        own_sample = self._own_sample if self.others else self.last_sample
        replicas = (_replica(self, own_sample), *(_replica(other, other.last_sample) for other in self.others))
        if self.count == 1:
            return msgspec.structs.replace(own, replicas=replicas)
        state = combined_state([m.state for m in self.members])
        running = [r for r in replicas if r.state == S.RUNNING]
        detail = f"{len(running)}/{len(replicas)} replicas RUNNING"
        if own.detail:
            detail += f"; replica 0: {own.detail}"
        return msgspec.structs.replace(
            own,
            state=state,
            detail=detail,
            upstream=own.upstream or next((r.upstream for r in replicas if r.upstream), None),
            restarts=sum(r.restarts for r in replicas),
            replicas=replicas,
        )

    async def wait_for(self, states: set[PluginState] | None = None, timeout: float | None = None) -> PluginState:  # noqa: ASYNC109
        """Wait until the key's state is one of ``states`` (default: every replica settled)."""
        if self.count == 1:
            return await super().wait_for(states, timeout)

        async def wait() -> None:
            if states is None:
                await asyncio.gather(*(ProcessRunner.wait_for(m) for m in self.members))
                return
            while combined_state([m.state for m in self.members]) not in states:
                waiters = [asyncio.ensure_future(m._changed.wait()) for m in self.members]
                try:
                    await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for w in waiters:
                        w.cancel()

        await asyncio.wait_for(wait(), timeout)
        return combined_state([m.state for m in self.members])

    # -- actions -------------------------------------------------------------------------------------------------
    async def start(self, reason: str = "started by operator") -> None:
        await super().start(reason)
        if self.others:
            await asyncio.gather(*(other.start(reason) for other in self.others))

    async def stop(self, reason: str = "stopped by operator") -> None:
        await asyncio.gather(super().stop(reason), *(other.stop(reason) for other in reversed(self.others)))

    def replace_manifest(self, manifest: Manifest | None, error: ManifestError | None = None) -> None:
        for other in self.others:
            other.replace_manifest(manifest, error)
        super().replace_manifest(manifest, error)

    def report_upstream(self, ok: bool, detail: str = "") -> None:
        for member in self.members:
            ProcessRunner.report_upstream(member, ok, detail)

    def pids(self) -> set[int]:
        """The main processes of every replica (their exit status belongs to the event loop)."""
        return {m.pid for m in self.members if m.pid}

    def sample(self) -> MetricsSample | None:
        own = self._own_sample = super().sample()
        if not self.others:
            return own
        samples = [s for s in [own, *(other.sample() for other in self.others)] if s is not None]
        if not samples:
            return None
        total = MetricsSample(
            key=self.key,
            cpu_percent=sum(s.cpu_percent for s in samples),
            rss=sum(s.rss for s in samples),
            threads=sum(s.threads for s in samples),
            fds=sum(s.fds for s in samples),
            processes=sum(s.processes for s in samples),
        )
        self.last_sample = total
        if own is not None:  # the history is the key's: its sum replaces replica 0's own sample
            self.metrics_history[-1] = total
        else:
            self.metrics_history.append(total)
        return total


def _replica(runner: ProcessRunner, sample: MetricsSample | None) -> ReplicaSnapshot:
    return ReplicaSnapshot(
        index=runner.replica,
        state=runner.state,
        detail=runner.detail,
        pid=runner.pid,
        port=runner.port,
        upstream=local_url(runner.ctx.host, runner.port) if runner.ready and runner.port else None,
        started_at=runner.started_at,
        restarts=runner.restarts,
        cpu_percent=sample.cpu_percent if sample is not None else None,
        rss=sample.rss if sample is not None else None,
    )
