"""The process-tree sampler against psutil's own figures for the same real processes."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator

import psutil
import pytest

from supervisor_tui.plugins.metrics import TreeSampler, sample_interval

# A parent that spins on the CPU, with one sleeping child holding 40 MB.
TREE = """\
import subprocess, sys, time
hold = "import time; x = bytearray(40_000_000); print(flush=True); time.sleep(60)"
child = subprocess.Popen([sys.executable, "-c", hold], stdout=subprocess.PIPE)
child.stdout.readline()
print(child.pid, flush=True)
end = time.monotonic() + 60
while time.monotonic() < end:
    pass
"""


@pytest.fixture
def tree() -> Iterator[tuple[subprocess.Popen[str], int]]:
    proc = subprocess.Popen([sys.executable, "-c", TREE], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    child = int(proc.stdout.readline())
    yield proc, child
    for pid in (child, proc.pid):
        try:
            psutil.Process(pid).kill()
        except psutil.Error:
            pass
    proc.wait()


def test_sample_sums_the_tree_like_psutil(tree: tuple[subprocess.Popen[str], int]) -> None:
    proc, child = tree
    sampler = TreeSampler("busy", proc.pid)
    first = sampler.sample()
    assert first is not None and first.processes == 2 and first.cpu_percent == 0.0  # the first one primes
    procs = [psutil.Process(proc.pid), psutil.Process(child)]
    for p in procs:
        p.cpu_percent(None)
    time.sleep(1.0)
    sample = sampler.sample()
    cpu_psutil = sum(p.cpu_percent(None) for p in procs)
    assert sample is not None
    assert sample.processes == 2
    assert sample.cpu_percent > 5 and abs(sample.cpu_percent - cpu_psutil) < 15
    assert sample.rss > 40_000_000
    assert abs(sample.rss - sum(p.memory_info().rss for p in procs)) < 2_000_000
    assert sample.threads == sum(p.num_threads() for p in procs)
    assert sample.fds == sum(p.num_fds() for p in procs)
    assert {p.pid for p in sampler.known_tree()} == {proc.pid, child}


def test_a_dead_root_gives_no_sample_but_its_tree_is_remembered(tree: tuple[subprocess.Popen[str], int]) -> None:
    proc, child = tree
    sampler = TreeSampler("busy", proc.pid)
    assert sampler.sample() is not None
    proc.kill()
    proc.wait()
    assert sampler.sample() is None
    assert child in {p.pid for p in sampler.known_tree()}  # what a stop must still kill


def test_many_plugins_are_sampled_less_often_so_idle_stays_cheap() -> None:
    assert sample_interval(1) == sample_interval(20) == sample_interval(50) == 2.0
    assert sample_interval(500) == 20.0
