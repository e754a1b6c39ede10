"""Tile binning and depth sorting: the spec of the key-emission and sort stages.

Each visible splat is listed in every selected tile that its pixel box touches. The list is ordered by
(tile, depth, global id), so the compositing order of a tile never depends on how the splats were split
among ranks or in which order they arrived.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from grendel_py.render.projection import Splats, pixel_box
from partition.tiles import TileGrid


@dataclass
class TileBins:
    """Sorted tile/splat intersections for the selected tiles of one camera.

    tile_ids [T] int64: the selected tiles (sorted, unique). splat_index [M] int64: rows of the splats,
    grouped by selected tile and ordered front to back inside each tile. offsets [T + 1] int64: tile k's
    intersections are ``splat_index[offsets[k]:offsets[k + 1]]``.
    """

    tile_ids: torch.Tensor
    splat_index: torch.Tensor
    offsets: torch.Tensor

    @property
    def counts(self) -> torch.Tensor:
        """Intersections per selected tile, int64 [T]."""
        return self.offsets[1:] - self.offsets[:-1]


def depth_order(depths: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Permutation sorting splats by (depth, global id), int64 [N]."""
    by_id = torch.argsort(ids, stable=True)
    return by_id[torch.argsort(depths.detach()[by_id], stable=True)]


def tile_spans(splats: Splats, grid: TileGrid) -> tuple[torch.Tensor, ...]:
    """Inclusive tile ranges (tx0, tx1, ty0, ty1) of each splat's pixel box, int64 [N] each (empty: lo > hi)."""
    x_lo, x_hi, y_lo, y_hi = pixel_box(splats.means2d, splats.extents, grid.width, grid.height)
    ts = grid.tile_size
    empty = ~splats.visible
    tx0, ty0 = x_lo // ts, y_lo // ts
    tx1 = torch.where(empty, tx0 - 1, x_hi // ts)
    ty1 = torch.where(empty, ty0 - 1, y_hi // ts)
    return tx0, tx1, ty0, ty1


def expand_tiles(splats: Splats, grid: TileGrid, order: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Every (splat, tile) pair of the splats' tile boxes: (rows, tile ids), int64 [M] each. Rows index
    ``order`` (default: the splats in array order) and come in that order, each splat's tiles row-major."""
    tx0, tx1, ty0, ty1 = tile_spans(splats, grid)
    if order is not None:
        tx0, tx1, ty0, ty1 = (v[order] for v in (tx0, tx1, ty0, ty1))
    return expand_spans(tx0, tx1, ty0, ty1, grid.nx)


def expand_spans(
    tx0: torch.Tensor, tx1: torch.Tensor, ty0: torch.Tensor, ty1: torch.Tensor, nx: int | torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Every (row, tile) pair of the inclusive tile ranges [tx0, tx1] x [ty0, ty1] (int64 [N] each), rows in
    order, each row's tiles row-major; tile id = ty * nx + tx, ``nx`` one grid width or one per row (rows of
    several cameras at once; add each camera's first tile to the ids). One host synchronisation (the number of
    pairs)."""
    width = (tx1 - tx0 + 1).clamp_min(0)
    counts = width * (ty1 - ty0 + 1).clamp_min(0)
    rows = torch.repeat_interleave(torch.arange(counts.shape[0], device=counts.device), counts)
    local = torch.arange(rows.shape[0], device=rows.device) - (torch.cumsum(counts, 0) - counts)[rows]
    w = width[rows]
    row_nx = nx[rows] if isinstance(nx, torch.Tensor) else nx
    return rows, (ty0[rows] + local // w) * row_nx + tx0[rows] + local % w


def tile_counts_per_tile(splats: Splats, grid: TileGrid) -> torch.Tensor:
    """Intersections per tile of the whole image, int64 [n_tiles]: the exact rasterization work of each tile.

    Each splat's tile box adds 1 to its tiles through a 2D difference table (+1 and -1 at its corners) and
    prefix sums, without listing the pairs: O(N + tiles), and no size that depends on the data (no host
    synchronisation on a GPU)."""
    tx0, tx1, ty0, ty1 = tile_spans(splats, grid)
    nonempty = ((tx1 >= tx0) & (ty1 >= ty0)).to(torch.int64)
    nx, ny = grid.nx, grid.ny
    x0, x1 = tx0.clamp(0, nx), (tx1 + 1).clamp(0, nx)  # empty boxes add 0 (anywhere in the table)
    y0, y1 = ty0.clamp(0, ny), (ty1 + 1).clamp(0, ny)
    corners = torch.cat([y0 * (nx + 1) + x0, y0 * (nx + 1) + x1, y1 * (nx + 1) + x0, y1 * (nx + 1) + x1])
    signs = torch.cat([nonempty, -nonempty, -nonempty, nonempty])
    diff = torch.zeros((ny + 1) * (nx + 1), dtype=torch.int64, device=nonempty.device).index_add_(0, corners, signs)
    return diff.view(ny + 1, nx + 1).cumsum(0).cumsum(1)[:ny, :nx].reshape(-1)


def bin_splats(splats: Splats, grid: TileGrid, tile_ids: torch.Tensor | None = None) -> TileBins:
    """List the splats of each selected tile (all tiles when ``tile_ids`` is None), front to back."""
    device = splats.means2d.device
    tile_ids = grid.all_tiles(device) if tile_ids is None else torch.unique(tile_ids.to(device))
    order = depth_order(splats.depths, splats.ids)
    rows, tiles = expand_tiles(splats, grid, order)

    selected = torch.full((grid.n_tiles,), -1, dtype=torch.long, device=device)
    selected[tile_ids] = torch.arange(tile_ids.shape[0], device=device)
    slot = selected[tiles]
    keep = torch.nonzero(slot >= 0).squeeze(1)
    slot, rows = slot[keep], rows[keep]
    by_tile = torch.argsort(slot, stable=True)  # stable: keeps depth order within a tile
    per_tile = torch.zeros(tile_ids.shape[0], dtype=torch.long, device=device).index_add_(0, slot, torch.ones_like(slot))
    offsets = torch.zeros(tile_ids.shape[0] + 1, dtype=torch.long, device=device)
    offsets[1:] = torch.cumsum(per_tile, 0)
    return TileBins(tile_ids=tile_ids, splat_index=order[rows[by_tile]], offsets=offsets)
