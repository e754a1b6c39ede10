"""Tile binning and depth sorting: the spec of the key-emission and sort stages.

Each visible splat is listed in every selected tile that its pixel box touches. The list is ordered by
(tile, depth, global id), so the compositing order of a tile never depends on how the splats were split
among ranks or in which order they arrived.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch

from grendel_py.render.projection import Splats, pixel_box
from partition.tiles import TileGrid


@dataclass
class TileBins:
    """Sorted tile/splat intersections for the selected tiles of one camera or of a batch of cameras.

    tile_ids [T] int64: the selected tiles (sorted, unique; for a batch, batch tile ids, see :class:`BatchTiles`).
    splat_index [M] int64: rows of the splats, grouped by selected tile and ordered front to back inside each
    tile. offsets [T + 1] int64: tile k's intersections are ``splat_index[offsets[k]:offsets[k + 1]]``.
    host_counts: the intersections per tile as a list when the binning read them anyway (the torch compositor
    plans its chunks from them), else None.
    """

    tile_ids: torch.Tensor
    splat_index: torch.Tensor
    offsets: torch.Tensor
    host_counts: list[int] | None = None

    @property
    def counts(self) -> torch.Tensor:
        """Intersections per selected tile, int64 [T]."""
        return self.offsets[1:] - self.offsets[:-1]


def part_starts(sizes: list[int]) -> list[int]:
    """Where each part begins when parts of ``sizes`` are laid end to end."""
    return list(itertools.accumulate(sizes[:-1], initial=0))


def count_values(values: torch.Tensor, n: int) -> torch.Tensor:
    """How often each of 0..n-1 occurs in the int64 ``values`` (values >= n are ignored), int64 [n]. Unlike
    ``bincount`` its size does not depend on the data, so it costs no host synchronisation on a GPU."""
    counts = values.new_zeros(n + 1)
    return counts.index_add_(0, values.clamp_max(n), torch.ones_like(values))[:n]


def distinct_sorted(keys: torch.Tensor, sentinel: int) -> torch.Tensor:
    """The distinct values of the int64 ``keys`` other than ``sentinel`` (which must exceed them all), sorted,
    then ``sentinel`` up to the input's length: ``torch.unique`` without its size that depends on the data
    (no host synchronisation; the caller cuts the padding off once it knows the count)."""
    keys = torch.sort(keys).values
    keep = keys != sentinel
    keep[1:] &= keys[1:] != keys[:-1]
    n = keys.shape[0]
    place = torch.where(keep, torch.cumsum(keep, 0) - 1, n)  # repeats and sentinels go to a spare last slot
    return keys.new_full((n + 1,), sentinel).scatter_(0, place, keys)[:n]


class BatchTiles:
    """The selected tiles of the cameras of a batch, numbered as one index space: tile t of camera b is batch
    tile ``first[b] + t``. ``tile_ids[b]`` (camera b's selected tiles, sorted and unique; None: all) are
    known on the host by their number, so nothing here reads the device."""

    def __init__(self, grids: list[TileGrid], tile_ids: list[torch.Tensor | None], device: torch.device):
        self.grids = list(grids)
        self.tile_ids = [g.all_tiles(device) if t is None else t.to(device, non_blocking=True) for g, t in zip(grids, tile_ids)]
        self.sizes = [int(t.shape[0]) for t in self.tile_ids]  # selected tiles per camera
        self.first = part_starts([g.n_tiles for g in grids])
        self.total = sum(g.n_tiles for g in grids)
        self.ids = torch.cat([t + f for t, f in zip(self.tile_ids, self.first)])  # batch tile ids [T]

    def slot_of_tile(self, dtype: torch.dtype = torch.int64) -> torch.Tensor:
        """For each batch tile, its place among the selected tiles, or -1, ``dtype`` [total]."""
        slots = torch.full((self.total,), -1, dtype=dtype, device=self.ids.device)
        slots[self.ids] = torch.arange(self.ids.shape[0], dtype=dtype, device=self.ids.device)
        return slots

    def origins(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Pixel coordinates (x0, y0) of the top-left pixel of each selected tile, int64 [T] each."""
        parts = [g.tile_origins(t) for g, t in zip(self.grids, self.tile_ids)]
        return torch.cat([x for x, _ in parts]), torch.cat([y for _, y in parts])

    def split(self, values: torch.Tensor) -> list[torch.Tensor]:
        """Per-selected-tile ``values`` [T, ...] cut into one tensor per camera."""
        return list(values.split(self.sizes))


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


def per_row(parts: list[int], values: list[int], device: torch.device) -> torch.Tensor:
    """int64 [sum(parts)]: ``values[b]`` repeated ``parts[b]`` times (a per-camera value for each row of rows
    laid out camera by camera; sizes known on the host, so no synchronisation)."""
    return torch.cat([torch.full((n,), v, dtype=torch.int64, device=device) for n, v in zip(parts, values)])


def batch_spans(splats: Splats, parts: list[int], grids: list[TileGrid]) -> tuple[torch.Tensor, ...]:
    """:func:`tile_spans` of splats laid out camera by camera (``parts[b]`` rows for camera b)."""
    starts = part_starts(parts)
    spans = [tile_spans(splats.select(slice(s, s + n)), g) for s, n, g in zip(starts, parts, grids)]
    return tuple(torch.cat(v) for v in zip(*spans))


def bin_batch(splats: Splats, parts: list[int], tiles: BatchTiles) -> TileBins:
    """List the splats of each selected tile of a batch, front to back: ``splats`` hold ``parts[b]`` rows for
    camera b, one after another. The tiles of the result are ``tiles.ids``. Two host synchronisations for
    the whole batch: the number of (splat, tile) pairs, and the intersections per tile (kept in
    ``host_counts`` for the compositor)."""
    device = splats.means2d.device
    tx0, tx1, ty0, ty1 = batch_spans(splats, parts, tiles.grids)
    order = depth_order(splats.depths, splats.ids)  # a tile holds one camera's splats, so (depth, id) suffices
    nx = per_row(parts, [g.nx for g in tiles.grids], device)[order]
    first = per_row(parts, tiles.first, device)[order]
    rows, local = expand_spans(tx0[order], tx1[order], ty0[order], ty1[order], nx)
    n_sel = tiles.ids.shape[0]
    slot = tiles.slot_of_tile()[first[rows] + local]
    slot = torch.where(slot >= 0, slot, n_sel)  # unselected tiles sort last
    by_tile = torch.argsort(slot, stable=True)  # stable: keeps depth order within a tile
    per_tile = count_values(slot, n_sel)
    host_counts = per_tile.tolist()
    offsets = torch.zeros(n_sel + 1, dtype=torch.long, device=device)
    offsets[1:] = torch.cumsum(per_tile, 0)
    index = order[rows[by_tile[: sum(host_counts)]]]
    return TileBins(tile_ids=tiles.ids, splat_index=index, offsets=offsets, host_counts=host_counts)


def bin_splats(splats: Splats, grid: TileGrid, tile_ids: torch.Tensor | None = None) -> TileBins:
    """List the splats of each selected tile (all tiles when ``tile_ids`` is None), front to back."""
    device = splats.means2d.device
    tile_ids = None if tile_ids is None else torch.unique(tile_ids.to(device))
    return bin_batch(splats, [len(splats)], BatchTiles([grid], [tile_ids], device))
