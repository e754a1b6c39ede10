"""Training, read top to bottom: one iteration = one batch of cameras, on one rank or on W.

Each rank owns a spatially compact shard of the Gaussians (with its Adam state and densification
statistics); :func:`grendel_py.parallel.step.batch_loss` renders the batch across the ranks and returns this
rank's share of the loss; backward returns every gradient to the owner; each rank steps and densifies its
own shard, and the shards are re-partitioned (:mod:`grendel_py.parallel.redistribute`) when densification has
unbalanced them. With one process the same code runs without a process group.

The run folder (``train.out``) gets the resolved ``config.yaml`` first, TensorBoard scalars under ``tb/`` and
sharded checkpoints under ``checkpoints/`` (:mod:`grendel_py.train.checkpoint`) while training, at each
evaluation the pictures of the distributed work under ``work/<images>/`` (:mod:`grendel_py.pictures`: tiles
by rank and each rank's work for the first ``train.eval_renders`` test views, the shards' boxes), and at the
end ``model.ply`` (one merged file; also in the formats of ``train.export``), ``metrics.json`` and
``renders/`` (test views, render | ground truth). Every file is written atomically, by rank 0 except the
merged model files (every rank writes its rows). Schedules count images, so the batch size can change freely.
The progress bar (or plain lines in a log), the TensorBoard scalars, the browser viewer
(``train.viewer_port``) and on the CPU torch's thread count (:mod:`grendel_py.train.cpu_threads`) are observers
(:mod:`grendel_py.train.observers`): the loop reports each step, evaluation and the end to them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import resource
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from grendel_py.config import Config, config_to_dict
from grendel_py.data.dataset import Scene, scene_from_config
from grendel_py.data.photo_cache import photo_cache
from grendel_py.errors import InputError
from grendel_py.fileio import atomic_open
from grendel_py.model.densify import Strategy
from grendel_py.model.exposure import Exposures
from grendel_py.model.gaussians import Gaussians
from grendel_py.model.schedule import crossed
from grendel_py.model.splat_formats import FILE_NAMES
from grendel_py.outputs import staged_dir
from grendel_py.parallel.export import write_merged
from grendel_py.parallel.redistribute import redistribute, should_redistribute
from grendel_py.parallel.runtime import DistContext
from grendel_py.parallel.step import Batch, StepOptions, batch_loss
from grendel_py.render import get_backend, resolve_backend
from grendel_py.render.cuda_kernels import cupy_kernels
from grendel_py.render.interface import Renderer
from grendel_py.render.kernel_backend import KernelBackend
from grendel_py.train.checkpoint import Manifest
from grendel_py.train.cpu_threads import CpuThreads
from grendel_py.train.evaluate import EvalOutputs, evaluate_sharded
from grendel_py.train.images import GroundTruth, random_backgrounds
from grendel_py.train.observers import Observer, ProgressBar, ProgressLines, Scalars, StepReport, ViewerFeed
from grendel_py.train.preempt import Preempted, StopSignals, agreed_signal
from grendel_py.train.run_folder import check_run_dir, create_run_dir
from grendel_py.train.sampler import camera_affinity, normalize_affinity
from grendel_py.train.state import TrainingState, initial_state
from partition.assign import Assignment, TileTable
from partition.balancer import TileBalancer


def train(
    cfg: Config,
    ctx: DistContext,
    resume: Manifest | None = None,
    restart: bool = False,
    renderer: Renderer | None = None,
) -> dict:
    """Train on ``cfg.data`` into the folder ``cfg.train.out`` (fresh, or continuing from the checkpoint
    ``resume`` of that folder); returns the final metrics (on every rank). ``restart``: a fresh run may
    replace what an earlier attempt left in the folder before its first checkpoint (``--auto-resume``).
    ``renderer``: renders instead of the backend ``cfg.render.backend`` names (the tests run the CUDA
    kernels' path on the CPU through a :class:`~grendel_py.render.kernel_backend.KernelBackend`).

    SIGTERM, SIGUSR1 or SIGINT (Ctrl-C) stop the run after the current iteration with a checkpoint:
    :class:`Preempted`.
    Bad input raises :class:`InputError` on every rank before the run folder is created."""
    t = cfg.train
    run = _start(cfg, ctx, resume, restart, renderer)
    state, scene, options = run.state, run.scene, run.options
    observers = _observers(cfg, run, ctx)
    totals = _Totals(state.seen)
    with _closing(run.images, observers):
        with StopSignals() as stop:
            while state.seen < t.images:
                tic, waited = time.perf_counter(), run.images.wait_seconds
                slots, batch = _next_batch(cfg, run, ctx)
                passes = [
                    train_pass(
                        state.shard, _micro_batch(batch, part, slots, state.exposures), options, ctx, state.densify
                    )
                    for part in micro_batches(len(slots), t.micro_batch)
                ]
                # optimise
                state.densify.regularise(state.shard, len(slots))
                state.optimizer.update_lr(state.seen, t.images)
                state.optimizer.step()
                if state.exposures is not None:
                    state.exposures.step(slots, state.seen, t.images, ctx.reduce)
                before, state.seen = state.seen, state.seen + len(slots)
                # densify, and redistribute the Gaussians when the shards drifted out of balance
                moved = None
                events = state.densify.step(before, state.seen, state.shard, state.optimizer, state.allocate_ids)
                if events["densified"] and should_redistribute(len(state.shard), cfg.dist.rebalance_threshold, ctx):
                    moved = redistribute(state.optimizer, state.densify, cfg.dist.ownership, ctx)
                    if cfg.dist.batch_sampling == "owner-aware":
                        state.sampler.set_affinity(_affinity(state.shard, scene, ctx))
                checkpoint = None
                if t.checkpoint_every and (crossed(before, state.seen, t.checkpoint_every) or state.seen >= t.images):
                    checkpoint = state.save(run.out, t.keep_checkpoints, ctx)
                # statistics (one all-reduce, which also carries the stop signals and the observers' requests)
                requests = sum(o.request() for o in observers)
                stats, stopping, requested = _batch_stats(
                    passes, batch.photos, len(state.shard), moved or 0, stop.flags(), requests, options.balancer, ctx
                )
                stats["step_seconds"] = time.perf_counter() - tic
                stats["data_seconds"] = run.images.wait_seconds - waited  # this rank's wait for photos
                rate = totals.add(stats, state.seen)
                report = StepReport(
                    before, state.seen, batch.cameras, stats, rate, moved is not None, state.shard, requested
                )
                for o in observers:
                    o.on_step(report)
                if stopping:  # every rank saw the stop signals' flags in the same all-reduce
                    checkpoint = checkpoint or state.save(run.out, t.keep_checkpoints, ctx)
                    raise Preempted(
                        stopping, state.seen, checkpoint, "" if stopping == stop.received else "on another rank"
                    )
                if (
                    t.eval_every
                    and crossed(before, state.seen, t.eval_every)
                    and state.seen < t.images
                    and scene.test_cameras
                ):
                    pictures = _pictures_dir(run.out, state.seen)
                    outputs = EvalOutputs(t.eval_renders, pictures_dir=pictures)
                    metrics = evaluate_sharded(
                        state.shard, run.test_photos, scene.test_cameras, options, ctx, outputs=outputs
                    )
                    for o in observers:
                        o.on_evaluation(state.seen, metrics, pictures)
        result = _finish(cfg, run, totals.timing(run.images.wait_seconds, ctx), ctx)
        for o in observers:
            o.on_end(state.seen, result)
    return result


@dataclass
class _Run:
    """A run in progress: its folder ``out``, its ``scene``, this rank's training ``state``, the step's
    ``options``, the training photos (``images``: read ahead on a thread) and the test photos' reader."""

    out: Path
    scene: Scene
    state: TrainingState
    options: StepOptions
    images: GroundTruth
    test_photos: Callable


def _start(cfg: Config, ctx: DistContext, resume: Manifest | None, restart: bool, renderer: Renderer | None) -> _Run:
    """Everything checked (the config, the run folder, the scene and its photos, the checkpoint) before the
    run folder is created, then the training state, the folder, the step's options and the photo readers."""
    backend = renderer or _renderer(resolve_backend(cfg.render.backend, ctx.device), ctx.device)
    out = check_run_dir(cfg, resume, restart)
    torch.manual_seed(cfg.seed)
    t = cfg.train
    scene = scene_from_config(cfg.data)
    scene.check_images()
    if not scene.train_cameras:
        raise InputError(scene.source, "scene has no training cameras")
    if t.batch_size > len(scene.train_cameras):
        raise InputError(
            scene.source,
            f"train.batch_size={t.batch_size} is more than the scene's {len(scene.train_cameras)} "
            f"training cameras; use train.batch_size<={len(scene.train_cameras)}",
        )
    photos = photo_cache(cfg.data, scene)
    state = initial_state(cfg, scene, resume, ctx)
    create_run_dir(out, cfg, resume, ctx)
    background = torch.tensor(cfg.render.background, device=ctx.device)
    d = cfg.dist
    balancer = TileBalancer(d.assignment, ctx.world_size, d.tolerance, d.link_gbps * 1e9 / 8, calibrate=d.calibrate)
    kernels = backend.launch if isinstance(backend, KernelBackend) else None  # the fused loss with the kernels
    options = StepOptions(background, backend, cfg.render.antialiased, t.lambda_dssim, balancer, kernels)
    images = GroundTruth(photos, ctx.device, background)
    # read outside the step: not counted as waiting for data
    test_photos = GroundTruth(photos, ctx.device, background).photo
    if d.batch_sampling == "owner-aware":
        state.sampler.set_affinity(_affinity(state.shard, scene, ctx))
    return _Run(out, scene, state, options, images, test_photos)


def _renderer(backend: str, device: torch.device) -> Renderer:
    """The renderer of the backend named ``backend``: the CUDA kernels of ``device`` behind a
    :class:`KernelBackend` for ``cupy`` (whose launcher also computes the fused loss), else the backend."""
    return KernelBackend(cupy_kernels(device).launch) if backend == "cupy" else get_backend(backend)


def _observers(cfg: Config, run: _Run, ctx: DistContext) -> list[Observer]:
    """The run's observers: TensorBoard scalars in ``tb/`` (rank 0), the browser viewer (with
    ``train.viewer_port``, every rank), torch's CPU threads (on the CPU), the progress bar, and on rank 0, when
    stdout is not a terminal, plain progress lines."""
    t = cfg.train
    observers: list[Observer] = []
    if ctx.is_main:
        observers.append(Scalars(run.out / "tb", run.state.seen, t.log_every))
    if t.viewer_port:
        observers.append(ViewerFeed(t, run.scene.train_cameras, ctx))
    if ctx.device.type == "cpu":
        observers.append(CpuThreads(t.cpu_threads, say=ctx.is_main))
    observers.append(ProgressBar(t.images, run.state.seen, ctx))
    if ctx.is_main and not sys.stdout.isatty():  # a batch job's log: the bar is off there
        observers.append(ProgressLines(t.images, run.state.seen, t.log_every))
    return observers


def _next_batch(cfg: Config, run: _Run, ctx: DistContext) -> tuple[list[int], Batch]:
    """The next batch's photo indices among the training cameras and the batch (without exposures, see
    :func:`_micro_batch`); the photos of the one after it start to be read ahead."""
    state, cameras_of = run.state, run.scene.train_cameras
    slots = state.sampler.next_batch()
    cameras = [cameras_of[i] for i in slots]
    backgrounds = (
        random_backgrounds(cfg.seed, state.seen, len(cameras), ctx.device) if cfg.render.random_background else None
    )
    photos = run.images.batch(cameras, backgrounds)
    if state.seen + len(cameras) < cfg.train.images:  # the next batch's photos travel while this one computes
        run.images.prefetch([cameras_of[i] for i in state.sampler.peek_batch()])
    sh_degree = min(cfg.model.sh_degree, state.seen // cfg.train.sh_degree_every)
    return slots, Batch(cameras, photos, sh_degree, backgrounds)


def _micro_batch(batch: Batch, part: slice, slots: list[int], exposures: Exposures | None) -> Batch:
    """The cameras ``part`` of ``batch`` with their exposures (looked up for each pass, which frees its graph)."""
    return dataclasses.replace(batch.part(part), exposures=None if exposures is None else exposures.of(slots[part]))


class _Totals:
    """The run's counts since it (re)started: iterations, bytes the exchanges moved, tile balance, images per
    second; what metrics.json reports of the training loop."""

    def __init__(self, seen: int):
        self.start, self.first = time.perf_counter(), seen
        self.iterations, self.exchanged, self.balance = 0, 0.0, 0.0

    def add(self, stats: dict, seen: int) -> float:
        """Count an iteration's ``stats``; the images per second since the start, ``seen`` images now."""
        self.iterations += 1
        self.exchanged += stats["exchange_bytes"]
        self.balance += stats["balance"]
        return (seen - self.first) / (time.perf_counter() - self.start)

    def timing(self, wait_seconds: float, ctx: DistContext) -> dict:
        """The loop's seconds, per iteration, bytes exchanged and balance per iteration, and every rank's peak
        memory and wait for photos (``wait_seconds`` in all; one all-reduce)."""
        elapsed, iterations = time.perf_counter() - self.start, max(self.iterations, 1)
        return {
            "train_seconds": elapsed,
            "iterations": self.iterations,
            "seconds_per_iteration": elapsed / iterations,
            "exchange_bytes_per_iteration": self.exchanged / iterations,
            "mean_balance": self.balance / iterations,
            **_per_rank_usage(wait_seconds / iterations, ctx),
        }


@contextlib.contextmanager
def _closing(images: GroundTruth, observers: list[Observer]) -> Iterator[None]:
    """Stop the photo prefetcher and close the observers however the run ends."""
    try:
        yield
    finally:
        images.close()
        for o in observers:
            o.close()


def micro_batches(batch_size: int, micro_batch: int) -> list[slice]:
    """The cameras of a batch rendered in each forward and backward pass: ``micro_batch`` at a time (0: all)."""
    step = micro_batch or batch_size
    return [slice(k, min(k + step, batch_size)) for k in range(0, batch_size, step)]


@dataclass
class PassStats:
    """What the statistics of an iteration need from one of its passes, once its buffers are freed: this rank's
    loss and squared error (device scalars), its rasterize seconds (a callable, see
    :class:`~grendel_py.parallel.step.Rendered`), the bytes it sent, and the pass's tile table and assignment."""

    loss: torch.Tensor
    squared: torch.Tensor
    raster_seconds: Callable[[], float]
    bytes_sent: int
    table: TileTable
    assignment: Assignment


def train_pass(shard: Gaussians, batch: Batch, options: StepOptions, ctx: DistContext, densify: Strategy) -> PassStats:
    """Forward and backward over some cameras of a batch (the gradients add up in the shard's ``.grad``, and
    in the exposures' table through ``batch.exposures``), and their densification statistics; what the pass
    rendered is freed when it returns."""
    loss, rendered = batch_loss(shard, batch, options, ctx)
    squared = rendered.squared_error
    rendered.tile_colors, rendered.regions = [], []  # so the backward pass frees the pictures once it has used them
    loss.backward()
    densify.observe(*rendered.statistics(), len(shard))
    return PassStats(
        loss.detach().double(),
        squared,
        rendered.raster_seconds,
        rendered.bytes_sent,
        rendered.table,
        rendered.assignment,
    )


def _batch_stats(
    passes: list[PassStats],
    gts: list,
    n_local: int,
    moved: int,
    stop_flags: list[float],
    requests: float,
    balancer: TileBalancer,
    ctx: DistContext,
) -> tuple[dict, str | None, bool]:
    """Mean loss per image, PSNR of the whole batch, model size, bytes the splat exchanges moved and
    Gaussians moved by a redistribution, summed over ranks, and every rank's rasterize seconds of each pass
    (one all-reduce), which calibrate ``balancer``; the tile assignments' balance (largest over mean work per
    rank, work = intersections + 1 per tile; the mean over passes). And the stop signal the ranks agree on
    (:func:`agreed_signal` of the ``stop_flags`` summed in the same all-reduce), or None; and whether an
    observer on some rank requested the ranks' part (its ``requests``, summed in the same all-reduce)."""
    device = passes[0].loss.device
    pixels = sum(g.shape[0] * g.shape[1] for g in gts)
    seconds = np.zeros((len(passes), ctx.world_size))
    seconds[:, ctx.rank] = [p.raster_seconds() for p in passes]
    device_part = torch.stack([sum(p.loss for p in passes), sum(p.squared for p in passes)])
    sent = [p.bytes_sent for p in passes]
    host_part = torch.tensor([n_local, moved, requests, *stop_flags, *sent, *seconds.flat], dtype=torch.float64)
    values = ctx.reduce(torch.cat([device_part, host_part.to(device)]), "sum").tolist()  # the one host sync
    loss_sum, squared, gaussians, moved_sum, requested = values[:5]
    flags = values[5 : 5 + len(stop_flags)]
    exchanged = values[5 + len(stop_flags) : 5 + len(stop_flags) + len(passes)]
    seconds = np.array(values[5 + len(stop_flags) + len(passes) :]).reshape(len(passes), ctx.world_size)
    for p, moved_bytes, s in zip(passes, exchanged, seconds):
        balancer.observe(p.assignment, p.table, moved_bytes, s)
    stats = {
        "loss": loss_sum / len(gts),
        "psnr": -10.0 * math.log10(max(squared / (3 * pixels), 1e-12)),
        "gaussians": gaussians,
        "exchange_bytes": sum(exchanged),
        "moved_gaussians": moved_sum,
        "balance": sum(p.assignment.balance(balancer.work(p.table)) for p in passes) / len(passes),
    }
    return stats, agreed_signal(flags), requested > 0


def _per_rank_usage(data_seconds: float, ctx: DistContext) -> dict[str, list[float]]:
    """Every rank's peak resident memory (bytes; of the process, since it started), peak device memory on a
    GPU (bytes allocated by torch) and seconds per iteration waiting for photos, in rank order (one all-reduce)."""
    own = [resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024.0, data_seconds]  # ru_maxrss: KiB on Linux
    if ctx.device.type == "cuda":
        own.append(float(torch.cuda.max_memory_allocated(ctx.device)))
    values = torch.zeros(len(own), ctx.world_size, dtype=torch.float64, device=ctx.device)
    values[:, ctx.rank] = torch.tensor(own, dtype=torch.float64)
    names = ["peak_rss_bytes", "data_seconds_per_iteration", "peak_device_bytes"]
    return dict(zip(names, ctx.reduce(values, "sum").tolist()))


def _affinity(shard: Gaussians, scene: Scene, ctx: DistContext):
    """Every training camera's share of visible Gaussians on each rank, [n_cameras, W] (same on every rank)."""
    labels = torch.full((len(shard),), ctx.rank, dtype=torch.int64)
    counts = camera_affinity(shard.means.detach().cpu(), labels, ctx.world_size, scene.train_cameras)
    return normalize_affinity(ctx.reduce(torch.from_numpy(counts), "sum").numpy())


def _pictures_dir(out: Path, images: int) -> Path:
    """Where rank 0 puts the pictures of the distributed work of the evaluation after ``images`` images."""
    return out / "work" / f"{images:08d}"


def _finish(cfg: Config, run: _Run, timing: dict, ctx: DistContext) -> dict:
    """Write model.ply (merged from every rank; and the formats of ``train.export``), renders/ and the
    pictures of the work of the test views, metrics.json and, with exposures, exposures.json; return the
    metrics."""
    out, scene, state = run.out, run.scene, run.state
    model = Gaussians(**{k: v.detach() for k, v in vars(state.shard).items()})
    write_merged(out / FILE_NAMES["ply"], model, ctx)
    for fmt in cfg.train.export:
        write_merged(out / FILE_NAMES[fmt], model, ctx, fmt, cfg.render.antialiased)
    test = None
    if scene.test_cameras:
        pictures = _pictures_dir(out, cfg.train.images)
        with staged_dir(out / "renders", replace=True) if ctx.is_main else contextlib.nullcontext() as renders:
            outputs = EvalOutputs(cfg.train.eval_renders, renders, pictures)
            test = evaluate_sharded(model, run.test_photos, scene.test_cameras, run.options, ctx, outputs=outputs)
    total = torch.tensor([float(len(model))], dtype=torch.float64)
    if ctx.distributed:
        dist.all_reduce(total)
    result = {
        "images": cfg.train.images,
        "world_size": ctx.world_size,
        **timing,
        "num_gaussians": int(total.item()),
        "test": test,
        "config": config_to_dict(cfg),
    }
    if ctx.is_main:
        with atomic_open(out / "metrics.json", "w") as f:
            json.dump(result, f, indent=2)
    if state.exposures is not None and ctx.is_main:
        with atomic_open(out / "exposures.json", "w") as f:  # INRIA's exposure.json: photo name -> [3, 4]
            transforms = state.exposures.transforms.detach().cpu().tolist()
            json.dump({c.name: m for c, m in zip(scene.train_cameras, transforms)}, f, indent=1)
    return result
