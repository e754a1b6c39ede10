"""Tile binning and depth sorting: the spec of the key-emission and sort stages.

Each visible splat is listed in every selected tile of its pixel box that its ellipse reaches: where
``opacity * G >= 1/255`` can hold at one of the tile's pixel centres (:func:`tile_reached`, exact tile
culling). A splat left out of a tile would have been skipped at each of its pixels, so images and gradients
are those of the whole box. The list is ordered by (tile, depth, global id), so the compositing order of a
tile never depends on how the splats were split among ranks or in which order they arrived.
"""

from __future__ import annotations

import bisect
import itertools
from dataclasses import dataclass

import torch

from grendel_py.render.projection import ALPHA_MIN, Splats, pixel_box
from partition.tiles import TileGrid


@dataclass
class TileBins:
    """Sorted tile/splat intersections for the selected tiles of one camera or of a batch of cameras.

    tile_ids [T] int64: the selected tiles (sorted, unique; for a batch, batch tile ids, see :class:`BatchTiles`).
    splat_index [M] int32: rows of the splats (at most :data:`MAX_ROWS`), grouped by selected tile and ordered
    front to back inside each tile.
    offsets [T + 1] int64: tile k's intersections are ``splat_index[offsets[k]:offsets[k + 1]]``.
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


MAX_ROWS = 2**31 - 1
"""The most splat rows a binning takes: :class:`TileBins` index them in 32 bits (4 bytes a (splat, tile)
pair, which the compositor keeps for its backward)."""


def require_indexable(n: int) -> None:
    """Raise ValueError when a batch of ``n`` splat rows is too many for :class:`TileBins`' 32-bit rows."""
    if n > MAX_ROWS:
        raise ValueError(f"{n} splats in one batch exceed the {MAX_ROWS} rows that bins index (32-bit)")


def part_starts(sizes: list[int]) -> list[int]:
    """Where each part begins when parts of ``sizes`` are laid end to end."""
    return list(itertools.accumulate(sizes[:-1], initial=0))


