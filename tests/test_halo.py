"""Halo bookkeeping: the pixels a rank sends to and receives from each peer, found from the tile owners,
equal the definition (pixels within HALO, box distance, of another rank's pixels), and ground truth regions
equal the same window of the zero-padded photo."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from grendel_py.loss.pixels import HALO
from grendel_py.loss.regions import Region, ground_truth_region
from grendel_py.parallel.halo import _near_owners, halo_pixel_counts
from partition.tiles import TileGrid


def _near_by_definition(pixel_owner: torch.Tensor, rank: int) -> torch.Tensor:
    """Bool [H, W]: pixels within HALO (box distance) of a pixel of ``rank``."""
    own = (pixel_owner == rank).float()[None, None]
    return F.max_pool2d(own, 2 * HALO + 1, stride=1, padding=HALO)[0, 0] > 0


SIZES = [(70, 45), (33, 20), (16, 16), (100, 17), (17, 100)]


@pytest.mark.parametrize("world", [2, 3, 5])
def test_near_owners_match_the_definition(world: int) -> None:
    """One pass over a batch of cameras of different sizes: each pixel's owner is its tile's, and the ranks
    near each pixel are those with a pixel within HALO of it, camera by camera."""
    grids = [TileGrid(*size) for size in SIZES]
    gen = torch.Generator().manual_seed(world)
    owners = [torch.randint(0, world, (grid.n_tiles,), generator=gen) for grid in grids]
    own, near = _near_owners(grids, owners)
    sizes = [grid.width * grid.height for grid in grids]
    for grid, tile_owner, o, n in zip(grids, owners, own.split(sizes), near.split(sizes, dim=1)):
        y, x = torch.meshgrid(torch.arange(grid.height), torch.arange(grid.width), indexing="ij")
        po = o.view(grid.height, grid.width)
        assert torch.equal(po, tile_owner[(y // grid.tile_size) * grid.nx + x // grid.tile_size])
        for q in range(world):
            from_tiles = (n.view(8, grid.height, grid.width) == q).any(dim=0) & (po != q)
            assert torch.equal(from_tiles, _near_by_definition(po, q) & (po != q)), (grid, q)


@pytest.mark.parametrize("world", [2, 3, 5])
def test_halo_pixel_counts_are_the_pixels_each_rank_receives(world: int) -> None:
    grids = [TileGrid(*size) for size in SIZES]
    gen = torch.Generator().manual_seed(world + 10)
    owners = [torch.randint(0, world, (grid.n_tiles,), generator=gen) for grid in grids]
    want = torch.zeros(world, dtype=torch.int64)
    for grid, tile_owner in zip(grids, owners):
        y, x = torch.meshgrid(torch.arange(grid.height), torch.arange(grid.width), indexing="ij")
        po = tile_owner[(y // grid.tile_size) * grid.nx + x // grid.tile_size]
        for q in range(world):  # rank q receives the pixels of others within HALO of its own
            want[q] += int((_near_by_definition(po, q) & (po != q)).sum())
    assert torch.equal(halo_pixel_counts(grids, owners, world), want)


@pytest.mark.parametrize("box", [(0, 0, 16, 16), (16, 32, 16, 21), (32, 0, 38, 48), (0, 16, 70, 16)])
def test_ground_truth_region_is_the_padded_window(box: tuple[int, int, int, int]) -> None:
    x0, y0, w, h = box
    gt = torch.rand(53, 70, 3, generator=torch.Generator().manual_seed(1))
    region = Region(canvas=torch.empty(0), owned=torch.ones(h, w, dtype=torch.bool), y0=y0, x0=x0)
    padded = F.pad(gt.permute(2, 0, 1), (HALO, HALO, HALO, HALO)).permute(1, 2, 0)
    want = padded[y0 : y0 + h + 2 * HALO, x0 : x0 + w + 2 * HALO]
    assert torch.equal(ground_truth_region(region, gt), want)
