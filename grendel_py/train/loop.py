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
With ``train.viewer_port``, rank 0 serves a browser viewer (:mod:`grendel_py.viewer`); whether a browser is
connected rides in the step's statistics all-reduce, and only then do the ranks gather a budgeted selection
of their shards (:mod:`grendel_py.view_splats`), every ``train.viewer_every`` images and when one connects.
"""

from __future__ import annotations

import contextlib
import json
import math
import resource
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from grendel_py.config import Config, config_to_dict, save_config
from grendel_py.data.dataset import Scene, scene_from_config
from grendel_py.data.photo_cache import photo_cache
from grendel_py.errors import InputError
from grendel_py.fileio import atomic_open, ensure_folder, os_problem
from grendel_py.model.densify import Strategy, densify_strategy
from grendel_py.model.exposure import Exposures
from grendel_py.model.gaussians import Gaussians
from grendel_py.model.initialize import initial_gaussians
from grendel_py.model.optim import GaussianOptimizer
from grendel_py.model.splat_formats import FILE_NAMES
from grendel_py.outputs import staged_dir
from grendel_py.parallel.export import write_merged
from grendel_py.parallel.ids import IdAllocator
from grendel_py.parallel.redistribute import redistribute, should_redistribute
from grendel_py.parallel.runtime import DistContext
from grendel_py.parallel.step import batch_loss, region_squared_errors
from grendel_py.render import resolve_backend
from grendel_py.train.checkpoint import (
    MANIFEST,
    Manifest,
    complete_checkpoints,
    interrupted_checkpoints,
    load_replicated,
    load_shards,
    run_dir_of,
    save_checkpoint,
)
from grendel_py.train.evaluate import evaluate_sharded
from grendel_py.train.images import GroundTruth, Photo, random_backgrounds
from grendel_py.train.preempt import Preempted, StopSignals, agreed_signal
from grendel_py.train.sampler import CameraSampler, camera_affinity, normalize_affinity
from grendel_py.view_splats import gather_view_splats
from grendel_py.viewer import Viewer
from partition.assign import Assignment, TileTable
from partition.balancer import TileBalancer


def train(cfg: Config, ctx: DistContext, resume: Manifest | None = None, restart: bool = False) -> dict:
    """Train on ``cfg.data`` into the folder ``cfg.train.out`` (fresh, or continuing from the checkpoint
    ``resume`` of that folder); returns the final metrics (on every rank). ``restart``: a fresh run may
    replace what an earlier attempt left in the folder before its first checkpoint (``--auto-resume``).

    SIGTERM, SIGUSR1 or SIGINT (Ctrl-C) stop the run after the current iteration with a checkpoint:
    :class:`Preempted`.
    Bad input raises :class:`InputError` on every rank before the run folder is created."""
    backend = resolve_backend(cfg.render.backend, ctx.device)
    out = _check_run_dir(cfg, resume, restart)
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
    optimizer, densify, exposures, sampler, allocate_ids, seen = _initial_state(cfg, scene, resume, ctx)
    _create_run_dir(out, cfg, resume, ctx)
    shard = optimizer.gaussians
    background = torch.tensor(cfg.render.background, device=ctx.device)
    images = GroundTruth(photos, ctx.device, background)
    # read outside the step: not counted as waiting for data
    test_photos = GroundTruth(photos, ctx.device, background).photo
    d = cfg.dist
    balancer = TileBalancer(d.assignment, ctx.world_size, d.tolerance, d.link_gbps * 1e9 / 8, calibrate=d.calibrate)
    if d.batch_sampling == "owner-aware":
        sampler.set_affinity(_affinity(shard, scene, ctx))

    writer = _writer(out, seen, ctx)
    viewer = Viewer(t.viewer_port, scene.train_cameras) if t.viewer_port and ctx.is_main else None
    was_watched = False
    start, first, iterations, exchanged, balance = time.perf_counter(), seen, 0, 0.0, 0.0
    bar = tqdm(
        total=t.images,
        initial=seen,
        desc="train",
        unit="img",
        disable=None if ctx.is_main else True,
        dynamic_ncols=True,
    )
    with StopSignals() as stop, _closing(bar, writer, images, viewer):
        while seen < t.images:
            tic, waited = time.perf_counter(), images.wait_seconds
            slots = sampler.next_batch()  # the photos' indices among the training cameras
            cameras = [scene.train_cameras[i] for i in slots]
            sh_degree = min(cfg.model.sh_degree, seen // t.sh_degree_every)
            backgrounds = (
                random_backgrounds(cfg.seed, seen, len(cameras), ctx.device) if cfg.render.random_background else None
            )
            gts = images.batch(cameras, backgrounds)
            if seen + len(cameras) < t.images:  # the next batch's photos travel while this one computes
                images.prefetch([scene.train_cameras[i] for i in sampler.peek_batch()])
            passes = [
                train_pass(
                    shard,
                    cameras[part],
                    gts[part],
                    background if backgrounds is None else backgrounds[part],
                    sh_degree,
                    t.lambda_dssim,
                    ctx,
                    balancer,
                    backend,
                    densify,
                    cfg.render.antialiased,
                    None if exposures is None else exposures.of(slots[part]),
                )
                for part in micro_batches(len(cameras), t.micro_batch)
            ]
            densify.regularise(shard, len(cameras))
            optimizer.update_lr(seen, t.images)
            optimizer.step()
            if exposures is not None:
                exposures.step(slots, seen, t.images, ctx.reduce)
            before, seen = seen, seen + len(cameras)
            events = densify.step(before, seen, shard, optimizer, allocate_ids)
            if events["densified"] and should_redistribute(len(shard), cfg.dist.rebalance_threshold, ctx):
                events["moved"] = redistribute(optimizer, densify, cfg.dist.ownership, ctx)
                if d.batch_sampling == "owner-aware":
                    sampler.set_affinity(_affinity(shard, scene, ctx))
            checkpoint = None
            if t.checkpoint_every and (_crossed(before, seen, t.checkpoint_every) or seen >= t.images):
                checkpoint = save_checkpoint(
                    out,
                    seen,
                    optimizer,
                    densify,
                    sampler.state_dict(),
                    allocate_ids.next_id,
                    t.keep_checkpoints,
                    ctx,
                    _replicated(exposures),
                )

            # rank 0 tells the others in the stats' all-reduce
            watched = float(viewer is not None and viewer.clients > 0)
            stats, stopping, watched = _batch_stats(
                passes, gts, len(shard), events.get("moved", 0), stop.flags(), watched, balancer, ctx
            )
            stats["step_seconds"] = time.perf_counter() - tic
            if watched and (not was_watched or _crossed(before, seen, t.viewer_every)):  # a new browser sees it at once
                splats = gather_view_splats(shard, int(stats["gaussians"]), t.viewer_budget, ctx)  # every rank
                if viewer is not None:
                    viewer.show_model(splats)
            was_watched = watched
            if viewer is not None and watched:
                viewer.show_batch([c.uid for c in cameras])
                viewer.show_scalars(
                    {"images": seen, "gaussians": stats["gaussians"], "loss": stats["loss"], "psnr": stats["psnr"]}
                )
            stats["data_seconds"] = images.wait_seconds - waited  # this rank's wait for photos
            iterations, exchanged, balance = (
                iterations + 1,
                exchanged + stats["exchange_bytes"],
                balance + stats["balance"],
            )
            bar.update(len(cameras))
            rate = (seen - first) / (time.perf_counter() - start)
            bar.set_postfix(_postfix(stats, rate, ctx))
            if writer is not None:
                if _crossed(before, seen, t.log_every):
                    for key, value in {**stats, "images_per_s": rate}.items():
                        writer.add_scalar(f"train/{key}", value, seen)
                if "moved" in events:
                    writer.add_scalar("dist/moved_gaussians", stats["moved_gaussians"], seen)
            if stopping:  # every rank saw the stop signals' flags in the same all-reduce
                if checkpoint is None:
                    checkpoint = save_checkpoint(
                        out,
                        seen,
                        optimizer,
                        densify,
                        sampler.state_dict(),
                        allocate_ids.next_id,
                        t.keep_checkpoints,
                        ctx,
                        _replicated(exposures),
                    )
                raise Preempted(stopping, seen, checkpoint, "" if stopping == stop.received else "on another rank")
            if t.eval_every and _crossed(before, seen, t.eval_every) and seen < t.images and scene.test_cameras:
                metrics = evaluate_sharded(
                    shard,
                    test_photos,
                    scene.test_cameras,
                    background,
                    ctx,
                    None,
                    t.eval_renders,
                    backend,
                    cfg.render.antialiased,
                    pictures_dir=_pictures_dir(out, seen),
                )
                if writer is not None:
                    writer.add_scalar("test/psnr", metrics["psnr"], seen)
                    writer.add_scalar("test/ssim", metrics["ssim"], seen)
                if viewer is not None:
                    viewer.show_work(_pictures_dir(out, seen), seen)
    elapsed = time.perf_counter() - start
    timing = {
        "train_seconds": elapsed,
        "iterations": iterations,
        "seconds_per_iteration": elapsed / max(iterations, 1),
        "exchange_bytes_per_iteration": exchanged / max(iterations, 1),
        "mean_balance": balance / max(iterations, 1),
        **_per_rank_usage(images.wait_seconds / max(iterations, 1), ctx),
    }
    result = _finish(out, cfg, scene, test_photos, shard, background, backend, timing, ctx)
    if exposures is not None and ctx.is_main:
        with atomic_open(out / "exposures.json", "w") as f:  # INRIA's exposure.json: photo name -> [3, 4]
            json.dump(
                {c.name: m for c, m in zip(scene.train_cameras, exposures.transforms.detach().cpu().tolist())},
                f,
                indent=1,
            )
    if writer is not None:
        if result["test"]:
            writer.add_scalar("test/psnr", result["test"]["psnr"], seen)
            writer.add_scalar("test/ssim", result["test"]["ssim"], seen)
        writer.close()
    return result


@contextlib.contextmanager
def _closing(bar: tqdm, writer, images: GroundTruth, viewer: Viewer | None) -> Iterator[None]:
    """Close the progress bar, stop the photo prefetcher and the viewer and flush the TensorBoard writer
    however the loop ends."""
    try:
        yield
    finally:
        bar.close()
        images.close()
        if viewer is not None:
            viewer.close()
        if writer is not None:
            writer.flush()


def _initial_state(cfg: Config, scene: Scene, resume: Manifest | None, ctx: DistContext):
    """(optimizer over this rank's shard, densification, exposures (None without ``optim.exposure_lr``),
    camera sampler, id allocator, images seen): from the initial Gaussians of the scene, or from the
    checkpoint ``resume`` (on any number of ranks; exposures start at the identity when it has none)."""
    densify = densify_strategy(cfg.densify, scene.extent, cfg.seed, ctx.reduce)
    exposures = (
        Exposures(len(scene.train_cameras), cfg.optim.exposure_lr, ctx.device) if cfg.optim.exposure_lr > 0 else None
    )
    sampler = CameraSampler(len(scene.train_cameras), cfg.train.batch_size, cfg.seed)
    if resume is None:
        model = initial_gaussians(cfg.model, scene, cfg.seed)
        if len(model) < ctx.world_size:
            raise InputError(
                scene.source,
                f"the initial model has {len(model)} Gaussians, fewer than the {ctx.world_size} ranks: "
                "use fewer ranks, or more points (model.init=random model.random_points=N)",
            )
        # redistributed below
        shard = model.select(torch.arange(len(model)) % ctx.world_size == ctx.rank).to(ctx.device)
        allocate_ids, seen = IdAllocator(int(model.ids.max()) + 1, ctx), 0
        del model
    else:
        where = resume.folder / MANIFEST
        if resume.sh_degree != cfg.model.sh_degree:
            raise InputError(where, f"checkpoint has SH degree {resume.sh_degree}, the config {cfg.model.sh_degree}")
        if sum(resume.shard_sizes) < ctx.world_size:
            raise InputError(
                where, f"checkpoint holds {sum(resume.shard_sizes)} Gaussians, fewer than the {ctx.world_size} ranks"
            )
        if any(i >= len(scene.train_cameras) for i in resume.sampler["order"]):
            raise InputError(where, "checkpoint was made on a scene with more training cameras than this one")
        loaded = load_shards(resume, ctx)
        shard = Gaussians(**loaded["optimizer"]["params"], ids=loaded["optimizer"]["ids"]).to(ctx.device)
        sampler.load_state_dict(resume.sampler)
        allocate_ids, seen = IdAllocator(resume.next_id, ctx), resume.images_seen
    optimizer = GaussianOptimizer(shard, cfg.optim, scene.extent, cfg.train.batch_size)
    if resume is not None:
        optimizer.load_state_dict(loaded["optimizer"])  # onto the shard's device
        densify.load_state_dict({k: v.to(ctx.device) for k, v in loaded["densify"].items()})
        saved = load_replicated(resume).get("exposures")
        if exposures is not None and saved is not None:
            exposures.load_state_dict(saved)
    if resume is None or resume.world_size != ctx.world_size:
        redistribute(optimizer, densify, cfg.dist.ownership, ctx)
    return optimizer, densify, exposures, sampler, allocate_ids, seen


def _replicated(exposures: Exposures | None) -> dict:
    """What a checkpoint saves once for all ranks."""
    return {} if exposures is None else {"exposures": exposures.state_dict()}


_LEFTOVERS = {"config.yaml", "tb", "checkpoints"}  # what a run writes before its first complete checkpoint


def _check_run_dir(cfg: Config, resume: Manifest | None, restart: bool) -> Path:
    """The run folder ``cfg.train.out``, checked (every rank, before any work): a fresh run needs it absent or
    empty (or, with ``restart``, holding only an earlier attempt's leftovers); a resumed run, the
    checkpoint's own folder."""
    if not cfg.train.out:
        raise InputError(None, "train.out is not set: give the run's output folder, e.g. train.out=runs/demo")
    out = Path(cfg.train.out)
    if resume is None and out.exists():
        if not out.is_dir():
            raise InputError(out, "output folder is a file; choose a new path")
        found = {p.name for p in out.iterdir()}
        if found and not (restart and found <= _LEFTOVERS):
            raise InputError(out, "output folder exists and is not empty; choose a new path (or --resume it)")
    if resume is not None and run_dir_of(resume).resolve() != out.resolve():
        raise InputError(out, f"train.out must be the folder of the checkpoint {resume.folder}")
    return out


def _create_run_dir(out: Path, cfg: Config, resume: Manifest | None, ctx: DistContext) -> None:
    """Rank 0 creates the run folder and saves the resolved config; a fresh run clears an earlier attempt's
    leftovers, a resumed one removes checkpoints newer than its own and interrupted ones. Every rank raises
    the same InputError when rank 0 cannot write there."""
    if ctx.distributed:
        dist.barrier()  # every rank has checked the folder before rank 0 changes it
    problem: InputError | None = None
    if ctx.is_main:
        created = not out.exists()
        try:
            ensure_folder(out)
            if resume is None:
                for name in ("tb", "checkpoints"):
                    shutil.rmtree(out / name, ignore_errors=True)
            else:
                for later in complete_checkpoints(out):
                    if later.images_seen > resume.images_seen:
                        shutil.rmtree(later.folder)
                for folder in interrupted_checkpoints(out):
                    shutil.rmtree(folder)
            save_config(cfg, out / "config.yaml")
        except InputError as e:
            problem = e
        except OSError as e:
            problem = InputError(out, f"cannot write the run folder: {os_problem(e, out)}")
        if problem and created:
            shutil.rmtree(out, ignore_errors=True)
    failed = ctx.reduce(torch.tensor([float(bool(problem))]), "max")
    if float(failed) > 0:
        raise problem or InputError(out, "rank 0 cannot write the run folder")


def _writer(out: Path, seen: int, ctx: DistContext):
    """TensorBoard writer on rank 0 (events after ``seen`` images, from a run that stopped, are dropped);
    None elsewhere."""
    if not ctx.is_main:
        return None
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(out / "tb"), purge_step=seen + 1)


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