def count_values(values: torch.Tensor, n: int) -> torch.Tensor:
    """How often each of 0..n-1 occurs in the integer ``values`` (values >= n are ignored), [n] of their dtype. Unlike
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
    place = torch.cumsum(keep, 0).sub_(1).masked_fill_(~keep, n)  # repeats and sentinels go to a spare last slot
    return keys.new_full((n + 1,), sentinel).scatter_(0, place, keys)[:n]


class BatchTiles:
    """The selected tiles of the cameras of a batch, numbered as one index space: tile t of camera b is batch
    tile ``first[b] + t``. ``tile_ids[b]`` (camera b's selected tiles, sorted and unique; None: all) are
    known on the host by their number, so nothing here reads the device."""

    def __init__(self, grids: list[TileGrid], tile_ids: list[torch.Tensor | None], device: torch.device):
        self.grids = list(grids)
        self.tile_ids = [
            g.all_tiles(device) if t is None else t.to(device, non_blocking=True) for g, t in zip(grids, tile_ids)
        ]
        self.sizes = [int(t.shape[0]) for t in self.tile_ids]  # selected tiles per camera
        self.first = part_starts([g.n_tiles for g in grids])
        self.total = sum(g.n_tiles for g in grids)
        self.ids = torch.cat([t + f if f else t for t, f in zip(self.tile_ids, self.first)])  # batch tile ids [T]

    def slot_of_tile(self, dtype: torch.dtype = torch.int64) -> torch.Tensor:
        """For each batch tile, its place among the selected tiles, or -1, ``dtype`` [total + 1]; the last
        entry (-1) is for the tile id that :func:`tile_pairs` gives culled pairs."""
        slots = torch.full((self.total + 1,), -1, dtype=dtype, device=self.ids.device)
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


def expand_spans(
    tx0: torch.Tensor, tx1: torch.Tensor, ty0: torch.Tensor, counts: torch.Tensor, nx: int, total: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Every (row, tile) pair of the inclusive tile ranges [tx0, tx1] x [ty0, ...] (int64 [N] each) of one
    grid ``nx`` tiles wide, rows in order, each row's tiles row-major (tile id = ty * nx + tx); ``counts``
    [N] the tiles of each range (0 when empty), ``total`` their sum (known on the host, so no
    synchronisation here)."""
    rows = torch.repeat_interleave(torch.arange(counts.shape[0], device=counts.device), counts, output_size=total)
    local = torch.arange(total, device=rows.device) - (torch.cumsum(counts, 0) - counts)[rows]
    w = (tx1 - tx0 + 1)[rows]
    return rows, (ty0[rows] + local // w) * nx + tx0[rows] + local % w


CULL_SLACK = 1e-3
"""Absolute slack of :func:`tile_reached`, in units of the exponent (0.1% of alpha at the 1/255 cutoff)."""
CULL_SLACK_REL = 1e-5
"""Slack of :func:`tile_reached` relative to the size of the exponent's terms over the tile: the renderers
compute the exponent in float32 at each pixel (about 6 roundings, 4e-7 of the terms at worst) and may
cancel large terms of thin, tilted splats; 25 times that keeps the test conservative for both backends."""


def tile_reached(
    means2d: torch.Tensor,
    conics: torch.Tensor,
    opacities: torch.Tensor,
    tx: torch.Tensor,
    ty: torch.Tensor,
    tile_size: int,
) -> torch.Tensor:
    """Whether each splat can reach alpha 1/255 at a pixel centre of tile (tx, ty): bool [M] for splats
    means2d [M, 2], conics [M, 3], opacities [M] and tiles tx, ty [M] (int64).

    The exponent q(d) = 0.5 a dx^2 + b dx dy + 0.5 c dy^2 (d = mean - pixel centre) is convex, so its
    minimum over the tile's rectangle of pixel centres is the mean (0) when the rectangle holds it, else it
    lies on the edge facing the mean: on the column dx = X (X: the rectangle's dx closest to 0) at
    dy = -b X / c, or on the row dy = Y at dx = -b Y / a, each clamped to the rectangle. The splat reaches the
    tile where that minimum is at most ln(opacity * 255), plus :data:`CULL_SLACK` and :data:`CULL_SLACK_REL`
    times the exponent's largest terms over the tile, so that rounding never drops a tile that a renderer
    would composite. cuda/bin.cuh (``tile_reached``) computes the same in the same order."""
    mx, my = means2d.detach().unbind(-1)
    a, b, c = conics.detach().unbind(-1)
    x0, y0 = (tx * tile_size).to(mx.dtype), (ty * tile_size).to(mx.dtype)
    dx_lo, dx_hi = mx - (x0 + (tile_size - 0.5)), mx - (x0 + 0.5)
    dy_lo, dy_hi = my - (y0 + (tile_size - 0.5)), my - (y0 + 0.5)
    zero = torch.zeros_like(mx)
    x_near, y_near = torch.clamp(zero, dx_lo, dx_hi), torch.clamp(zero, dy_lo, dy_hi)
    dy_best = torch.clamp(-b * x_near / c, dy_lo, dy_hi)
    dx_best = torch.clamp(-b * y_near / a, dx_lo, dx_hi)

    def exponent(dx: torch.Tensor, dy: torch.Tensor) -> torch.Tensor:
        return 0.5 * a * dx * dx + b * dx * dy + 0.5 * c * dy * dy

    q_min = torch.minimum(exponent(x_near, dy_best), exponent(dx_best, y_near))
    dx_far, dy_far = torch.maximum(dx_lo.abs(), dx_hi.abs()), torch.maximum(dy_lo.abs(), dy_hi.abs())
    terms = 0.5 * a * dx_far * dx_far + 0.5 * c * dy_far * dy_far + b.abs() * dx_far * dy_far
    return q_min <= torch.log(opacities.detach() / ALPHA_MIN) + CULL_SLACK + CULL_SLACK_REL * terms


PAIR_ROWS = 1 << 18
"""Splats whose (splat, tile) pairs :func:`tile_pairs` lists and culls at a time: its temporaries (a dozen
values per pair) stay those of one piece, however many splats the batch has."""


class PairPieces:
    """The (splat, tile) pairs of a batch's splats (``parts[b]`` rows for camera b, one camera after another),
    listed by :meth:`pieces` at most :data:`PAIR_ROWS` splats at a time (no piece crosses from one camera to
    the next), as often as needed: nothing per pair or per splat is kept between pieces. ``order`` (int64
    [N], optional) lists the rows in that order instead of ascending; it must keep each camera's rows in the
    camera's part (positions ``r0 .. r1`` of ``order`` are rows of the camera whose rows are ``r0 .. r1``).
    Positions, bounds and :meth:`pairs_before` count along ``order``. One host synchronisation, here: the
    number of pairs before each piece's end."""

    def __init__(
        self,
        splats: Splats,
        parts: list[int],
        grids: list[TileGrid],
        cull: bool = True,
        order: torch.Tensor | None = None,
    ):
        sizes = {g.tile_size for g in grids}
        if len(sizes) != 1:
            raise ValueError(f"the cameras of a batch share one tile size, got {sorted(sizes)}")
        self.splats, self.grids, self.cull, self.tile_size, self.order = splats, list(grids), cull, sizes.pop(), order
        self.first_tile = part_starts([g.n_tiles for g in grids])
        self.culled_tile = sum(g.n_tiles for g in grids)
        starts = part_starts(parts)
        n = sum(parts)
        self.camera_bounds = [*starts, n]
        self.bounds = sorted({*range(0, n, PAIR_ROWS), *self.camera_bounds})
        ends = []
        if n:  # each piece's pairs counted on its own: the boxes of a whole camera's splats would be a peak
            pieces = zip(self.bounds[:-1], self.bounds[1:])
            ends = torch.cumsum(
                torch.stack([self._spans(a, b, self._camera(a))[-1].sum() for a, b in pieces]), 0
            ).tolist()
        self.ends = [0, *ends]  # pairs before each of ``bounds``
        self.total = self.ends[-1]

    def _camera(self, row: int) -> int:
        """The camera of the piece that starts at ``row`` (a camera without rows is skipped)."""
        return bisect.bisect_right(self.camera_bounds, row) - 1

    def _rows(self, r0: int, r1: int) -> slice | torch.Tensor:
        """The rows at positions [r0, r1)."""
        return slice(r0, r1) if self.order is None else self.order[r0:r1]

    def _spans(self, r0: int, r1: int, camera: int) -> tuple[torch.Tensor, ...]:
        """tx0, tx1, ty0 and the number of tiles of the boxes of the rows at positions [r0, r1) of ``camera``."""
        tx0, tx1, ty0, ty1 = tile_spans(self.splats.select(self._rows(r0, r1)), self.grids[camera])
        return tx0, tx1, ty0, (tx1 - tx0 + 1).clamp_min(0) * (ty1 - ty0 + 1).clamp_min(0)

    def pairs_before(self, row: int) -> int:
        """The number of pairs of the positions before ``row`` (a camera bound or a piece bound)."""
        return self.ends[self.bounds.index(row)]

    def pieces(self, r0: int = 0, r1: int | None = None):
        """(first pair, rows, batch tiles) of each piece of the positions [r0, r1) (bounds of pieces; default
        all), in order, as :func:`tile_pairs` lists them: a piece's pairs row by row (in the order of
        positions), each row's tiles row-major."""
        i0, i1 = self.bounds.index(r0), self.bounds.index(self.camera_bounds[-1] if r1 is None else r1)
        for a, b, p0, p1 in zip(
            self.bounds[i0:i1], self.bounds[i0 + 1 : i1 + 1], self.ends[i0:i1], self.ends[i0 + 1 : i1 + 1]
        ):
            camera = self._camera(a)
            nx = self.grids[camera].nx
            tx0, tx1, ty0, counts = self._spans(a, b, camera)
            rows, local = expand_spans(tx0, tx1, ty0, counts, nx, p1 - p0)
            if self.order is None:
                rows += a
            else:
                rows = self.order[a:b][rows]
            tiles = local + self.first_tile[camera]
            if self.cull:
                s = self.splats
                reached = tile_reached(
                    s.means2d[rows], s.conics[rows], s.opacities[rows], local % nx, local // nx, self.tile_size
                )
                tiles = torch.where(reached, tiles, self.culled_tile)
            yield p0, rows, tiles

    def tile_counts(self) -> torch.Tensor:
        """How many splats reach each batch tile (culled pairs not counted), int64 [sum of n_tiles], counted
        piece by piece."""
        counts = torch.zeros(self.culled_tile, dtype=torch.int64, device=self.splats.means2d.device)
        for _, _, tiles in self.pieces():
            counts += count_values(tiles, self.culled_tile)  # culled pairs (id past the end) are not counted
        return counts

    def reach(self, owners: torch.Tensor, world_size: int) -> torch.Tensor:
        """Which owner each splat must go to: bool [world_size, n], row q true at the splats that reach a tile
        that ``owners`` (int64 [sum of n_tiles], the owner of each batch tile) gives to q, piece by piece. One
        byte per splat and owner, however many tiles the splats reach; no host synchronisation."""
        n = self.camera_bounds[-1]
        reach = torch.zeros((world_size + 1, n), dtype=torch.bool, device=owners.device)  # last row: culled
        for _, rows, tiles in self.pieces():
            to = owners[tiles.clamp_max(owners.shape[0] - 1)].masked_fill_(tiles >= owners.shape[0], world_size)
            reach.index_put_((to, rows), torch.ones((), dtype=torch.bool, device=owners.device))
        return reach[:world_size]


def tile_pairs(
    splats: Splats, parts: list[int], grids: list[TileGrid], cull: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Every (row, batch tile) pair of a batch's splats (``parts[b]`` rows for camera b, one camera after
    another) whose tile box holds the tile: (rows ascending, each row's tiles row-major; batch tile ids
    ``first[b] + tile``, numbered as in :class:`BatchTiles`), int64 [M] each. Pairs whose tile the splat's
    ellipse does not reach (:func:`tile_reached`) get the tile id ``sum(n_tiles)``, one past the last: callers
    sort or count them away, so no size depends on the test. ``cull=False`` keeps every tile of the boxes
    (binning without exact culling; the benchmark and the tests compare with it). Built :data:`PAIR_ROWS`
    splats at a time (:class:`PairPieces`) into the two result tensors. One host synchronisation (the number
    of pairs of each piece)."""
    pairs = PairPieces(splats, parts, grids, cull)
    rows_out = torch.empty(pairs.total, dtype=torch.int64, device=splats.means2d.device)
    tiles_out = torch.empty_like(rows_out)
    for p0, rows, tiles in pairs.pieces():
        rows_out[p0 : p0 + rows.shape[0]], tiles_out[p0 : p0 + rows.shape[0]] = rows, tiles
    return rows_out, tiles_out


def bin_batch(splats: Splats, parts: list[int], tiles: BatchTiles, cull: bool = True) -> TileBins:
    """List the splats of each selected tile of a batch, front to back: ``splats`` hold ``parts[b]`` rows for
    camera b, one after another. The tiles of the result are ``tiles.ids``; ``cull`` as in
    :func:`tile_pairs`.

    No sort over all pairs: each camera's splats are listed in depth order (depth, then global id),
    :data:`PAIR_ROWS` at a time (:class:`PairPieces` over that order). Each piece's pairs are sorted by
    selected tile with a stable sort, so that they stay in depth order inside a tile, and kept as splat rows
    (4 bytes a pair), culled and unselected pairs last. Once the intersections per tile are known, each
    piece's rows go to their tile's next places, piece after piece, which is depth order. So beside the
    result (4 bytes a kept pair) only those rows and one piece's temporaries are alive. Two host
    synchronisations for the whole batch: the number of (splat, tile) pairs, and the intersections per tile
    (kept in ``host_counts`` for the compositor)."""
    require_indexable(len(splats))
    device = splats.means2d.device
    n_sel = tiles.ids.shape[0]
    bounds = [*part_starts(parts), sum(parts)]
    order = (
        torch.cat(
            [r0 + depth_order(splats.depths[r0:r1], splats.ids[r0:r1]) for r0, r1 in zip(bounds[:-1], bounds[1:])]
        )
        if parts
        else torch.zeros(0, dtype=torch.int64, device=device)
    )
    pairs = PairPieces(splats, parts, tiles.grids, cull, order)
    # int32 slots: a stable sort of int64 keys takes twice the radix passes, each a barrier of its threads
    # that a CPU shared with other jobs can keep waiting (bench/results/ab_cpu/README.md)
    slot_of_tile = tiles.slot_of_tile(torch.int32)
    by_tile = torch.empty(pairs.total, dtype=torch.int32, device=device)
    # pairs per slot, per piece
    counts = torch.zeros(len(pairs.bounds) - 1, n_sel + 1, dtype=torch.int64, device=device)
    for k, (p0, rows, batch_tile) in enumerate(pairs.pieces()):
        slot = slot_of_tile[batch_tile]
        del batch_tile
        slot.masked_fill_(slot < 0, n_sel)  # unselected tiles and culled pairs: the spare slot, sorted last
        counts[k] = count_values(slot, n_sel + 1)
        by_tile[p0 : p0 + rows.shape[0]] = rows[torch.sort(slot, stable=True).indices]
        del rows, slot
    per_tile = counts[:, :n_sel].sum(0)
    host_counts = per_tile.tolist()
    total = sum(host_counts)
    offsets = torch.zeros(n_sel + 1, dtype=torch.long, device=device)
    offsets[1:] = torch.cumsum(per_tile, 0)
    splat_index = torch.empty(total + 1, dtype=torch.int32, device=device)  # the last place takes the spare slot
    cursor = torch.cat([offsets[:-1], offsets.new_tensor([total])])  # each slot's next place
    slot_ids = torch.arange(n_sel + 1, device=device)
    for k, (p0, p1) in enumerate(zip(pairs.ends[:-1], pairs.ends[1:])):  # each piece's pairs
        m = p1 - p0
        slot = torch.repeat_interleave(slot_ids, counts[k], output_size=m)
        place = torch.arange(m, device=device).sub_((torch.cumsum(counts[k], 0) - counts[k])[slot]).add_(cursor[slot])
        splat_index[place.masked_fill_(slot == n_sel, total)] = by_tile[p0 : p0 + m]
        cursor[:n_sel] += counts[k, :n_sel]
        del slot, place
    return TileBins(tile_ids=tiles.ids, splat_index=splat_index[:total], offsets=offsets, host_counts=host_counts)


def bin_splats(splats: Splats, grid: TileGrid, tile_ids: torch.Tensor | None = None) -> TileBins:
    """List the splats of each selected tile (all tiles when ``tile_ids`` is None), front to back."""
    device = splats.means2d.device
    tile_ids = None if tile_ids is None else torch.unique(tile_ids.to(device))
    return bin_batch(splats, [len(splats)], BatchTiles([grid], [tile_ids], device))
