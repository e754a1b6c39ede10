"""Stopping on request: SIGTERM (what SLURM, torchrun and Kubernetes send before killing a job), SIGUSR1
(``sbatch --signal``) and SIGINT (Ctrl-C) make training stop at the end of the current iteration, on every
rank, after a checkpoint.

While :class:`StopSignals` is active those signals only raise a flag. The training loop folds the flags into
the all-reduce it does every iteration anyway (:meth:`StopSignals.flags` / :func:`agreed_signal`), so all
ranks agree on the same last iteration, and on the signal, even when it reaches them at different moments
(or only one of them); they then write one consistent checkpoint and raise :class:`Preempted`, which the CLI
turns into the exit status :data:`grendel_py.errors.EXIT_PREEMPTED` (SIGTERM, SIGUSR1: requeue) or
:data:`grendel_py.errors.EXIT_INTERRUPTED` (Ctrl-C).

A second Ctrl-C, :data:`REPEAT_S` seconds or more after the first, aborts at once (KeyboardInterrupt) without
waiting for the checkpoint; repeats within that time are the same request (a terminal sends SIGINT to the
whole process group, and torchrun then forwards its own to the workers).
"""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)  # in order of precedence when ranks disagree
REPEAT_S = 2.0


class Preempted(Exception):
    """Training stopped on the signal ``signal_name`` after writing the checkpoint ``checkpoint`` at
    ``images_seen`` images (``where``: "" when this rank got the signal, else on which ranks it arrived)."""

    def __init__(self, signal_name: str, images_seen: int, checkpoint: Path, where: str = ""):
        self.signal_name, self.images_seen, self.checkpoint = signal_name, images_seen, checkpoint
        on = f" {where}" if where else ""
        super().__init__(f"stopped by {signal_name}{on} after {images_seen} images; checkpoint {checkpoint}")


class StopSignals:
    """Context manager: inside it, :data:`STOP_SIGNALS` set :attr:`received` (the first one's name) instead of
    ending the process; the previous handlers come back on exit. Outside the main thread (where Python
    cannot take signals) it does nothing, and signals the process ignores stay ignored."""

    def __init__(self, signals: tuple[signal.Signals, ...] = STOP_SIGNALS):
        self.signals = signals
        self.received: str | None = None
        self._seen: set[signal.Signals] = set()
        self._first_interrupt: float | None = None
        self._previous: dict[signal.Signals, object] = {}

    def _handle(self, signum: int, frame) -> None:
        sig = signal.Signals(signum)
        if sig == signal.SIGINT:
            now = time.monotonic()
            if self._first_interrupt is None:
                self._first_interrupt = now
            elif now - self._first_interrupt >= REPEAT_S:
                raise KeyboardInterrupt  # asked twice: stop now, without the checkpoint
        self._seen.add(sig)
        if self.received is None:
            self.received = sig.name

    def flags(self) -> list[float]:
        """One number per signal of :data:`STOP_SIGNALS`: 1 when this rank got it; sum them over the ranks."""
        return [float(s in self._seen) for s in STOP_SIGNALS]

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            # a signal ignored at start (SIGINT of a job started in the background by a shell) stays ignored
            taken = [s for s in self.signals if signal.getsignal(s) is not signal.SIG_IGN]
            self._previous = {s: signal.signal(s, self._handle) for s in taken}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}


def agreed_signal(summed_flags: list[float]) -> str | None:
    """The signal every rank stops on, from the sum over ranks of :meth:`StopSignals.flags` (the same on every
    rank): the first of :data:`STOP_SIGNALS` that any rank got, or None."""
    for s, count in zip(STOP_SIGNALS, summed_flags):
        if count > 0:
            return s.name
    return None
