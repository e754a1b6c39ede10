"""The counts each rank's step would take for a batch (the same names :class:`~grendel_py.parallel.stage_clock.
StageClock` takes in a real run), from the simulator's (Gaussian, tile) intersections, the Gaussians' owners
and the tile assignment: what the cost model (:mod:`grendel_py.plan.model`) turns into seconds and bytes.

Per rank, for one batch: ``gaussians`` (its shard), ``gaussian_cameras`` (shard x cameras: the visibility
test), ``visible`` (its Gaussians with at least one intersection, per camera, summed), ``sh_terms`` (``visible``
times the SH coefficients per colour channel evaluated for each: (degree + 1)^2), ``listed_pairs`` (the
intersections of its own splats), ``tiles`` (the batch's tiles: the plan), ``pairs``, ``padded_pairs``,
``chunks``, ``chunk_pairs`` and ``pixels`` (the intersections of the tiles it renders, the compositor's slots,
chunks and largest chunk's (pixel, splat) pairs for them, their pixels), ``received`` (the splats its tiles need, its own
included), ``bytes_sent`` and ``bytes_received`` (the splat exchange; ``bytes_sent_across``
and ``bytes_received_across``: their part that crosses nodes, see :func:`rank_counts`), ``halo_pixels`` (the pixels it receives
from other ranks' tiles), ``loss_pixels`` (its regions' boxes, as the loss reads them).
"""

from __future__ import annotations

import numpy as np

from grendel_py.parallel.halo import halo_pixel_counts
from grendel_py.render.composite import compositor_work
from grendel_py.simulate import SimScene, routes
from partition.assign import Assignment
from partition.balancer import SPLAT_BYTES
from partition.tiles import TILE_SIZE, TileGrid

PIXELS = TILE_SIZE * TILE_SIZE

KEYS = (
    "gaussians",
    "gaussian_cameras",
    "visible",
    "sh_terms",
    "listed_pairs",
    "tiles",
    "pairs",
    "padded_pairs",
    "chunks",
    "chunk_pairs",
    "pixels",
    "received",
    "bytes_sent",
    "bytes_received",
    "bytes_sent_across",
    "bytes_received_across",
    "halo_pixels",
    "loss_pixels",
)


def _by_rank(ranks: np.ndarray, world: int, weights: np.ndarray | None = None) -> np.ndarray:
    return np.bincount(ranks, weights=weights, minlength=world).astype(np.float64)


def rank_counts(
    scene: SimScene, batch: list[int], owner: np.ndarray, plan: Assignment, sh_degree: int, node_size: int | None = None
) -> list[dict[str, float]]:
    """Every rank's counts (module docstring) for ``batch`` (camera indices of ``scene``), the Gaussians
    owned as ``owner`` says, the tiles rendered as ``plan`` says and colours of SH degree ``sh_degree``; with
    ``node_size`` (ranks in nodes of that many), also ``bytes_sent_across`` and ``bytes_received_across``:
    the exchange's bytes that cross from one node to another (else 0)."""
    w = plan.world_size
    total = {k: np.zeros(w) for k in KEYS}
    shard = _by_rank(owner, w)
    total["gaussians"] = shard
    total["gaussian_cameras"] = shard * len(batch)
    rank_tiles: list[list[np.ndarray]] = [[] for _ in range(w)]
    offset = 0
    for slot, k in enumerate(batch):
        grid = plan.grids[slot]
        rows, tiles = scene.intersections(k)
        renders = plan.rank[offset + tiles]
        own = owner[rows]
        first = np.ones(rows.shape[0], dtype=bool)  # each Gaussian's first pair (pairs are grouped by Gaussian)
        first[1:] = rows[1:] != rows[:-1]
        total["visible"] += _by_rank(own[first], w)
        total["listed_pairs"] += _by_rank(own, w)
        total["pairs"] += _by_rank(renders, w)
        per_tile = np.bincount(tiles, minlength=grid.n_tiles)
        tile_ranks = plan.rank[offset : offset + grid.n_tiles]
        tiles_of = np.bincount(tile_ranks, minlength=w)
        by_rank = per_tile[np.argsort(tile_ranks, kind="stable")]
        for r, part in enumerate(np.split(by_rank, np.cumsum(tiles_of)[:-1])):
            rank_tiles[r].append(part)
        to, src = routes(rows, renders, owner, w)
        total["received"] += _by_rank(to, w)
        away = to != src  # a splat is not sent to its owner
        total["bytes_sent"] += _by_rank(src[away], w) * SPLAT_BYTES
        total["bytes_received"] += _by_rank(to[away], w) * SPLAT_BYTES
        if node_size is not None and w > node_size:
            across = to // node_size != src // node_size
            total["bytes_sent_across"] += _by_rank(src[across], w) * SPLAT_BYTES
            total["bytes_received_across"] += _by_rank(to[across], w) * SPLAT_BYTES
        total["tiles"] += grid.n_tiles
        total["pixels"] += tiles_of * grid.tile_size**2
        total["loss_pixels"] += _box_pixels(grid, tile_ranks, w)
        offset += grid.n_tiles
    for r, per_tile in enumerate(rank_tiles):  # the rank composites the batch's tiles at once
        work = compositor_work(np.concatenate(per_tile), PIXELS)
        total["padded_pairs"][r], total["chunks"][r], total["chunk_pairs"][r] = work
    total["sh_terms"] = total["visible"] * (sh_degree + 1) ** 2
    if w > 1:
        owners = [plan.owner_table(b) for b in range(len(batch))]
        total["halo_pixels"] = halo_pixel_counts(list(plan.grids), owners, w).double().numpy()
    return [{key: float(total[key][r]) for key in KEYS} for r in range(w)]


def _box_pixels(grid: TileGrid, tile_ranks: np.ndarray, world: int) -> np.ndarray:
    """The pixels of each rank's box of the tiles it renders in a camera of ``grid`` (its region, as
    :meth:`~partition.assign.Assignment.tile_box` bounds it; 0 for a rank with none), float64 [world]."""
    ty, tx = np.divmod(np.arange(grid.n_tiles), grid.nx)
    y0, x0 = np.full(world, grid.ny), np.full(world, grid.nx)
    y1, x1 = np.zeros(world, dtype=np.int64), np.zeros(world, dtype=np.int64)
    np.minimum.at(y0, tile_ranks, ty)
    np.minimum.at(x0, tile_ranks, tx)
    np.maximum.at(y1, tile_ranks, ty + 1)
    np.maximum.at(x1, tile_ranks, tx + 1)
    ts = grid.tile_size
    h = np.minimum(y1 * ts, grid.height) - y0 * ts
    w = np.minimum(x1 * ts, grid.width) - x0 * ts
    return (np.maximum(h, 0) * np.maximum(w, 0)).astype(np.float64)


def mean_counts(per_batch: list[list[dict[str, float]]]) -> list[dict[str, float]]:
    """Each rank's counts averaged over several batches."""
    n = len(per_batch)
    return [{k: sum(b[r][k] for b in per_batch) / n for k in KEYS} for r in range(len(per_batch[0]))]
