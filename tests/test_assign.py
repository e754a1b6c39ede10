"""Tile assignment: coverage, the balance bound, contiguity, determinism, edge cases, speed."""

from __future__ import annotations

import time
from itertools import pairwise

import pytest
import torch

from partition.assign import Assignment, TileRange, assign_tiles, rows_assignment
from partition.tiles import TileGrid

BATCHES = [1, 3, 8, 20]
WORLDS = [1, 2, 3, 4, 8, 64]


def random_grids(n_cameras: int, seed: int) -> list[TileGrid]:
    """Cameras of different sizes, from a single tile up to 13 x 10 tiles."""
    g = torch.Generator().manual_seed(seed)
    sizes = torch.randint(1, 200, (n_cameras, 2), generator=g).tolist()
    return [TileGrid(w, h) for w, h in sizes]


def random_costs(grids: list[TileGrid], seed: int) -> list[torch.Tensor]:
    """Intersection-count-like costs, int64 [n_tiles] per camera: mostly small, some 0, a few large."""
    g = torch.Generator().manual_seed(seed)
    costs = []
    for grid in grids:
        c = torch.randint(0, 50, (grid.n_tiles,), generator=g)
        c[torch.rand(grid.n_tiles, generator=g) < 0.3] = 0
        c[torch.rand(grid.n_tiles, generator=g) < 0.05] *= 40
        costs.append(c)
    return costs


def layout(a: Assignment, sizes: list[int]) -> list[tuple[int, int, int]]:
    """(global start, global stop, rank) of each range, tiles laid end to end in slot order, sorted by start."""
    offsets = [0]
    for n in sizes:
        offsets.append(offsets[-1] + n)
    return sorted((offsets[r.slot] + r.start, offsets[r.slot] + r.stop, r.rank) for r in a.ranges)


def cut_prefix(a: Assignment, tile_cost: list[torch.Tensor]) -> torch.Tensor:
    """Cost before each cut 1..W-1, float64 [W - 1]: the summed work of ranks 0..k-1."""
    return a.work(tile_cost).cumsum(0)[:-1]


@pytest.mark.parametrize("n_cameras", BATCHES)
@pytest.mark.parametrize("world_size", WORLDS)
def test_every_tile_assigned_exactly_once(n_cameras: int, world_size: int) -> None:
    grids = random_grids(n_cameras, seed=n_cameras)
    costs = random_costs(grids, seed=world_size)
    a = assign_tiles(costs, world_size)
    assert a.world_size == world_size
    assert all(r.stop > r.start >= 0 and 0 <= r.rank < world_size for r in a.ranges)
    for b, grid in enumerate(grids):
        owner = a.owner_table(b, grid.n_tiles)
        assert owner.dtype == torch.int64 and owner.shape == (grid.n_tiles,)
        assert bool((owner >= 0).all()) and bool((owner < world_size).all())
        # Covered everywhere and lengths adding up to the tile count: no tile is covered twice.
        assert sum(r.stop - r.start for r in a.ranges if r.slot == b) == grid.n_tiles
    assert sorted(a.ranges, key=lambda r: (r.rank, r.slot)) == list(a.ranges)
    assert [r for rank in range(world_size) for r in a.for_rank(rank)] == list(a.ranges)


@pytest.mark.parametrize("n_cameras", BATCHES)
@pytest.mark.parametrize("world_size", WORLDS)
@pytest.mark.parametrize("base_cost", [0.0, 1.0, 7.5])
def test_balance_bound(n_cameras: int, world_size: int, base_cost: float) -> None:
    """Guaranteed: each cut is at the boundary nearest to k * total / W, hence within half a tile of it,
    hence every rank's work is within total / W +- the largest tile cost."""
    grids = random_grids(n_cameras, seed=100 + n_cameras)
    costs = [c.double() * 0.37 for c in random_costs(grids, seed=200 + world_size)]
    a = assign_tiles(costs, world_size, base_cost=base_cost)
    tile_cost = [c + base_cost for c in costs]
    flat = torch.cat(tile_cost)
    total, largest = float(flat.sum()), float(flat.max())
    eps = 1e-9 * total
    work = a.work(tile_cost)
    assert work.shape == (world_size,)
    assert float(work.sum()) == pytest.approx(total)
    assert float(work.max()) <= total / world_size + largest + eps
    assert float(work.min()) >= total / world_size - largest - eps

    # Nearest boundary, checked by brute force over every boundary.
    boundaries = torch.cat([flat.new_zeros(1), flat.cumsum(0)])
    ideal = torch.arange(1, world_size, dtype=torch.float64) * total / world_size
    best = (boundaries[None, :] - ideal[:, None]).abs().min(dim=1).values
    got = (cut_prefix(a, tile_cost) - ideal).abs()
    assert torch.allclose(got, best, rtol=0, atol=eps)
    assert bool((got <= largest / 2 + eps).all())


@pytest.mark.parametrize("n_cameras", BATCHES)
@pytest.mark.parametrize("world_size", WORLDS)
def test_ranges_are_contiguous_pieces(n_cameras: int, world_size: int) -> None:
    grids = random_grids(n_cameras, seed=300 + n_cameras)
    a = assign_tiles(random_costs(grids, seed=400 + world_size), world_size)
    pairs = [(r.rank, r.slot) for r in a.ranges]
    assert len(pairs) == len(set(pairs)), "a rank has two ranges in one camera"
    pieces = layout(a, [g.n_tiles for g in grids])
    assert pieces[0][0] == 0 and pieces[-1][1] == sum(g.n_tiles for g in grids)
    for (_, stop, rank), (start, _, next_rank) in pairwise(pieces):
        assert stop == start, "gap or overlap in the laid-out tiles"
        assert next_rank >= rank, "ranks out of order: a rank's ranges are not one piece"


