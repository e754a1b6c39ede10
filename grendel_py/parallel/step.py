"""One distributed forward pass over a batch of cameras, ending in this rank's share of the loss.

1. Project: the Gaussians of this rank's shard that each camera of the batch sees (the others are dropped
   before autograd records anything), into one table of splats for the batch.
2. Cost: the shard's (splat, tile) pairs, culled to the tiles each splat's ellipse reaches; per-tile counts
   of them, summed over ranks (the exact work of this iteration for every tile), and max-reduced bids that
   name the rank owning most of each tile's splats: two all-reduces.
3. Assign: tiles to ranks from that table (partition.balancer), identically on every rank.
4. Exchange: each projected splat goes to the ranks whose tiles it reaches, from the same pairs (sparse
   all-to-all).
5. Rasterize: this rank's tiles, from the splats it received, sorted by (depth, global id), so the pixels are
   the ones a single rank would compute.
6. Halo: rendered pixels within 5 px of this rank's region come from their owners.
7. Loss: L1 and D-SSIM over this rank's pixels (the only ground-truth pixels it reads), each camera
   normalised by its full pixel count, so the sum over ranks is the single-rank loss (summed over the
   batch); computed in bands of :data:`LOSS_ROWS` rows (a sum of per-pixel terms, so the bands change only
   the order of the sum). Backward returns every gradient to the Gaussian's owner through the two exchanges in reverse.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from grendel_py.data.cameras import Camera
from grendel_py.model.densify import screen_grad_norms
from grendel_py.model.exposure import apply_exposure
from grendel_py.model.gaussians import Gaussians
from grendel_py.parallel.exchange import exchange_splats
from grendel_py.parallel.halo import Region, exchange_halos
from grendel_py.parallel.runtime import DistContext
from grendel_py.render import project_batch, rasterize_batch
from grendel_py.render.intersect import BatchTiles, PairPieces, count_values, part_starts
from grendel_py.render.projection import pixel_radii
from grendel_py.train.loss import HALO, region_loss, ssim_map_valid
from partition.assign import Assignment, TileTable, majority_keys
from partition.balancer import TileBalancer
from partition.tiles import TileGrid


@dataclass
class Rendered:
    """This rank's part of a batch: what densification needs of the projected splats of its shard
    (``parts[b]`` rows for camera b, one camera after another, the model row of each in ``rows``): their
    pixel ``radii`` and, once the backward pass has reached them, the norms of their ``means2d`` gradients in
    NDC units (``grad_norms``, empty until then), see :meth:`per_camera`; the rest of the splats is not
    kept. Then its tiles and their colours per camera, its regions (with halos), the tile table and
    assignment (the same on every rank), the received rows every rank must keep in its graph, the bytes it
    sent, and ``raster_seconds()``: the seconds it spent rasterizing (forward; on a GPU read from CUDA events,
    which waits for the rasterization to finish)."""

    radii: torch.Tensor
    grad_norms: list[torch.Tensor]
    parts: list[int]
    rows: torch.Tensor
    tile_ids: list[torch.Tensor]
    tile_colors: list[torch.Tensor]
    regions: list[Region | None]
    table: TileTable
    assignment: Assignment
    tie: torch.Tensor
    bytes_sent: int
    raster_seconds: Callable[[], float]

    def per_camera(self):
        """(the splats' pixel radii, their gradient norms or None, their model rows) for each camera of the batch."""
        norms = self.grad_norms[0] if self.grad_norms else None
        for start, n in zip(part_starts(self.parts), self.parts):
            rows = slice(start, start + n)
            yield self.radii[rows], None if norms is None else norms[rows], self.rows[rows]


def _observe_gradients(means2d: torch.Tensor, parts: list[int], cameras: list[Camera]) -> list[torch.Tensor]:
    """A list that the backward pass fills with the norms [S] of the gradient of ``means2d`` (``parts[b]``
    splats of camera b), in NDC units (:func:`~grendel_py.model.densify.screen_grad_norms`), as soon as it is
    computed: neither the splats' ``means2d`` nor their gradient is kept for densification."""
    box: list[torch.Tensor] = []

    def hook(grad: torch.Tensor) -> None:
        norms = grad.new_empty(grad.shape[0], dtype=torch.float32)
        for start, n, cam in zip(part_starts(parts), parts, cameras):
            norms[start : start + n] = screen_grad_norms(grad[start : start + n], cam.width, cam.height)
        box[:] = [norms]

    means2d.register_hook(hook)
    return box


def tile_table(pairs: PairPieces, grids: list[TileGrid], ctx: DistContext) -> TileTable:
    """Step 2: the batch's tile table, from every rank's (splat, batch tile) ``pairs``, counted piece by piece
    (one read to the host)."""
    n_tiles = sum(g.n_tiles for g in grids)
    counts = torch.zeros(n_tiles, dtype=torch.int64, device=pairs.splats.means2d.device)
    for _, _, tiles in pairs.pieces():
        counts += count_values(tiles, n_tiles)  # culled pairs (id past the end) are not counted
    if not ctx.distributed:
        return TileTable.from_counts(grids, counts[None].cpu().numpy())
    keys = majority_keys(counts, ctx.rank, ctx.world_size)
    dist.all_reduce(counts)
    dist.all_reduce(keys, op=dist.ReduceOp.MAX)
    total, keys = torch.stack([counts, keys]).cpu().numpy()
    return TileTable.from_reduced(grids, total, keys, ctx.world_size)


def render_batch(
    shard: Gaussians,
    cameras: list[Camera],
    background: torch.Tensor,
    sh_degree: int,
    ctx: DistContext,
    balancer: TileBalancer | None = None,
    backend: str = "torch",
    antialiased: bool = False,
) -> Rendered:
    """Steps 1-6 above for the cameras of one batch, over ``background`` ([3], or [B, 3]: one per camera);
    ``balancer`` picks the tile assignment (default: the ``locality`` strategy with fixed equal speeds);
    ``backend`` is the render backend (a resolved name); ``antialiased``: see :func:`grendel_py.render.project`."""
    balancer = balancer or TileBalancer("locality", ctx.world_size, calibrate=False)
    grids = [TileGrid(c.width, c.height) for c in cameras]
    batch, parts, rows = project_batch(shard, cameras, sh_degree, backend, antialiased)
    radii = pixel_radii(batch.extents)
    # not when the model is frozen (only the exposures train) or under no_grad
    grad_norms = _observe_gradients(batch.means2d, parts, cameras) if batch.means2d.requires_grad else []
    pairs = PairPieces(batch, parts, grids)  # listed piece by piece for the table, then again for the routing
    table = tile_table(pairs, grids, ctx)
    plan = balancer.plan(table)
    device = background.device
    owners = [plan.owner_table(b).to(device, non_blocking=True) for b in range(len(grids))]
    received = exchange_splats(batch, parts, pairs, owners, ctx)
    del batch, pairs  # the projected splats (56 bytes each) are not needed any more (on one rank: the received ones)

    tiles = BatchTiles(grids, [plan.tiles_of(b, ctx.rank) for b in range(len(grids))], device)
    with _Stopwatch(device) as raster_seconds:
        colors, _, _ = rasterize_batch(received.splats, received.parts, tiles, background, backend)
    # Every rank must take part in both backward exchanges, also when its own pixels use none of their rows.
    tie_splats = (received.splats.means2d.sum(), received.splats.colors.sum())
    bytes_sent = received.bytes_sent
    del received  # the compositor keeps what its backward needs; the received ids and extents go
    tile_colors = tiles.split(colors)
    regions, halo_values = exchange_halos(tile_colors, tiles.tile_ids, grids, owners, ctx)
    tie = halo_values.sum() + tie_splats[0] + tie_splats[1]
    return Rendered(
        radii,
        grad_norms,
        parts,
        rows,
        tiles.tile_ids,
        tile_colors,
        regions,
        table,
        plan,
        tie,
        bytes_sent,
        raster_seconds,
    )


class _Stopwatch:
    """Seconds spent in a ``with`` block: wall time on the CPU; on a GPU, the time between two CUDA events
    recorded on the current stream (the launches are asynchronous, so wall time would measure their
    overhead). Call the object for the seconds; on a GPU that waits for the block's work."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def __enter__(self) -> _Stopwatch:
        if self.cuda:
            self.start, self.end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            self.start.record()
        else:
            self.tic = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        if self.cuda:
            self.end.record()
        else:
            self.seconds = time.perf_counter() - self.tic

    def __call__(self) -> float:
        if self.cuda:
            self.end.synchronize()
            return self.start.elapsed_time(self.end) / 1000.0
        return self.seconds


def ground_truth_region(region: Region, gt) -> torch.Tensor:
    """The ground truth under ``region.canvas`` (zeros outside the image): the region's crop of the photo,
    padded only where the canvas reaches past the photo's edges. ``gt``: the photo, float32 [H, W, 3] on the
    device, or a :class:`grendel_py.train.images.Photo`, which reads only the crop."""
    h, w = region.owned.shape
    height, width = gt.shape[:2]
    top, left, bottom, right = region.y0 - HALO, region.x0 - HALO, region.y0 + h + HALO, region.x0 + w + HALO
    crop = gt[max(top, 0) : min(bottom, height), max(left, 0) : min(right, width)]
    pad = (max(-left, 0), max(right - width, 0), max(-top, 0), max(bottom - height, 0))
    return F.pad(crop.permute(2, 0, 1), pad).permute(1, 2, 0)


LOSS_ROWS = 128
"""Rows of a region whose loss is computed at a time (plus the SSIM halo above and below): the backward pass
recomputes SSIM's maps for one band at a time, not for a whole camera."""


def batch_loss(
    shard: Gaussians,
    cameras: list[Camera],
    images: list,
    background: torch.Tensor,
    sh_degree: int,
    lambda_dssim: float,
    ctx: DistContext,
    balancer: TileBalancer | None = None,
    backend: str = "torch",
    antialiased: bool = False,
    exposures: torch.Tensor | None = None,
) -> tuple[torch.Tensor, Rendered]:
    """Steps 1-7 above: this rank's share of the batch's loss (summed over cameras) and what it rendered.
    ``images``: each camera's photo, as a tensor or a :class:`grendel_py.train.images.Photo` (then only the
    rank's regions are read, once the tile plan is known). ``exposures`` [B, 3, 4]: each camera's render
    goes through its affine colour transform before the loss (and the logged errors)."""
    rendered = render_batch(shard, cameras, background, sh_degree, ctx, balancer, backend, antialiased)
    if exposures is not None:
        rendered.regions = [
            None if r is None else expose_region(r, t, cam.height, cam.width)
            for r, t, cam in zip(rendered.regions, exposures, cameras)
        ]
    loss = background.new_zeros(())
    for region, gt, cam in zip(rendered.regions, images, cameras):
        if region is not None:
            gt_halo = ground_truth_region(region, gt)
            height = region.owned.shape[0]
            for r0 in range(0, height, LOSS_ROWS):  # bands of rows, each with the halo its windows read
                r1 = min(r0 + LOSS_ROWS, height)
                rows = slice(r0, r1 + 2 * HALO)
                args = (region.canvas[rows], gt_halo[rows], lambda_dssim, cam.width * cam.height, region.owned[r0:r1])
                # checkpointed: autograd keeps the canvas and the photo, not SSIM's maps (some 40 per pixel),
                # and recomputes them band by band in the backward pass, to the same bits
                loss = loss + (
                    checkpoint(region_loss, *args, use_reentrant=False)
                    if torch.is_grad_enabled()
                    else region_loss(*args)
                )
    return loss + 0.0 * rendered.tie, rendered


def expose_region(region: Region, transform: torch.Tensor, height: int, width: int) -> Region:
    """``region`` with its canvas through the affine colour ``transform`` [3, 4] inside the image of
    ``height`` x ``width`` (outside it stays 0, as SSIM's padding)."""
    canvas = apply_exposure(region.canvas, transform)
    h, w = canvas.shape[:2]
    ys = torch.arange(h, device=canvas.device) + (region.y0 - HALO)
    xs = torch.arange(w, device=canvas.device) + (region.x0 - HALO)
    inside = ((ys >= 0) & (ys < height))[:, None] & ((xs >= 0) & (xs < width))[None, :]
    return dataclasses.replace(region, canvas=torch.where(inside[..., None], canvas, 0.0))


def _owned_pairs(rendered: Rendered, images: list):
    """(camera slot, render canvas clamped to [0, 1], ground truth canvas, owned mask) per camera this rank holds."""
    for b, (region, gt) in enumerate(zip(rendered.regions, images)):
        if region is not None:
            yield b, region.canvas.detach().clamp(0.0, 1.0), ground_truth_region(region, gt), region.owned


def region_squared_errors(rendered: Rendered, images: list) -> torch.Tensor:
    """Per camera, the squared error summed over this rank's pixels and channels, float64 [B]
    (all-reduce over ranks and divide by 3 H W for the whole image's MSE)."""
    sums = torch.zeros(len(images), dtype=torch.float64, device=rendered.tie.device)
    core = (slice(HALO, -HALO), slice(HALO, -HALO))
    for b, canvas, gt_halo, owned in _owned_pairs(rendered, images):
        sums[b] = torch.where(owned, ((canvas[core] - gt_halo[core]) ** 2).sum(-1), 0.0).double().sum()
    return sums


def region_ssim_sums(rendered: Rendered, images: list) -> torch.Tensor:
    """Per camera, SSIM summed over this rank's pixels, float64 [B] (all-reduce, divide by H W)."""
    sums = torch.zeros(len(images), dtype=torch.float64, device=rendered.tie.device)
    for b, canvas, gt_halo, owned in _owned_pairs(rendered, images):
        sums[b] = torch.where(owned, ssim_map_valid(canvas, gt_halo), 0.0).double().sum()
    return sums
