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
from grendel_py.simulate import SimScene, exchange_bytes
from partition.assign import Assignment
from partition.tiles import TILE_SIZE

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
        for r in range(w):
            rank_tiles[r].append(per_tile[tile_ranks == r])
        need = np.unique(rows * w + renders)  # each (Gaussian, rank that renders a tile of it) once
        total["received"] += _by_rank(need % w, w)
        total["tiles"] += grid.n_tiles
        total["pixels"] += _by_rank(tile_ranks, w) * grid.tile_size**2
        for r in range(w):
            ty0, ty1, tx0, tx1 = plan.tile_box(slot, r)
            h = min(ty1 * grid.tile_size, grid.height) - ty0 * grid.tile_size
            wd = min(tx1 * grid.tile_size, grid.width) - tx0 * grid.tile_size
            total["loss_pixels"][r] += max(h, 0) * max(wd, 0)
        offset += grid.n_tiles
    for r, per_tile in enumerate(rank_tiles):  # the rank composites the batch's tiles at once
        work = compositor_work(np.concatenate(per_tile), PIXELS)
        total["padded_pairs"][r], total["chunks"][r], total["chunk_pairs"][r] = work
    total["sh_terms"] = total["visible"] * (sh_degree + 1) ** 2
    total["bytes_sent"], total["bytes_received"] = exchange_bytes(scene, batch, owner, plan)
    if node_size is not None and w > node_size:
        total["bytes_sent_across"], total["bytes_received_across"] = exchange_bytes(
            scene, batch, owner, plan, node_size
        )
    if w > 1:
        owners = [plan.owner_table(b) for b in range(len(batch))]
        total["halo_pixels"] = halo_pixel_counts(list(plan.grids), owners, w).double().numpy()
    return [{key: float(total[key][r]) for key in KEYS} for r in range(w)]


def mean_counts(per_batch: list[list[dict[str, float]]]) -> list[dict[str, float]]:
    """Each rank's counts averaged over several batches."""
    n = len(per_batch)
    return [{k: sum(b[r][k] for b in per_batch) / n for k in KEYS} for r in range(len(per_batch[0]))]
