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
   batch): :func:`grendel_py.loss.regions.regions_loss`. Backward returns every gradient to the Gaussian's
   owner through the two exchanges in reverse.

What is fixed for a run (the render backend, antialiasing, the default background, the loss's weight, the
tile balancer) is one :class:`StepOptions`, built once; what changes with each batch (cameras, photos,
random backgrounds, SH degree, exposures) is a :class:`Batch`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.distributed as dist

from grendel_py.data.cameras import Camera
from grendel_py.loss.fused import Launch
from grendel_py.loss.regions import Region, expose_regions, regions_loss
from grendel_py.model.densify import ndc_grad_norms
from grendel_py.model.gaussians import Gaussians
from grendel_py.parallel.exchange import exchange_splats
from grendel_py.parallel.halo import exchange_halos
from grendel_py.parallel.runtime import DistContext
from grendel_py.parallel.stage_clock import StageClock
from grendel_py.render import get_backend, project_batch, rasterize_batch
from grendel_py.render.composite import compositor_work
from grendel_py.render.interface import Pairs, Renderer
from grendel_py.render.intersect import BatchTiles
from grendel_py.render.projection import pixel_radii
from partition.assign import Assignment, TileTable, majority_keys
from partition.balancer import TileBalancer
from partition.tiles import TILE_SIZE, TileGrid


@dataclass(frozen=True)
class StepOptions:
    """What the step does the same way for a whole run: ``backend`` renders (a backend of
    :data:`grendel_py.render.BACKENDS`, resolved once, or another
    :class:`~grendel_py.render.interface.Renderer`), ``antialiased`` (see :func:`grendel_py.render.project`),
    ``background`` [3] is what the cameras are rendered over unless a batch brings its own, ``lambda_dssim``
    weighs D-SSIM against L1, ``balancer`` assigns the tiles (default: the ``locality`` strategy with fixed
    equal speeds, made per step), ``loss_kernels``, a kernel launcher, computes the loss with the fused
    kernels (None: the torch spec; :func:`~grendel_py.loss.regions.regions_loss`) and ``clock``, when given,
    times the step's stages and counts what drives them (:mod:`grendel_py.parallel.stage_clock`)."""

    background: torch.Tensor
    backend: Renderer = field(default_factory=lambda: get_backend("torch"))
    antialiased: bool = False
    lambda_dssim: float = 0.2
    balancer: TileBalancer | None = None
    loss_kernels: Launch | None = None
    clock: StageClock | None = None

    def balancer_for(self, ctx: DistContext) -> TileBalancer:
        """The tile balancer of this run, or a fixed ``locality`` one for ``ctx``'s ranks."""
        return self.balancer or TileBalancer("locality", ctx.world_size, calibrate=False)


@dataclass
class Batch:
    """The cameras of one forward and backward pass and what goes with each: its ``photos`` (tensors, or
    :class:`~grendel_py.train.images.Photo`, which read only the rank's regions; None to render without a
    loss), ``backgrounds`` [B, 3] (one per camera, None: the run's), the ``sh_degree`` to render with, and
    ``exposures`` [B, 3, 4] (each camera's render goes through its affine colour transform before the
    loss; None: none)."""

    cameras: list[Camera]
    photos: list | None
    sh_degree: int
    backgrounds: torch.Tensor | None = None
    exposures: torch.Tensor | None = None

    def part(self, cameras: slice) -> Batch:
        """The batch of the cameras ``cameras`` of this one (a micro-batch)."""

        def pick(values):
            return None if values is None else values[cameras]

        return Batch(
            self.cameras[cameras], pick(self.photos), self.sh_degree, pick(self.backgrounds), pick(self.exposures)
        )

    def background(self, options: StepOptions) -> torch.Tensor:
        """What its cameras are rendered over: [B, 3] of its own, else the run's [3]."""
        return options.background if self.backgrounds is None else self.backgrounds


