"""Stopping on request: SIGTERM (what SLURM, torchrun and Kubernetes send before killing a job) and SIGUSR1
(``sbatch --signal``) make training stop at the end of the current iteration, on every rank, after a
checkpoint.

While :class:`StopSignals` is active those signals only raise a flag. The training loop folds the flag into
the all-reduce it does every iteration anyway, so all ranks agree on the same last iteration even when the
signal reaches them at different moments (or only one of them); they then write one consistent checkpoint
and raise :class:`Preempted`, which the CLI turns into the exit status
:data:`grendel_py.errors.EXIT_PREEMPTED`.
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class Preempted(Exception):
    """Training stopped on a signal after writing the checkpoint ``checkpoint`` at ``images_seen`` images."""

    def __init__(self, signal_name: str, images_seen: int, checkpoint: Path):
        self.signal_name, self.images_seen, self.checkpoint = signal_name, images_seen, checkpoint
        super().__init__(f"stopped by {signal_name} after {images_seen} images; checkpoint {checkpoint}")


class StopSignals:
    """Context manager: inside it, :data:`STOP_SIGNALS` set :attr:`received` (the first one's name) instead of
    ending the process; the previous handlers come back on exit. Outside the main thread (where Python
    cannot take signals) it does nothing."""

    def __init__(self, signals: tuple[signal.Signals, ...] = STOP_SIGNALS):
        self.signals = signals
        self.received: str | None = None
        self._previous: dict[signal.Signals, object] = {}

    def _handle(self, signum: int, frame) -> None:
        if self.received is None:
            self.received = signal.Signals(signum).name

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in self.signals}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}
