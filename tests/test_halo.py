"""Halo bookkeeping: the pixels a rank sends to and receives from each peer, found from the tile owners,
equal the definition (pixels within HALO, box distance, of another rank's pixels), and ground truth regions
equal the same window of the zero-padded photo."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from grendel_py.loss.pixels import HALO
from grendel_py.loss.regions import Region, ground_truth_region
from grendel_py.parallel.halo import _near_owners, _pixel_owner
from partition.tiles import TileGrid


def _near_by_definition(pixel_owner: torch.Tensor, rank: int) -> torch.Tensor:
    """Bool [H, W]: pixels within HALO (box distance) of a pixel of ``rank``."""
    own = (pixel_owner == rank).float()[None, None]
    return F.max_pool2d(own, 2 * HALO + 1, stride=1, padding=HALO)[0, 0] > 0


@pytest.mark.parametrize("size", [(70, 45), (33, 20), (16, 16), (100, 17), (17, 100)])
@pytest.mark.parametrize("world", [2, 3, 5])
def test_near_owners_match_the_definition(size: tuple[int, int], world: int) -> None:
    grid = TileGrid(*size)
    owners = torch.randint(0, world, (grid.n_tiles,), generator=torch.Generator().manual_seed(world * 1000 + size[0]))
    po = _pixel_owner(grid, owners)
    near = _near_owners(grid, owners)
    for q in range(world):
        from_tiles = (near == q).any(dim=0) & (po != q)
        assert torch.equal(from_tiles, _near_by_definition(po, q) & (po != q)), q


@pytest.mark.parametrize("box", [(0, 0, 16, 16), (16, 32, 16, 21), (32, 0, 38, 48), (0, 16, 70, 16)])
def test_ground_truth_region_is_the_padded_window(box: tuple[int, int, int, int]) -> None:
    x0, y0, w, h = box
    gt = torch.rand(53, 70, 3, generator=torch.Generator().manual_seed(1))
    region = Region(canvas=torch.empty(0), owned=torch.ones(h, w, dtype=torch.bool), y0=y0, x0=x0)
    padded = F.pad(gt.permute(2, 0, 1), (HALO, HALO, HALO, HALO)).permute(1, 2, 0)
    want = padded[y0 : y0 + h + 2 * HALO, x0 : x0 + w + 2 * HALO]
    assert torch.equal(ground_truth_region(region, gt), want)