@dataclass
class Rendered:
    """This rank's part of a batch: what densification needs of the projected splats of its shard
    (``parts[b]`` rows for camera b, one camera after another, the model row of each in ``rows``): their
    pixel ``radii`` and, once the backward pass has reached them, the norms of their ``means2d`` gradients in
    NDC units (``grad_norms``, empty until then), see :meth:`per_camera`; the rest of the splats is not
    kept. Then its tiles and their colours per camera, its regions (with halos), the tile table and
    assignment (the same on every rank), the received rows every rank must keep in its graph, the bytes it
    sent, ``squared_error`` (float64, of its owned pixels over the batch, once the loss is computed: what the
    logged PSNR reads) and ``raster_seconds()``: the seconds it spent rasterizing (forward; on a GPU read from CUDA events,
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
    squared_error: torch.Tensor | None = None

    def statistics(self):
        """What densification observes of the batch: the splats' pixel radii, their gradient norms (None
        before the backward pass) and their model rows, all cameras at once."""
        return self.radii, self.grad_norms[0] if self.grad_norms else None, self.rows


def _observe_gradients(means2d: torch.Tensor, parts: list[int], cameras: list[Camera]) -> list[torch.Tensor]:
    """A list that the backward pass fills with the norms [S] of the gradient of ``means2d`` (``parts[b]``
    splats of camera b), in NDC units (:func:`~grendel_py.model.densify.ndc_grad_norms`), as soon as it is
    computed: neither the splats' ``means2d`` nor their gradient is kept for densification."""
    box: list[torch.Tensor] = []
    # each splat's camera's half size: built on the host, uploaded once
    half = np.repeat(np.array([[c.width / 2.0, c.height / 2.0] for c in cameras], dtype=np.float32), parts, axis=0)
    half_size = torch.from_numpy(half).to(means2d.device, non_blocking=True)

    def hook(grad: torch.Tensor) -> None:
        box[:] = [ndc_grad_norms(grad, half_size)]

    means2d.register_hook(hook)
    return box


def _count_received(clock: StageClock, received, table: TileTable, plan: Assignment, rank: int) -> None:
    """The counts of this rank's share of the batch: splats received (its own included), (splat, tile) pairs,
    the compositor's slots, chunks and largest chunk for them (:func:`~grendel_py.render.composite.compositor_work`) and
    pixels of its tiles, bytes it sent and received; on one rank also the pairs it listed (all of them; on more, a
    rank's own splats' pairs are not read to the host)."""
    mine = plan.rank == rank
    clock.count("received", len(received.splats))
    clock.count("pairs", int(table.intersections[mine].sum()))
    slots, chunks, largest = compositor_work(table.intersections[mine], TILE_SIZE * TILE_SIZE)
    clock.count("padded_pairs", slots)
    clock.count("chunks", chunks)
    clock.count("chunk_pairs", largest)
    if plan.world_size == 1:
        clock.count("listed_pairs", int(table.intersections.sum()))
    clock.count("pixels", int(mine.sum()) * TILE_SIZE * TILE_SIZE)
    clock.count("bytes_sent", received.bytes_sent)
    clock.count("bytes_received", received.bytes_received)


def tile_table(pairs: Pairs, grids: list[TileGrid], ctx: DistContext) -> TileTable:
    """Step 2: the batch's tile table, from every rank's (splat, batch tile) ``pairs`` (one read to the
    host)."""
    counts = pairs.tile_counts()
    if not ctx.distributed:
        return TileTable.from_counts(grids, counts[None].cpu().numpy())
    keys = majority_keys(counts, ctx.rank, ctx.world_size)
    dist.all_reduce(counts)
    dist.all_reduce(keys, op=dist.ReduceOp.MAX)
    total, keys = torch.stack([counts, keys]).cpu().numpy()
    return TileTable.from_reduced(grids, total, keys, ctx.world_size)


