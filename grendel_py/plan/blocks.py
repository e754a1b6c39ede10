"""A scene larger in area than the one simulated: ``blocks`` copies of a scene side by side, each seen only by
its own cameras (a city of many blocks, each captured like the one given), for the planner
(:mod:`grendel_py.plan.planner`) to predict runs on models far larger than one process can hold.

Nothing is copied: camera ``k`` is camera ``k % C`` of the base scene (``C`` cameras) looking at block
``k // C``, and its intersections are the base camera's with the Gaussians' rows moved to that block. The
blocks lie on a square grid, and ownership is by block: ``kd`` cuts the grid into one compact run of equal
blocks per rank (the base's own kd cut when there are fewer blocks than ranks does not arise: a scene has at
least as many blocks as ranks); ``array-order`` deals each block's Gaussians over all ranks, as Grendel
shards a model loaded in file order.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from grendel_py.data.cameras import Camera
from grendel_py.simulate import SimScene
from grendel_py.train.sampler import normalize_affinity
from partition.spatial import assign_owners


@dataclass
class BlockScene:
    """``blocks`` copies of ``base`` side by side (module docstring)."""

    base: SimScene
    blocks: int
    cameras: list[Camera] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.cameras = self.base.cameras * self.blocks

    @property
    def name(self) -> str:
        return f"{self.base.name} x{self.blocks}"

    @property
    def gaussians(self) -> int:
        return self.blocks * len(self.base.model)

    def intersections(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Camera ``k``'s (Gaussian row, tile id) pairs, grouped by Gaussian (ascending)."""
        rows, tiles = self.base.intersections(k % len(self.base.cameras))
        return rows + (k // len(self.base.cameras)) * len(self.base.model), tiles

    def block_owners(self, world: int) -> np.ndarray:
        """Each block's rank under ``kd`` ownership: the grid's block centres cut into ``world`` equal runs."""
        if self.blocks < world:
            raise ValueError(f"{self.blocks} blocks cannot give each of {world} ranks whole blocks")
        side = int(np.ceil(np.sqrt(self.blocks)))
        k = torch.arange(self.blocks)
        centres = torch.stack([(k % side).double(), (k // side).double(), torch.zeros(self.blocks)], 1)
        return assign_owners(centres.float(), world, "kd").numpy()

    def owners(self, world: int, ownership: str) -> np.ndarray:
        """Every Gaussian's rank, int32 (module docstring)."""
        n = len(self.base.model)
        if ownership == "array-order":
            return np.tile((np.arange(n, dtype=np.int64) * world // n).astype(np.int32), self.blocks)
        return np.repeat(self.block_owners(world).astype(np.int32), n)

    def affinity(self, owner: np.ndarray, world: int) -> np.ndarray:
        """Each camera's share of the Gaussians it sees per rank, [cameras, W]: a block's cameras see only its
        Gaussians."""
        n, c = len(self.base.model), len(self.base.cameras)
        counts = np.zeros((self.blocks * c, world))
        for b in range(self.blocks):
            share = np.bincount(owner[b * n : (b + 1) * n], minlength=world)
            counts[b * c : (b + 1) * c] = share
        return normalize_affinity(counts)