def test_worked_example() -> None:
    """Tile costs (base 1) [1, 6, 1, 1, 4 | 2, 2], total 17, W = 3: ideal cuts 5.67 and 11.33; nearest
    boundaries are after 7 (tile 2) and 13 (tile 5). A tie goes to the earlier boundary."""
    a = assign_tiles([torch.tensor([0, 5, 0, 0, 3]), torch.tensor([1.0, 1.0])], 3)
    assert a.ranges == (TileRange(0, 0, 2, 0), TileRange(0, 2, 5, 1), TileRange(1, 0, 2, 2))
    assert a.work([torch.tensor([1, 6, 1, 1, 4]), torch.tensor([2, 2])]).tolist() == [7.0, 6.0, 4.0]
    assert a.balance([torch.tensor([1, 6, 1, 1, 4]), torch.tensor([2, 2])]) == pytest.approx(7 / (17 / 3))
    tie = assign_tiles([torch.zeros(3)], 2)  # ideal 1.5 between boundaries 1 and 2
    assert tie.ranges == (TileRange(0, 0, 1, 0), TileRange(0, 1, 3, 1))


def test_whole_cameras_when_more_cameras_than_ranks() -> None:
    costs = [torch.full((100,), 5) for _ in range(4)]
    a = assign_tiles(costs, 2)
    assert a.ranges == tuple(TileRange(b, 0, 100, b // 2) for b in range(4))
    assert a.balance(costs) == 1.0


def test_one_camera_split_among_ranks() -> None:
    a = assign_tiles([torch.zeros(80)], 4)
    assert a.ranges == tuple(TileRange(0, 20 * r, 20 * (r + 1), r) for r in range(4))


def test_deterministic() -> None:
    grids = random_grids(8, seed=5)
    costs = random_costs(grids, seed=6)
    a = assign_tiles(costs, 8)
    assert assign_tiles([c.clone() for c in costs], 8) == a
    assert assign_tiles([c.float() for c in costs], 8) == a
    assert assign_tiles([c.double() for c in costs], 8) == a
    assert assign_tiles([c.int() for c in costs], 8) == a


def test_more_ranks_than_tiles() -> None:
    costs = [torch.tensor([3]), torch.tensor([0, 9])]
    a = assign_tiles(costs, 8)
    assert len(a.ranges) == 3 and all(r.stop - r.start == 1 for r in a.ranges)
    assert len({r.rank for r in a.ranges}) == 3
    idle = [rank for rank in range(8) if not a.for_rank(rank)]
    assert len(idle) == 5
    assert a.owner_table(0, 1).tolist()[0] != a.owner_table(1, 2).tolist()[0]
    work = a.work(costs)
    assert float(work.sum()) == 12.0 and int((work == 0).sum()) >= 5


@pytest.mark.parametrize("base_cost", [0.0, 1.0])
def test_zero_costs_split_by_count(base_cost: float) -> None:
    """All costs 0: with the base cost or, when that is 0 too, by tile count, pieces differ by at most one tile."""
    grids = random_grids(5, seed=9)
    costs = [torch.zeros(g.n_tiles) for g in grids]
    n = sum(g.n_tiles for g in grids)
    for world_size in WORLDS:
        a = assign_tiles(costs, world_size, base_cost=base_cost)
        counts = a.work([torch.ones(g.n_tiles) for g in grids])
        assert float(counts.sum()) == n
        assert float(counts.max() - counts.min()) <= 1.0
        assert a.balance(costs) == 1.0


def test_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        assign_tiles([torch.ones(4)], 0)
    with pytest.raises(ValueError):
        assign_tiles([], 2)
    with pytest.raises(ValueError):
        assign_tiles([torch.ones(2, 2)], 2)
    with pytest.raises(ValueError):
        assign_tiles([torch.tensor([1.0, -3.0])], 2)
    with pytest.raises(ValueError):
        assign_tiles([torch.tensor([1.0, float("nan")])], 2)
    a = assign_tiles([torch.ones(4)], 2)
    with pytest.raises(ValueError):
        a.owner_table(0, 3)  # the camera has 4 tiles
    with pytest.raises(ValueError):
        a.work([torch.ones(5)])  # tile 4 has no owner
    with pytest.raises(ValueError):
        a.for_rank(2)


def test_timing_budget() -> None:
    """64 ranks x 16 cameras of 1920 x 1080 (8160 tiles each): well under 10 ms; bound generous for loaded machines."""
    grid = TileGrid(1920, 1080)
    assert grid.n_tiles == 8160
    costs = random_costs([grid] * 16, seed=11)
    assign_tiles(costs, 64)
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        a = assign_tiles(costs, 64)
        best = min(best, time.perf_counter() - t0)
    assert best < 0.05
    assert len(a.ranges) <= 64 + 16 - 1


@pytest.mark.parametrize("world_size", WORLDS)
def test_rows_assignment_covers_everything(world_size: int) -> None:
    grids = random_grids(8, seed=12) + [TileGrid(1920, 1080)]
    a = rows_assignment(grids, world_size)
    for b, grid in enumerate(grids):
        owner = a.owner_table(b, grid.n_tiles)
        assert bool((owner >= 0).all())
        assert sum(r.stop - r.start for r in a.ranges if r.slot == b) == grid.n_tiles
        rows = owner.reshape(grid.ny, grid.nx)
        assert bool((rows == rows[:, :1]).all()), "a tile row is split between ranks"
        heights = torch.bincount(rows[:, 0], minlength=world_size)
        assert int(heights.max() - heights.min()) <= 1
    assert all(r.stop > r.start for r in a.ranges)
