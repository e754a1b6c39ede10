"""Seconds per stage of the training step, and the counts that drive each, for the cost model (issue 38:
``bench/calibrate.py`` fits each stage's seconds to its counts).

The step marks the end of each forward stage; the backward stages end when autograd computes the gradient
of the tensor at a stage's boundary, so the step hooks those tensors (:meth:`StageClock.on_grad`). A stage's
seconds are the time from the previous mark to its own; a stage marked several times (one hook per camera's
region) gets the sum of its intervals. Off by default (``StepOptions.clock`` None): the step then marks
nothing and hooks nothing. Wall time on the CPU; on a GPU, CUDA events on the current stream, read once
(:meth:`StageClock.seconds` waits for the last).
"""

from __future__ import annotations

import time

import torch

FORWARD = ("project", "table", "exchange", "rasterize", "halo", "loss")
"""The forward stages the step marks, in order: projection; pairs, tile table (two all-reduces) and plan;
splat exchange; rasterization; halo exchange; loss."""
BACKWARD = ("loss_backward", "rasterize_backward", "exchange_backward", "project_backward")
"""The backward stages, in order: the loss's (to the canvases); the halo's and the rasterizer's (to the
received splats); the exchange's (to the projected splats); the projection's (to the parameters: marked by
whoever called ``backward()``, when it returns)."""


class StageClock:
    """Marks and counts for one iteration (:meth:`start` begins one)."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self._marks: list[tuple[str, object]] = []
        self.counts: dict[str, float] = {}

    def _now(self):
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def start(self) -> None:
        """Begin an iteration: marks and counts cleared."""
        self._marks, self.counts = [("", self._now())], {}

    def mark(self, stage: str) -> None:
        """``stage`` ended now."""
        self._marks.append((stage, self._now()))

    def on_grad(self, tensor: torch.Tensor, stage: str) -> None:
        """``stage`` ends when autograd has computed ``tensor``'s gradient (nothing when it needs none)."""
        if tensor.requires_grad:
            tensor.register_hook(lambda _grad: self.mark(stage))

    def count(self, name: str, value: float) -> None:
        """Add ``value`` to the count ``name`` (host numbers only: counting costs no synchronisation)."""
        self.counts[name] = self.counts.get(name, 0.0) + float(value)

    def seconds(self) -> dict[str, float]:
        """Seconds per stage marked since :meth:`start`, in the order first marked."""
        if self.cuda:
            self._marks[-1][1].synchronize()
        out: dict[str, float] = {}
        for (_, before), (stage, after) in zip(self._marks, self._marks[1:]):
            gap = before.elapsed_time(after) / 1000.0 if self.cuda else after - before
            out[stage] = out.get(stage, 0.0) + gap
        return out