def render_batch(shard: Gaussians, batch: Batch, options: StepOptions, ctx: DistContext) -> Rendered:
    """Steps 1-6 above for the cameras of ``batch`` (its photos are not read), as ``options`` say."""
    cameras, backend, background = batch.cameras, options.backend, batch.background(options)
    grids = [TileGrid(c.width, c.height) for c in cameras]
    clock = options.clock
    splats, parts, rows = project_batch(shard, cameras, batch.sh_degree, backend, options.antialiased)
    if clock:
        clock.mark("project")
        clock.count("gaussians", len(shard))
        clock.count("gaussian_cameras", len(shard) * len(cameras))
        clock.count("visible", sum(parts))
        clock.count("sh_terms", sum(parts) * (batch.sh_degree + 1) ** 2)
        clock.count("tiles", sum(g.n_tiles for g in grids))
    radii = pixel_radii(splats.extents)
    # not when the model is frozen (only the exposures train) or under no_grad
    grad_norms = _observe_gradients(splats.means2d, parts, cameras) if splats.means2d.requires_grad else []
    pairs = backend.pairs(splats, parts, grids)  # listed for the table, then again for the routing
    table = tile_table(pairs, grids, ctx)
    plan = options.balancer_for(ctx).plan(table)
    device = background.device
    owners = [plan.owner_table(b).to(device, non_blocking=True) for b in range(len(grids))]
    if clock:
        clock.mark("table")
    received = exchange_splats(splats, parts, pairs, owners, ctx)
    if clock:
        clock.mark("exchange")
        _count_received(clock, received, table, plan, ctx.rank)
        clock.on_grad(received.splats.means2d, "rasterize_backward")  # first: on one rank the same tensor
        clock.on_grad(splats.means2d, "exchange_backward")
    del splats, pairs  # the projected splats (56 bytes each) are not needed any more (on one rank: the received ones)

    tiles = BatchTiles(grids, [plan.tiles_of(b, ctx.rank) for b in range(len(grids))], device)
    with _Stopwatch(device) as raster_seconds:
        colors, _, _ = rasterize_batch(received.splats, received.parts, tiles, background, backend)
    if clock:
        clock.mark("rasterize")
    # Every rank must take part in both backward exchanges, also when its own pixels use none of their rows.
    tie_splats = (received.splats.means2d.sum(), received.splats.colors.sum())
    bytes_sent = received.bytes_sent
    del received  # the compositor keeps what its backward needs; the received ids and extents go
    tile_colors = tiles.split(colors)
    boxes = [plan.tile_box(b, ctx.rank) for b in range(len(grids))]
    regions, halo_values = exchange_halos(tile_colors, tiles.tile_ids, grids, owners, boxes, ctx)
    if clock:
        clock.mark("halo")
        clock.count("halo_pixels", halo_values.shape[0])
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


def batch_loss(shard: Gaussians, batch: Batch, options: StepOptions, ctx: DistContext) -> tuple[torch.Tensor, Rendered]:
    """Steps 1-7 above: this rank's share of the loss of ``batch`` (summed over its cameras) and what it
    rendered; the photos are read once the tile plan is known (a :class:`~grendel_py.train.images.Photo`
    reads only the rank's regions). The exposures, when given, apply to the logged errors too."""
    rendered = render_batch(shard, batch, options, ctx)
    if batch.exposures is not None:
        rendered.regions = expose_regions(rendered.regions, batch.exposures, batch.cameras)
    device = rendered.tie.device
    scores = regions_loss(
        rendered.regions, batch.photos, batch.cameras, options.lambda_dssim, device, options.loss_kernels
    )
    if options.clock:
        options.clock.mark("loss")
        for region in rendered.regions:
            if region is not None:
                options.clock.count("loss_pixels", region.owned.numel())
                options.clock.on_grad(region.canvas, "loss_backward")
    rendered.squared_error = scores.squared_error
    return scores.loss + 0.0 * rendered.tie, rendered