def train_pass(
    shard: Gaussians,
    cameras: list,
    gts: list[Photo],
    background: torch.Tensor,
    sh_degree: int,
    lambda_dssim: float,
    ctx: DistContext,
    balancer: TileBalancer,
    backend: str,
    densify: Strategy,
    antialiased: bool = False,
    exposures: torch.Tensor | None = None,
) -> PassStats:
    """Forward and backward over some cameras of the batch (the gradients add up in the shard's ``.grad``,
    and in the exposures' table through ``exposures`` [B, 3, 4]), and their densification statistics; what
    the pass rendered is freed when it returns. ``background``: [3], or [B, 3] one per camera."""
    loss, rendered = batch_loss(
        shard, cameras, gts, background, sh_degree, lambda_dssim, ctx, balancer, backend, antialiased, exposures
    )
    squared = region_squared_errors(rendered, gts).sum()
    rendered.tile_colors, rendered.regions = [], []  # so the backward pass frees the pictures once it has used them
    loss.backward()
    for radii, grad_norms, rows in rendered.per_camera():
        densify.observe(radii, grad_norms, rows, len(shard))
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
    gts: list[Photo],
    n_local: int,
    moved: int,
    stop_flags: list[float],
    watched: float,
    balancer: TileBalancer,
    ctx: DistContext,
) -> tuple[dict, str | None]:
    """Mean loss per image, PSNR of the whole batch, model size, bytes the splat exchanges moved and
    Gaussians moved by a redistribution, summed over ranks, and every rank's rasterize seconds of each pass
    (one all-reduce), which calibrate ``balancer``; the tile assignments' balance (largest over mean work per
    rank, work = intersections + 1 per tile; the mean over passes). And the stop signal the ranks agree on
    (:func:`agreed_signal` of the ``stop_flags`` summed in the same all-reduce), or None; and whether a
    browser watches rank 0's viewer (``watched``, summed in the same all-reduce)."""
    device = passes[0].loss.device
    pixels = sum(g.shape[0] * g.shape[1] for g in gts)
    seconds = np.zeros((len(passes), ctx.world_size))
    seconds[:, ctx.rank] = [p.raster_seconds() for p in passes]
    device_part = torch.stack([sum(p.loss for p in passes), sum(p.squared for p in passes)])
    sent = [p.bytes_sent for p in passes]
    host_part = torch.tensor([n_local, moved, watched, *stop_flags, *sent, *seconds.flat], dtype=torch.float64)
    values = ctx.reduce(torch.cat([device_part, host_part.to(device)]), "sum").tolist()  # the one host sync
    loss_sum, squared, gaussians, moved_sum, watched = values[:5]
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
    return stats, agreed_signal(flags), watched > 0


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


