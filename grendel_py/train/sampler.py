"""Which cameras each iteration trains on: epoch-shuffled, seeded, no camera twice in one batch.

Every rank builds the same sampler from the same seed and so draws the same batches without talking.
"""

from __future__ import annotations

import torch


class CameraSampler:
    """Batches of ``batch_size`` distinct indices into ``n`` cameras. Each epoch is a fresh seeded permutation
    and every camera is drawn once per epoch; a batch that crosses an epoch boundary takes the rest of the old
    epoch and skips, in the new one, the cameras it already has (they are drawn later in that epoch)."""

    def __init__(self, n: int, batch_size: int, seed: int):
        if n <= 0:
            raise ValueError("no cameras to sample from")
        if not 0 < batch_size <= n:
            raise ValueError(f"batch size {batch_size} must be in 1..{n} (the number of training cameras)")
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.epoch = 0
        self._order = self._permutation(0)

    def _permutation(self, epoch: int) -> list[int]:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.n, generator=gen).tolist()

    def next_batch(self) -> list[int]:
        """The next batch of camera indices."""
        batch: list[int] = []
        while len(batch) < self.batch_size:
            if not self._order:
                self.epoch += 1
                fresh = self._permutation(self.epoch)
                self._order = [i for i in fresh if i not in batch] + [i for i in fresh if i in batch]
            batch.append(self._order.pop(0))
        return batch

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "order": list(self._order)}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self._order = int(state["epoch"]), [int(i) for i in state["order"]]
