"""Assignment of a batch's tiles to ranks: what the balancer knows per tile in, one rank per tile out.

Every rank calls the same strategy with the same all-reduced :class:`TileTable` and gets the same answer: the
strategies are pure, compute on the CPU in float64 with single-threaded numpy (sequential prefix sums, exact
for integer costs below 2**53), and break every tie by position, so the result does not depend on the device,
dtype or thread count.

Strategies (``STRATEGIES``):

- ``rows``: Grendel's cost-blind split of every image into ``W`` bands of tile rows.
- ``balanced``: the batch's tiles laid end to end (camera by camera, each along the space-filling curve of
  :mod:`partition.curve`) and the prefix sum of their work cut into ``W`` pieces of equal modelled time.
  Each rank's work lies within its fair share +- the largest tile's work; every piece of a camera is one
  connected region.
- ``majority``: every tile to the rank owning most of its intersections (a locality bound: nothing but
  the tile's other owners' splats moves, balance ignored).
- ``locality``: ``majority`` trimmed to a balance cap. Each rank keeps, of the tiles it owns most of, the
  ones deepest inside its runs along the curve (so every kept region is an interval of the curve, hence
  connected) up to ``(1 + tolerance)`` x its fair share; the trimmed run ends go first to the neighbouring
  run's rank when it has room (its region just grows), the rest is cut like ``balanced`` among the ranks'
  remaining room. Every rank's work stays within ``(1 + tolerance)`` x its fair share + the largest tile.

A rank's fair share of the batch's work is proportional to its speed (1 / seconds per unit of work), so a
slower rank gets less. Work = intersections + ``base_cost`` per tile (the per-pixel cost of a tile).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from partition.curve import curve_order
from partition.tiles import TileGrid

STRATEGIES = ("rows", "balanced", "majority", "locality")


def majority_keys(counts: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    """This rank's bid for each tile, int64: max-all-reduced over ranks, :meth:`TileTable.from_reduced` reads
    from the result the rank with the most intersections per tile (ties: the lowest rank) and that count."""
    return counts.to(torch.int64) * world_size + (world_size - 1 - rank)


def majority(counts: np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """From every rank's intersections per tile, ``counts`` [W, tiles]: the total per tile (float64), the rank
    with the most (int64; ties: the lowest rank; -1 where there are none) and its count (float64)."""
    counts = np.asarray(counts, dtype=np.float64)
    if counts.ndim != 2:
        raise ValueError(f"counts must be [world_size, tiles], got shape {counts.shape}")
    owner = np.argmax(counts, axis=0)  # first maximum: the lowest rank
    share = counts[owner, np.arange(counts.shape[1])]
    return counts.sum(0), np.where(share > 0, owner, -1).astype(np.int64), share


@dataclass(frozen=True, eq=False)
class TileTable:
    """What the balancer knows about the tiles of a batch, flat over cameras (camera ``b`` holds entries
    ``offsets[b]:offsets[b+1]``, tiles row-major): ``intersections`` (all ranks' splats per tile),
    ``owner`` (the rank with the most of them, -1 when there are none) and ``share`` (that rank's count)."""

    grids: tuple[TileGrid, ...]
    intersections: np.ndarray
    owner: np.ndarray
    share: np.ndarray

    def __post_init__(self) -> None:
        if not self.grids:
            raise ValueError("a tile table needs at least one camera")
        n = int(self.offsets[-1])
        for name in ("intersections", "owner", "share"):
            if getattr(self, name).shape != (n,):
                raise ValueError(f"{name} has shape {getattr(self, name).shape}, the cameras have {n} tiles")
        if not np.all(np.isfinite(self.intersections)) or np.any(self.intersections < 0):
            raise ValueError("tile intersection counts must be finite and non-negative")

    @property
    def offsets(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum([g.n_tiles for g in self.grids])]).astype(np.int64)

    @classmethod
    def from_counts(cls, grids: list[TileGrid], counts: np.ndarray | torch.Tensor) -> TileTable:
        """From every rank's intersections per tile, ``counts`` [W, n_tiles of all cameras] (one process
        holding all of them: tests and the simulator)."""
        return cls(tuple(grids), *majority(counts))

    @classmethod
    def from_reduced(cls, grids: list[TileGrid], total: np.ndarray, keys: np.ndarray, world_size: int) -> TileTable:
        """From the sum-all-reduced intersections per tile and the max-all-reduced :func:`majority_keys` (on the
        host)."""
        keys = np.asarray(keys, dtype=np.int64)
        share = keys // world_size
        owner = np.where(share > 0, world_size - 1 - keys % world_size, -1)
        return cls(tuple(grids), np.asarray(total, dtype=np.float64), owner.astype(np.int64), share.astype(np.float64))

    def per_camera(self, flat: np.ndarray) -> list[np.ndarray]:
        """Split a flat per-tile array into one array per camera."""
        return np.split(flat, self.offsets[1:-1])


@dataclass(frozen=True, eq=False)
class Assignment:
    """Which rank renders each tile of a batch: ``rank`` int64 [tiles of all cameras], flat like
    :class:`TileTable`, every entry in ``0..world_size-1``."""

    grids: tuple[TileGrid, ...]
    rank: np.ndarray
    world_size: int

    def __post_init__(self) -> None:
        n = sum(g.n_tiles for g in self.grids)
        if self.rank.shape != (n,):
            raise ValueError(f"assignment has {self.rank.shape} entries, the cameras have {n} tiles")
        if n and not (self.rank.min() >= 0 and self.rank.max() < self.world_size):
            raise ValueError(f"assignment names a rank outside 0..{self.world_size - 1}")

    def _of_camera(self, slot: int) -> np.ndarray:
        """The entries of camera ``slot``."""
        start = sum(g.n_tiles for g in self.grids[:slot])
        return self.rank[start : start + self.grids[slot].n_tiles]

    def owner_table(self, slot: int) -> torch.Tensor:
        """Rank rendering each tile of camera ``slot``, int64 [n_tiles] (row-major)."""
        return torch.from_numpy(self._of_camera(slot).copy())

    def tile_box(self, slot: int, rank: int) -> tuple[int, int, int, int]:
        """The box (ty0, ty1, tx0, tx1), half-open, of the tiles of camera ``slot`` that ``rank`` renders
        (found on the host); (0, 0, 0, 0) when it renders none."""
        grid = self.grids[slot]
        mine = (self._of_camera(slot) == rank).reshape(grid.ny, grid.nx)
        rows, cols = np.flatnonzero(mine.any(axis=1)), np.flatnonzero(mine.any(axis=0))
        if rows.size == 0:
            return 0, 0, 0, 0
        return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1

    def tiles_of(self, slot: int, rank: int) -> torch.Tensor:
        """Ids of the tiles of camera ``slot`` that ``rank`` renders, int64 ascending (found on the host)."""
        return torch.from_numpy(np.flatnonzero(self._of_camera(slot) == rank))

    def work(self, per_tile: np.ndarray) -> np.ndarray:
        """Sum of a flat per-tile quantity over each rank's tiles, float64 [world_size]."""
        return np.bincount(self.rank, weights=np.asarray(per_tile, dtype=np.float64), minlength=self.world_size)

    def balance(self, per_tile: np.ndarray, seconds_per_work: np.ndarray | None = None) -> float:
        """Largest over mean modelled time per rank (work x seconds per work; 1.0 is perfect balance, and the
        value when there is no work)."""
        t = self.work(per_tile) * (1.0 if seconds_per_work is None else seconds_per_work)
        mean = t.mean()
        return 1.0 if mean == 0 else float(t.max() / mean)

    def remote(self, table: TileTable) -> np.ndarray:
        """Intersections each rank rasterizes of splats it did not own, counting a tile's majority owner's
        splats as its only local ones (a lower bound), float64 [world_size]."""
        local = np.where(self.rank == table.owner, table.share, 0.0)
        return self.work(table.intersections - local)


def fair_shares(total: float, seconds_per_work: np.ndarray) -> np.ndarray:
    """Work per rank that makes every rank's modelled time equal, float64 [W], summing to ``total``."""
    speed = 1.0 / np.asarray(seconds_per_work, dtype=np.float64)
    return total * speed / speed.sum()


def _check(world_size: int, seconds_per_work: np.ndarray | None) -> np.ndarray:
    if world_size < 1:
        raise ValueError(f"world_size must be at least 1, got {world_size}")
    s = np.ones(world_size) if seconds_per_work is None else np.asarray(seconds_per_work, dtype=np.float64)
    if s.shape != (world_size,) or not np.all(np.isfinite(s)) or not np.all(s > 0):
        raise ValueError(f"seconds_per_work must be {world_size} finite positive numbers, got {s}")
    return s


def _sequence(grids: tuple[TileGrid, ...]) -> tuple[np.ndarray, np.ndarray]:
    """The batch's tiles laid end to end: flat table index at each position, and its camera slot, int64 [N]."""
    offsets = np.concatenate([[0], np.cumsum([g.n_tiles for g in grids])])
    index = np.concatenate([offsets[b] + curve_order(g.nx, g.ny) for b, g in enumerate(grids)])
    slot = np.repeat(np.arange(len(grids)), [g.n_tiles for g in grids])
    return index, slot


def _cut(cost: np.ndarray, quota: np.ndarray) -> np.ndarray:
    """Cut a sequence of tile costs into ``len(quota)`` consecutive pieces of about ``quota`` each (scaled to the
    total); returns the piece of each tile, int64 [N]. Cut k sits at the tile boundary nearest to the quotas'
    k-th prefix sum (ties: the earlier boundary), so a piece misses its quota by at most one tile's cost. All
    costs 0: pieces by count."""
    n = cost.shape[0]
    prefix = np.concatenate([[0.0], np.cumsum(cost)])
    total = float(prefix[-1])
    if total == 0:
        prefix, total = np.arange(n + 1, dtype=np.float64), float(n)
    qsum = float(quota.sum())
    ideal = np.cumsum(quota)[:-1] * (total / qsum) if qsum > 0 else np.arange(1, len(quota)) * total / len(quota)
    upper = np.clip(np.searchsorted(prefix, ideal, side="left"), 1, max(n, 1))
    earlier = ideal - prefix[upper - 1] <= prefix[upper] - ideal
    cuts = np.where(earlier, upper - 1, upper)
    return np.searchsorted(cuts, np.arange(n), side="right").astype(np.int64)


def rows_assignment(grids: list[TileGrid], world_size: int) -> Assignment:
    """Cost-blind baseline: each camera's tile rows split into ``world_size`` bands of near-equal height; band
    ``r`` of a camera with ``ny`` tile rows is rows ``r * ny // W .. (r + 1) * ny // W - 1``."""
    _check(world_size, None)
    parts = []
    for g in grids:
        row = np.arange(g.n_tiles) // g.nx
        parts.append(np.searchsorted((np.arange(1, world_size) * g.ny) // world_size, row, side="right"))
    return Assignment(tuple(grids), np.concatenate(parts).astype(np.int64), world_size)


def balanced_assignment(
    table: TileTable, world_size: int, seconds_per_work: np.ndarray | None = None, base_cost: float = 1.0
) -> Assignment:
    """Cut the batch's tiles, along the curve camera after camera, into ``world_size`` pieces of equal time."""
    s = _check(world_size, seconds_per_work)
    index, _ = _sequence(table.grids)
    cost = table.intersections[index] + base_cost
    rank = np.empty(index.shape[0], dtype=np.int64)
    rank[index] = _cut(cost, fair_shares(1.0, s))
    return Assignment(table.grids, rank, world_size)


def majority_assignment(table: TileTable, world_size: int, base_cost: float = 1.0) -> Assignment:
    """Every tile to its majority owner; tiles no splat touches to the owner before them along the curve."""
    return locality_assignment(table, world_size, tolerance=float(world_size - 1), base_cost=base_cost)


def _fill(label: np.ndarray, slot: np.ndarray) -> np.ndarray:
    """Give unlabelled (-1) positions the label before them in the same camera, else the one after them."""
    n = label.shape[0]
    pos = np.arange(n)
    out = label.copy()
    for forward in (True, False):
        if forward:
            src = np.maximum.accumulate(np.where(out >= 0, pos, -1))
        else:
            src = np.minimum.accumulate(np.where(out >= 0, pos, n)[::-1])[::-1]
        ok = (src >= 0) & (src < n)
        ok[ok] &= slot[src[ok]] == slot[ok]
        out = np.where((out < 0) & ok, out[np.clip(src, 0, n - 1)], out)
    return out


def _runs(label: np.ndarray, slot: np.ndarray) -> np.ndarray:
    """Start position of each maximal run of equal (label, camera), int64."""
    change = np.ones(label.shape[0], dtype=bool)
    change[1:] = (label[1:] != label[:-1]) | (slot[1:] != slot[:-1])
    return np.flatnonzero(change)


def locality_assignment(
    table: TileTable,
    world_size: int,
    tolerance: float,
    seconds_per_work: np.ndarray | None = None,
    base_cost: float = 1.0,
) -> Assignment:
    """Majority ownership trimmed to ``(1 + tolerance)`` x each rank's fair share (see the module docstring)."""
    return locality_assignments(table, world_size, [tolerance], seconds_per_work, base_cost)[0]


def locality_assignments(
    table: TileTable,
    world_size: int,
    tolerances: list[float],
    seconds_per_work: np.ndarray | None = None,
    base_cost: float = 1.0,
) -> list[Assignment]:
    """:func:`locality_assignment` for several tolerances, sharing the work that does not depend on them."""
    s = _check(world_size, seconds_per_work)
    if not all(t >= 0 for t in tolerances):
        raise ValueError(f"tolerances must be >= 0, got {tolerances}")
    index, slot = _sequence(table.grids)
    n = index.shape[0]
    cost = table.intersections[index] + base_cost
    label = _fill(table.owner[index], slot)
    fair = fair_shares(float(cost.sum()), s)
    load = np.bincount(label[label >= 0], weights=cost[label >= 0], minlength=world_size)

    # Depth of each tile inside its run, in work from the nearer end (inclusive): runs shrink from both ends.
    starts = _runs(label, slot)
    run = np.repeat(np.arange(starts.shape[0]), np.diff(np.append(starts, n)))
    before = np.cumsum(cost) - cost
    run_total = np.add.reduceat(cost, starts) if n else cost
    from_start = before - before[starts][run] + cost
    depth = np.minimum(from_start, run_total[run] - from_start + cost)

    # Tiles of every rank over the smallest cap, deepest first (ties: earlier position), with running work.
    over = np.flatnonzero(load > (1.0 + min(tolerances)) * fair)
    cand = np.flatnonzero(np.isin(label, over))
    order = cand[np.lexsort((cand, -depth[cand], label[cand]))]
    lab = label[order]
    cum = np.cumsum(cost[order])
    first = np.searchsorted(lab, lab, side="left")
    within = cum - (cum[first] - cost[order][first]) if order.size else cum

    plans = []
    for tol in tolerances:
        cap = (1.0 + tol) * fair
        keep = label >= 0
        keep[order] = within <= cap[lab]
        final = np.where(keep, label, -1)
        room = cap - np.bincount(final[keep], weights=cost[keep], minlength=world_size)
        shed = np.flatnonzero(~keep)
        if shed.size:
            # Trimmed stretches: first to the kept neighbour along the curve (same camera) while it has room.
            breaks = np.flatnonzero((np.diff(shed) != 1) | (np.diff(slot[shed]) != 0)) + 1
            lo = shed[np.concatenate([[0], breaks])]
            hi = shed[np.concatenate([breaks - 1, [shed.size - 1]])] + 1
            for a, b in zip(lo.tolist(), hi.tolist()):
                _give_to_neighbours(final, slot, cost, a, b, room)
            # The rest: cut like `balanced` among the ranks' remaining room.
            rest = np.flatnonzero(final < 0)
            if rest.size:
                final[rest] = _cut(cost[rest], np.maximum(room, 0.0))
        rank = np.empty(n, dtype=np.int64)
        rank[index] = final
        plans.append(Assignment(table.grids, rank, world_size))
    return plans


def _give_to_neighbours(
    final: np.ndarray, slot: np.ndarray, cost: np.ndarray, a: int, b: int, room: np.ndarray
) -> None:
    """Hand the unassigned stretch [a, b) to the kept ranks just before and after it in the same camera, the one
    with more room first, each taking whole tiles from its own end while its ``room`` lasts (updated)."""
    n = final.shape[0]
    left = int(final[a - 1]) if a > 0 and slot[a - 1] == slot[a] and final[a - 1] >= 0 else -1
    right = int(final[b]) if b < n and slot[b] == slot[a] and final[b] >= 0 else -1
    if (left < 0 or room[left] <= 0) and (right < 0 or room[right] <= 0):
        return
    sides = sorted(((left, True), (right, False)), key=lambda sd: -room[sd[0]] if sd[0] >= 0 else np.inf)
    lo, hi = a, b
    for rank, from_start in sides:
        if rank < 0 or room[rank] <= 0 or lo >= hi:
            continue
        c = cost[lo:hi] if from_start else cost[lo:hi][::-1]
        k = int(np.searchsorted(np.cumsum(c), room[rank], side="right"))
        room[rank] -= c[:k].sum()
        if from_start:
            final[lo : lo + k], lo = rank, lo + k
        else:
            final[hi - k : hi], hi = rank, hi - k