def _postfix(stats: dict, rate: float, ctx: DistContext) -> dict:
    """The progress bar's fields."""
    shown = {"loss": f"{stats['loss']:.4f}", "psnr": f"{stats['psnr']:.2f}", "n": int(stats["gaussians"])}
    if ctx.distributed:
        shown["xfer"] = f"{stats['exchange_bytes'] / 2**20:.2f}MiB"
        shown["bal"] = f"{stats['balance']:.2f}"
    shown["img_s"] = f"{rate:.1f}"
    return shown


def _crossed(before: int, after: int, every: int) -> bool:
    """True when a multiple of ``every`` lies in (before, after]."""
    return after // every > before // every


def _pictures_dir(out: Path, images: int) -> Path:
    """Where rank 0 puts the pictures of the distributed work of the evaluation after ``images`` images."""
    return out / "work" / f"{images:08d}"


def _finish(
    out: Path,
    cfg: Config,
    scene: Scene,
    photos,
    shard: Gaussians,
    background,
    backend: str,
    timing: dict,
    ctx: DistContext,
) -> dict:
    """Write model.ply (merged from every rank), renders/ and metrics.json (the test views' ``photos`` from
    the photo cache); return the metrics."""
    model = Gaussians(**{k: v.detach() for k, v in vars(shard).items()})
    write_merged(out / FILE_NAMES["ply"], model, ctx)
    for fmt in cfg.train.export:
        write_merged(out / FILE_NAMES[fmt], model, ctx, fmt, cfg.render.antialiased)
    test = None
    if scene.test_cameras:
        pictures = _pictures_dir(out, cfg.train.images)
        if ctx.is_main:
            with staged_dir(out / "renders", replace=True) as renders:
                test = evaluate_sharded(
                    model,
                    photos,
                    scene.test_cameras,
                    background,
                    ctx,
                    renders,
                    cfg.train.eval_renders,
                    backend,
                    cfg.render.antialiased,
                    pictures_dir=pictures,
                )
        else:
            test = evaluate_sharded(
                model,
                photos,
                scene.test_cameras,
                background,
                ctx,
                None,
                cfg.train.eval_renders,
                backend,
                cfg.render.antialiased,
                pictures_dir=pictures,
            )
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
    return result
