"""Torch's CPU threads follow the cores that other jobs leave free (``train.cpu_threads: 0``, the default).

Torch's OpenMP threads meet at the end of every parallel operation and spin while they wait. When another
job uses one of the cores, a thread that lost its core holds every operation up for a time slice of the
scheduler: on the 2-core CI machine with one other single-threaded job, forward + backward of bench/ab_cpu.py's
render case took 8.6 s on torch's two threads and 0.77 s on one (0.44 s on two with the machine to itself;
bench/results/ab_cpu/threads_render_e52d3dc.jsonl). So a run on the CPU counts, every few seconds, how much of the cores it may run on (its
affinity) the other processes used: the kernel's busy time of those cores (``/proc/stat``) less this process's
own CPU time. Torch gets the cores left free: at most the threads it started with, at least one.

The threads change the order of floating-point sums, not the math; a run that must repeat to the bit sets
``train.cpu_threads`` to a number of threads. Only on Linux (elsewhere the threads stay as they are), only on
the CPU device, and only where a rank has more than one thread (torchrun gives each of several ranks one).
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from tqdm import tqdm

from grendel_py.train.observers import Observer, StepReport

SLACK = 0.25
"""Cores' worth of other processes' use that does not count as a busy core (daemons, the shell)."""
PERIOD_S = 5.0
"""Seconds between two looks at the cores (the first look comes after the first step of at least FIRST_S)."""
FIRST_S = 0.5


@dataclass(frozen=True)
class CoreTimes:
    """At ``wall`` (monotonic seconds): the busy seconds of the cores this process may run on (``cores`` of
    them), summed, and this process's own CPU seconds (all its threads)."""

    wall: float
    cores: int
    busy: float
    own: float


def read_core_times() -> CoreTimes | None:
    """The cores' times now, from ``/proc/stat`` (None where it cannot be read: not Linux)."""
    try:
        allowed = os.sched_getaffinity(0)
        with open("/proc/stat") as f:
            lines = f.read().splitlines()
    except (AttributeError, OSError):
        return None
    tick = os.sysconf("SC_CLK_TCK")
    busy = 0
    for line in lines:
        name, *fields = line.split()
        if not name.startswith("cpu") or name == "cpu" or int(name[3:]) not in allowed:
            continue
        # user nice system idle iowait irq softirq steal (guest time is inside user)
        ticks = [int(v) for v in fields[:8]]
        busy += sum(ticks) - ticks[3] - ticks[4]
    own = os.times()
    return CoreTimes(time.monotonic(), len(allowed), busy / tick, own.user + own.system)


def others_use(before: CoreTimes, after: CoreTimes) -> float:
    """Cores' worth of the allowed cores that other processes used between two readings."""
    wall = after.wall - before.wall
    return max(0.0, (after.busy - before.busy) - (after.own - before.own)) / wall if wall > 0 else 0.0


def threads_for(others: float, cores: int, most: int) -> int:
    """Torch's threads when other processes use ``others`` cores' worth of ``cores``: one per core they leave
    free (a core counts as taken from SLACK of one on), between 1 and ``most``."""
    taken = math.ceil(max(0.0, others - SLACK))
    return max(1, min(most, cores - taken))


class CpuThreads(Observer):
    """Sets torch's CPU threads for the run: ``fixed`` of them, or (0) as many as other jobs leave cores free,
    looked at every PERIOD_S seconds (``clock``: the readings' monotonic clock); a change is said on rank 0. Torch's threads are the process's: the run
    gives back the number it found when it ends (``close``)."""

    def __init__(
        self,
        fixed: int,
        say: bool,
        read: Callable[[], CoreTimes | None] = read_core_times,
        set_threads: Callable[[int], None] = torch.set_num_threads,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.found = torch.get_num_threads()
        self.read, self.set_threads, self.clock, self.say = read, set_threads, clock, say
        self.threads = fixed or self.found
        if fixed:
            self.set_threads(fixed)
        self.last = self.read() if not fixed and self.found > 1 else None
        self.wait = FIRST_S

    def on_step(self, report: StepReport) -> None:
        if self.last is None or self.clock() - self.last.wall < self.wait:
            return
        now = self.read()
        if now is None:
            return
        others = others_use(self.last, now)
        self.last, self.wait = now, PERIOD_S
        threads = threads_for(others, now.cores, self.found)
        if threads != self.threads:
            if self.say:
                tqdm.write(
                    f"cpu: other jobs use {others:.1f} of this run's {now.cores} cores: "
                    f"torch threads {self.threads} -> {threads} (train.cpu_threads fixes them)",
                    file=sys.stderr,
                )
            self.set_threads(threads)
            self.threads = threads

    def close(self) -> None:
        if self.threads != self.found:
            self.set_threads(self.found)
            self.threads = self.found


__all__ = ["CoreTimes", "CpuThreads", "read_core_times", "others_use", "threads_for"]
