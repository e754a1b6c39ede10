"""Assignment of a batch's tiles to ranks: per-tile costs in, contiguous tile ranges per rank out.

Every rank calls :func:`assign_tiles` with the same all-reduced costs and gets the same answer: the
function is pure and computes on the CPU in float64 with single-threaded numpy (sequential prefix sums,
exact for integer costs below 2**53), so the result does not depend on the device, dtype or thread count.

Current algorithm (a placeholder for a locality-aware balancer with calibrated costs): the cameras' tiles
are laid end to end in slot order (camera 0's tiles 0..n0-1, then camera 1's, ...) and the prefix sum of
the tile costs is cut into ``world_size`` contiguous pieces, piece ``k`` going to rank ``k``. Cut ``k``
sits at the tile boundary nearest to the ideal point ``k * total / world_size``, so it misses it by at
most half the cost of the tile straddling that point. Hence, with ``m`` the largest tile cost
(``costs + base_cost``), every rank's work lies within ``total / world_size +- m``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from partition.tiles import TileGrid


@dataclass(frozen=True)
class TileRange:
    """Tiles ``start..stop-1`` (half-open, row-major ids) of the camera in batch slot ``slot``, rendered by ``rank``."""

    slot: int
    start: int
    stop: int
    rank: int


@dataclass(frozen=True)
class Assignment:
    """Which rank renders which tiles of a batch: non-empty, disjoint ranges covering every tile once.

    ``ranges`` are ordered by (rank, slot), which is also their order along the laid-out tiles.
    """

    ranges: tuple[TileRange, ...]
    world_size: int

    def for_rank(self, rank: int) -> list[TileRange]:
        """The ranges of ``rank``, in slot order (at most one per camera)."""
        if not 0 <= rank < self.world_size:
            raise ValueError(f"rank {rank} is outside 0..{self.world_size - 1}")
        return [r for r in self.ranges if r.rank == rank]

    def owner_table(self, slot: int, n_tiles: int) -> torch.Tensor:
        """Rank owning each tile of camera ``slot``, int64 [n_tiles] (-1 for a tile no range covers)."""
        owner = torch.full((n_tiles,), -1, dtype=torch.int64)
        for r in self.ranges:
            if r.slot != slot:
                continue
            if r.stop > n_tiles:
                raise ValueError(f"range {r} reaches past the {n_tiles} tiles of camera {slot}")
            owner[r.start : r.stop] = r.rank
        return owner

    def work(self, costs: list[torch.Tensor]) -> torch.Tensor:
        """Sum of ``costs[b]`` [n_tiles_b] over the tiles of each rank, float64 [world_size] on the CPU.

        The costs are taken as given: add the ``base_cost`` used for the assignment to count it too.
        """
        total = torch.zeros(self.world_size, dtype=torch.float64)
        for b, c in enumerate(costs):
            owner = self.owner_table(b, c.shape[0])
            if bool((owner < 0).any()):
                raise ValueError(f"camera {b} has tiles that no rank owns")
            total.index_add_(0, owner, c.detach().to("cpu", torch.float64))
        return total

    def balance(self, costs: list[torch.Tensor]) -> float:
        """Largest over mean work per rank (1.0 is perfect balance, and the value when all work is 0)."""
        w = self.work(costs)
        mean = w.mean()
        return 1.0 if mean == 0 else float(w.max() / mean)


def assign_tiles(costs: list[torch.Tensor], world_size: int, base_cost: float = 1.0) -> Assignment:
    """Cut the batch's tiles, laid end to end in slot order, into ``world_size`` pieces of near-equal cost.

    ``costs[b]`` is the work of each tile of camera ``b``, float or int [n_tiles_b]; each tile costs
    ``costs[b] + base_cost``. If every tile costs 0, tiles are split by count instead. A rank gets at most
    one range per camera and none when its piece is empty (possible when ``world_size`` exceeds the
    number of tiles). See the module docstring for the balance bound.
    """
    if world_size < 1:
        raise ValueError(f"world_size must be at least 1, got {world_size}")
    if not costs:
        raise ValueError("assign_tiles needs at least one camera")
    if any(c.dim() != 1 for c in costs):
        raise ValueError(f"costs must be 1-D per camera, got shapes {[tuple(c.shape) for c in costs]}")
    sizes = np.array([c.shape[0] for c in costs], dtype=np.int64)
    tile_cost = np.concatenate([c.detach().to("cpu", torch.float64).numpy() for c in costs]) + base_cost
    if not np.all(tile_cost >= 0) or not np.all(np.isfinite(tile_cost)):
        raise ValueError("tile costs (costs + base_cost) must be finite and non-negative")
    n = tile_cost.shape[0]
    if n == 0:
        raise ValueError("assign_tiles needs at least one tile")
    prefix = np.concatenate([[0.0], np.cumsum(tile_cost)])  # [N + 1]: cost before each tile boundary
    total = float(prefix[-1])
    if total == 0:
        prefix = np.arange(n + 1, dtype=np.float64)
        total = float(n)

    # Cut k (1..W-1) at the boundary nearest to k * total / W; ties go to the earlier boundary.
    ideal = np.arange(1, world_size, dtype=np.float64) * total / world_size
    upper = np.clip(np.searchsorted(prefix, ideal, side="left"), 1, n)  # prefix[upper-1] < ideal <= prefix[upper]
    earlier = ideal - prefix[upper - 1] <= prefix[upper] - ideal
    cuts = np.concatenate([[0], np.where(earlier, upper - 1, upper), [n]])  # [W + 1], non-decreasing

    # Intersect piece r = [cuts[r], cuts[r+1]) with camera b = [offsets[b], offsets[b+1]): [W, B].
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    start = np.maximum(cuts[:-1, None], offsets[None, :-1])
    stop = np.minimum(cuts[1:, None], offsets[None, 1:])
    rank, slot = np.nonzero(stop > start)  # row-major: ordered by (rank, slot)
    first = offsets[slot]
    ranges = tuple(
        TileRange(slot=b, start=s, stop=e, rank=r)
        for b, s, e, r in zip(
            slot.tolist(), (start[rank, slot] - first).tolist(), (stop[rank, slot] - first).tolist(), rank.tolist()
        )
    )
    return Assignment(ranges=ranges, world_size=world_size)


def rows_assignment(grids: list[TileGrid], world_size: int) -> Assignment:
    """Cost-blind baseline: each camera's tile rows split into ``world_size`` bands of near-equal height.

    Band ``r`` of a camera with ``ny`` tile rows is rows ``r * ny // W .. (r + 1) * ny // W - 1``; bands
    with no rows (when ``ny < W``) give no range.
    """
    if world_size < 1:
        raise ValueError(f"world_size must be at least 1, got {world_size}")
    ranges = []
    for r in range(world_size):
        for b, g in enumerate(grids):
            row0, row1 = r * g.ny // world_size, (r + 1) * g.ny // world_size
            if row1 > row0:
                ranges.append(TileRange(slot=b, start=row0 * g.nx, stop=row1 * g.nx, rank=r))
    return Assignment(ranges=tuple(ranges), world_size=world_size)
