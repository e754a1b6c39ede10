"""Torch's CPU threads follow the cores other jobs leave free (grendel_py.train.cpu_threads)."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from grendel_py.train import cpu_threads
from grendel_py.train.cpu_threads import CoreTimes, CpuThreads, others_use, read_core_times, threads_for


@pytest.mark.parametrize(
    ("others", "cores", "most", "threads"),
    [
        (0.0, 2, 2, 2),
        (0.2, 2, 2, 2),  # noise: daemons, the shell
        (0.3, 2, 2, 1),
        (0.67, 2, 2, 1),  # one other job on one thread, squeezed by this run's two
        (1.0, 2, 2, 1),
        (2.0, 2, 2, 1),  # never fewer than one
        (1.3, 8, 8, 6),
        (0.0, 8, 4, 4),  # never more than the run started with
    ],
)
def test_threads_are_the_cores_other_jobs_leave_free(others, cores, most, threads) -> None:
    assert threads_for(others, cores, most) == threads


def test_other_jobs_use_is_the_busy_time_less_the_runs_own() -> None:
    before = CoreTimes(wall=10.0, cores=2, busy=100.0, own=40.0)
    after = CoreTimes(wall=12.0, cores=2, busy=103.5, own=42.0)  # 3.5 busy seconds in 2 s, 2.0 of them ours
    assert others_use(before, after) == pytest.approx(0.75)
    assert others_use(before, CoreTimes(12.0, 2, 101.0, 42.0)) == 0.0  # clock granularity: never negative


class _Clock:
    """Readings of two cores: each step of the run takes 1 s of which the run uses ``own`` cores and
    other jobs ``others``."""

    def __init__(self):
        self.now = CoreTimes(0.0, 2, 0.0, 0.0)
        self.own, self.others = 2.0, 0.0

    def tick(self, seconds: float = 1.0) -> None:
        n = self.now
        busy = n.busy + seconds * (self.own + self.others)
        self.now = CoreTimes(n.wall + seconds, n.cores, busy, n.own + seconds * self.own)


def test_the_run_takes_a_core_back_when_another_job_leaves_and_gives_back_its_threads(monkeypatch, capsys) -> None:
    monkeypatch.setattr(cpu_threads.torch, "get_num_threads", lambda: 2)
    clock, calls, reads = _Clock(), [], []

    def read() -> CoreTimes:
        reads.append(clock.now.wall)
        return clock.now

    threads = CpuThreads(0, say=True, read=read, set_threads=calls.append, clock=lambda: clock.now.wall)
    clock.tick(0.1)
    threads.on_step(None)  # before FIRST_S: no look, not even a read of /proc/stat
    assert calls == [] and reads == [0.0]
    clock.others, clock.own = 0.7, 1.3  # another job starts, squeezed by this run's two threads
    clock.tick()
    threads.on_step(None)
    assert calls == [1]
    # 0.7 cores for 1 s of the 1.1 s since the first reading
    assert "other jobs use 0.6 of this run's 2 cores: torch threads 2 -> 1" in capsys.readouterr().err
    clock.others, clock.own = 0.0, 1.0
    clock.tick(cpu_threads.PERIOD_S / 2)
    threads.on_step(None)  # within PERIOD_S of the last look
    assert calls == [1]
    clock.tick(cpu_threads.PERIOD_S)
    threads.on_step(None)
    assert calls == [1, 2]
    clock.others = 1.0
    clock.tick(cpu_threads.PERIOD_S)
    threads.on_step(None)
    threads.close()
    assert calls == [1, 2, 1, 2]  # the run gives back the two threads it found
    assert len(reads) == 4  # the first reading and three looks


@pytest.mark.parametrize(
    ("fixed", "found", "set_to"),
    [(1, 2, [1, 2]), (0, 1, [])],  # fixed threads, set and given back; a one-thread rank, left alone
)
def test_fixed_threads_and_one_thread_ranks_never_look_at_the_cores(monkeypatch, fixed, found, set_to) -> None:
    monkeypatch.setattr(cpu_threads.torch, "get_num_threads", lambda: found)
    calls, reads = [], []
    threads = CpuThreads(fixed, say=False, read=lambda: reads.append(1), set_threads=calls.append)
    threads.on_step(None)
    threads.close()
    assert calls == set_to and reads == []


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/stat")
def test_another_busy_process_shows_as_a_core_taken() -> None:
    """A real reading: a child spinning on one core for a second counts as about one core's use by others
    (other processes on the machine can only add to it); this process, sleeping, is not counted."""
    child = subprocess.Popen([sys.executable, "-c", "import time\nt = time.time()\nwhile time.time() - t < 3: pass"])
    try:
        time.sleep(0.5)
        before = read_core_times()
        time.sleep(1.0)
        after = read_core_times()
    finally:
        child.kill()
        child.wait()
    assert after.cores >= 1
    assert others_use(before, after) >= 0.8
