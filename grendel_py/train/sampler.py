"""Which cameras each iteration trains on: epoch-shuffled, seeded, no camera twice in one batch.

Every rank builds the same sampler from the same seed (and the same all-reduced affinities) and so draws the
same batches without talking.

Owner-aware batches: given each camera's affinity to the ranks (the share of what it sees that each rank's
shard holds, :func:`camera_affinity`), a batch is filled greedily from the next ``window`` cameras of the
epoch's order, each time taking the camera whose content lies most on the ranks the batch has loaded least
(least dot product of its affinity with the batch's per-rank load so far; ties, as for the first camera of
every batch: the earliest). Batches then mix cameras whose content lives on different ranks, so the tile assignment can keep
every rank busy with its own splats; every camera is still drawn once per epoch.
"""

from __future__ import annotations

import copy

import numpy as np
import torch

from grendel_py.data.cameras import Camera


class CameraSampler:
    """Batches of ``batch_size`` distinct indices into ``n`` cameras. Each epoch is a fresh seeded permutation
    and every camera is drawn once per epoch; a batch that crosses an epoch boundary takes the rest of the old
    epoch and skips, in the new one, the cameras it already has (they are drawn later in that epoch).

    Without affinities, batches are consecutive runs of the permutation; with :meth:`set_affinity`, owner-aware
    (module docstring) within a window of ``window_batches`` batches' worth of upcoming cameras."""

    def __init__(self, n: int, batch_size: int, seed: int, window_batches: int = 4):
        if n <= 0:
            raise ValueError("no cameras to sample from")
        if not 0 < batch_size <= n:
            raise ValueError(f"batch size {batch_size} must be in 1..{n} (the number of training cameras)")
        if window_batches < 1:
            raise ValueError(f"window_batches must be >= 1, got {window_batches}")
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.window = window_batches * batch_size
        self.epoch = 0
        self._order = self._permutation(0)
        self._affinity: np.ndarray | None = None

    def set_affinity(self, affinity: np.ndarray | None) -> None:
        """Per camera, the share of its content on each rank, [n, W] rows summing to 1 (None: plain shuffle)."""
        if affinity is not None and (affinity.ndim != 2 or affinity.shape[0] != self.n):
            raise ValueError(f"affinity must be [{self.n}, world_size], got shape {affinity.shape}")
        self._affinity = affinity

    def _permutation(self, epoch: int) -> list[int]:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.n, generator=gen).tolist()

    def _pick(self, batch: list[int], load: np.ndarray | None) -> int:
        """Position in the epoch's order of the next camera."""
        if self._affinity is None or load is None:
            return 0
        # Cameras already in the batch (a new epoch's) never lead the order, so position 0 always qualifies.
        positions = [i for i, c in enumerate(self._order[: self.window]) if c not in batch]
        overlap = self._affinity[[self._order[i] for i in positions]] @ load
        return positions[int(np.argmin(overlap))]  # first minimum: the earliest camera

    def next_batch(self) -> list[int]:
        """The next batch of camera indices."""
        batch: list[int] = []
        load = None if self._affinity is None else np.zeros(self._affinity.shape[1])
        while len(batch) < self.batch_size:
            if not self._order:
                self.epoch += 1
                fresh = self._permutation(self.epoch)
                self._order = [i for i in fresh if i not in batch] + [i for i in fresh if i in batch]
            camera = self._order.pop(self._pick(batch, load))
            batch.append(camera)
            if load is not None:
                load += self._affinity[camera]
        return batch

    def peek_batch(self) -> list[int]:
        """The batch :meth:`next_batch` would return now, without drawing it."""
        probe = copy.copy(self)
        probe._order = list(self._order)
        return probe.next_batch()

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "order": list(self._order)}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self._order = int(state["epoch"]), [int(i) for i in state["order"]]


def camera_affinity(means: torch.Tensor, labels: torch.Tensor, world_size: int, cameras: list[Camera]) -> np.ndarray:
    """How many of the Gaussians ``means`` [N, 3] with rank ``labels`` [N] each camera sees in its image (centre in
    front of the camera and inside the image), float64 [len(cameras), world_size]. Sum over ranks holding parts
    of a model, then :func:`normalize_affinity`."""
    out = np.zeros((len(cameras), world_size))
    x = means.detach().to(torch.float64)
    for k, cam in enumerate(cameras):
        out[k] = torch.bincount(labels[cam.pixels(x)[2]], minlength=world_size).numpy()
    return out


def normalize_affinity(counts: np.ndarray) -> np.ndarray:
    """Rows scaled to sum 1 (a camera that sees nothing: equal shares)."""
    total = counts.sum(axis=1, keepdims=True)
    return np.where(total > 0, counts / np.maximum(total, 1e-300), 1.0 / counts.shape[1])
