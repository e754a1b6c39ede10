"""Lost ranks: when a rank dies, the others stop within a set time and say which one it was.

A collective with a dead peer either fails at once (the peer's sockets closed: gloo raises a bare
"Connection reset by peer" that names no rank) or blocks until the process group's timeout (the peer's
machine vanished). Neither says who is gone. So every rank runs a :class:`Watchdog` thread that beats a
counter into the job's rendezvous store every ``interval`` seconds and watches one neighbour, rank
``(r + 1) % W``: O(1) store operations per rank and beat, at any W. When the neighbour's counter has not
moved for ``timeout_s`` seconds, the watcher publishes the verdict under one store key; every rank's
watchdog polls that key, prints ``error: rank K is lost: ...`` and ends its process with
:data:`grendel_py.errors.EXIT_LOST_RANK`, whatever its main thread is blocked in. A store that stops
answering means its host is gone (rank 0, or the launcher that hosts it).

Checkpoints are written file by file atomically and sealed by a manifest last, so stopping a process at any
point leaves the last complete checkpoint intact.

A rank whose training raised an error that may come from a dead peer (:func:`looks_like_peer_loss`) keeps
beating and waits up to ``timeout_s`` for the verdict before re-raising, so that the message names the lost
rank rather than a socket error.
"""

from __future__ import annotations

import os
import sys
import threading
import time
import uuid

import torch.distributed as dist

from grendel_py.errors import EXIT_LOST_RANK
from grendel_py.parallel.runtime import DistContext

_PEER_LOSS_WORDS = ("gloo", "nccl", "connection", "socket", "timed out", "timeout", "broken pipe", "peer")


def looks_like_peer_loss(error: BaseException) -> bool:
    """Whether ``error`` may be a collective failing because another rank is gone (the backends raise
    RuntimeError or DistError with the transport's words)."""
    if isinstance(error, dist.DistError):
        return True
    return isinstance(error, RuntimeError) and any(w in str(error).lower() for w in _PEER_LOSS_WORDS)


def _exit_lost(ctx: DistContext, verdict: str) -> None:
    print(f"error: {verdict} (seen by rank {ctx.rank}); stopping", file=sys.stderr, flush=True)
    os._exit(EXIT_LOST_RANK)


class Watchdog:
    """Heartbeats of this rank and its neighbour through the default process group's store (a context
    manager; nothing happens for a single process). ``on_lost(ctx, verdict)`` ends the process."""

    def __init__(self, ctx: DistContext, timeout_s: float, on_lost=_exit_lost):
        self.ctx, self.timeout_s, self.on_lost = ctx, timeout_s, on_lost
        self.interval = min(1.0, timeout_s / 4)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Watchdog:
        if not self.ctx.distributed:
            return self
        # keys of this job alone: a launcher's store outlives the job's restarts (torchrun --max-restarts)
        run = [uuid.uuid4().hex if self.ctx.is_main else None]
        dist.broadcast_object_list(run, src=0)
        self._beat, self._verdict = f"grendel/{run[0]}/heartbeat/{{}}", f"grendel/{run[0]}/lost"
        self._store = dist.distributed_c10d._get_default_store()
        self._store.set(self._beat.format(self.ctx.rank), "0")
        dist.barrier()  # every heartbeat key exists before anyone reads one
        self._thread = threading.Thread(target=self._run, name="grendel-watchdog", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._thread is None:
            return
        if exc is not None and looks_like_peer_loss(exc):
            self._thread.join(self.timeout_s + 4 * self.interval)  # on_lost ends the process if a rank is lost
        self._stop.set()
        self._thread.join()
        if exc is None or getattr(exc, "on_every_rank", False):
            dist.barrier()  # no rank leaves (and stops answering) while another still watches it

    def _run(self) -> None:
        neighbour = (self.ctx.rank + 1) % self.ctx.world_size
        beat, seen, since = 0, None, time.monotonic()
        while not self._stop.wait(self.interval):
            try:
                beat += 1
                self._store.set(self._beat.format(self.ctx.rank), str(beat))
                if self._store.check([self._verdict]):
                    self.on_lost(self.ctx, self._store.get(self._verdict).decode())
                    return
                value = self._store.get(self._beat.format(neighbour))
            except Exception as e:  # the store's host is gone; its errors come in assorted types
                if self._stop.is_set():  # this rank is leaving anyway
                    return
                self.on_lost(
                    self.ctx,
                    f"rank 0 (or the launcher hosting the job's store) is lost: the store does not answer ({e})",
                )
                return
            now = time.monotonic()
            if value != seen:
                seen, since = value, now
            elif now - since > self.timeout_s:
                verdict = f"rank {neighbour} is lost: no heartbeat for {now - since:.0f} s"
                try:
                    self._store.set(self._verdict, verdict)
                finally:
                    self.on_lost(self.ctx, verdict)
                return
