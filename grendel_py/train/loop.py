"""Training, read top to bottom: one iteration = one batch of cameras, on one rank or on W.

Each rank owns a spatially compact shard of the Gaussians (with its Adam state and densification
statistics); :func:`grendel_py.dist.step.batch_loss` renders the batch across the ranks and returns this
rank's share of the loss; backward returns every gradient to the owner; each rank steps and densifies its
own shard. With one process the same code runs without a process group.

The run folder (``train.out``) gets the resolved ``config.yaml`` first, TensorBoard scalars under ``tb/``
while training, and at the end ``model.ply`` (one merged file), ``metrics.json`` and ``renders/`` (test views,
render | ground truth). Every file is written atomically, by rank 0 except the merged PLY. Schedules count
images, so the batch size can change freely.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm import tqdm

from grendel_py.config import Config, config_to_dict, save_config
from grendel_py.data.dataset import Scene, scene_from_config
from grendel_py.dist.export import write_merged_ply
from grendel_py.dist.ids import IdAllocator
from grendel_py.dist.runtime import DistContext
from grendel_py.dist.step import batch_loss, region_squared_errors
from grendel_py.errors import InputError
from grendel_py.fileio import atomic_open
from grendel_py.model.densify import DensifyStrategy
from grendel_py.model.gaussians import Gaussians
from grendel_py.model.initialize import initial_gaussians
from grendel_py.model.optim import GaussianOptimizer
from grendel_py.outputs import staged_dir
from grendel_py.train.evaluate import evaluate_sharded
from grendel_py.train.sampler import CameraSampler
from partition.spatial import assign_owners


def train(cfg: Config, ctx: DistContext) -> dict:
    """Train on ``cfg.data`` into the folder ``cfg.train.out``; returns the final metrics (on every rank)."""
    out = _prepare_run_dir(cfg, ctx)
    torch.manual_seed(cfg.seed)
    t = cfg.train
    scene = scene_from_config(cfg.data)
    scene.check_images()
    if not scene.train_cameras:
        raise InputError(scene.source, "scene has no training cameras")
    model = initial_gaussians(cfg.model, scene, cfg.seed)
    owners = assign_owners(model.means, ctx.world_size, cfg.dist.ownership, ids=model.ids)
    shard = model.select(owners == ctx.rank)
    allocate_ids = IdAllocator(int(model.ids.max()) + 1, ctx)
    del model
    optimizer = GaussianOptimizer(shard, cfg.optim, scene.extent, t.batch_size)
    densify = DensifyStrategy(cfg.densify, scene.extent, cfg.seed, cfg.densify.max_gaussians // ctx.world_size)
    sampler = CameraSampler(len(scene.train_cameras), t.batch_size, cfg.seed)
    background = torch.tensor(cfg.render.background)
    images = _ImageCache(scene)

    writer = _writer(out, ctx)
    seen, start = 0, time.perf_counter()
    bar = tqdm(total=t.images, desc="train", unit="img", disable=None if ctx.is_main else True, dynamic_ncols=True)
    try:
        while seen < t.images:
            cameras = [scene.train_cameras[i] for i in sampler.next_batch()]
            sh_degree = min(cfg.model.sh_degree, seen // t.sh_degree_every)
            gts = [images[cam] for cam in cameras]
            loss, rendered = batch_loss(shard, cameras, gts, background, sh_degree, t.lambda_dssim, ctx)
            loss.backward()
            for cam, splats in zip(cameras, rendered.splats):
                densify.observe(splats, splats.means2d.grad, cam.width, cam.height)
            optimizer.update_lr(seen, t.images)
            optimizer.step()
            before, seen = seen, seen + len(cameras)
            densify.step(before, seen, shard, optimizer, allocate_ids)

            stats = _batch_stats(loss, rendered, gts, len(shard), ctx)
            bar.update(len(cameras))
            rate = seen / (time.perf_counter() - start)
            bar.set_postfix(loss=f"{stats['loss']:.4f}", psnr=f"{stats['psnr']:.2f}", n=int(stats["gaussians"]), img_s=f"{rate:.1f}")
            if writer is not None and _crossed(before, seen, t.log_every):
                for key, value in {**stats, "images_per_s": rate}.items():
                    writer.add_scalar(f"train/{key}", value, seen)
            if t.eval_every and _crossed(before, seen, t.eval_every) and seen < t.images and scene.test_cameras:
                metrics = evaluate_sharded(shard, scene, scene.test_cameras, background, ctx)
                if writer is not None:
                    writer.add_scalar("test/psnr", metrics["psnr"], seen)
                    writer.add_scalar("test/ssim", metrics["ssim"], seen)
    finally:
        bar.close()
    elapsed = time.perf_counter() - start
    result = _finish(out, cfg, scene, shard, background, elapsed, ctx)
    if writer is not None:
        if result["test"]:
            writer.add_scalar("test/psnr", result["test"]["psnr"], seen)
            writer.add_scalar("test/ssim", result["test"]["ssim"], seen)
        writer.close()
    return result


def _prepare_run_dir(cfg: Config, ctx: DistContext) -> Path:
    """Check (every rank) and create (rank 0) the run folder; rank 0 saves the resolved config."""
    if not cfg.train.out:
        raise InputError(None, "train.out is not set: give the run's output folder, e.g. train.out=runs/demo")
    out = Path(cfg.train.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError(out, "output folder exists and is not empty; choose a new path")
    if ctx.distributed:
        dist.barrier()  # every rank has seen the folder empty before rank 0 fills it
    if ctx.is_main:
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise InputError(out, f"cannot create output folder: {e.strerror}") from None
        save_config(cfg, out / "config.yaml")
    return out


def _writer(out: Path, ctx: DistContext):
    """TensorBoard writer on rank 0, None elsewhere."""
    if not ctx.is_main:
        return None
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(out / "tb"))


class _ImageCache:
    """Ground-truth images, loaded (decoded, undistorted, downscaled) once per camera."""

    def __init__(self, scene: Scene):
        self.scene, self.cache = scene, {}

    def __getitem__(self, camera) -> torch.Tensor:
        if camera.uid not in self.cache:
            self.cache[camera.uid] = self.scene.load_image(camera)
        return self.cache[camera.uid]


def _batch_stats(loss: torch.Tensor, rendered, gts: list[torch.Tensor], n_local: int, ctx: DistContext) -> dict:
    """Mean loss per image, PSNR of the whole batch and the model size, summed over ranks (one all-reduce)."""
    sums = region_squared_errors(rendered, gts).sum()
    pixels = sum(g.shape[0] * g.shape[1] for g in gts)
    values = torch.tensor([float(loss.detach()), float(sums), float(n_local)], dtype=torch.float64)
    if ctx.distributed:
        dist.all_reduce(values)
    mse = float(values[1]) / (3 * pixels)
    psnr = -10.0 * torch.log10(torch.tensor(max(mse, 1e-12))).item()
    return {"loss": float(values[0]) / len(gts), "psnr": psnr, "gaussians": float(values[2])}


def _crossed(before: int, after: int, every: int) -> bool:
    """True when a multiple of ``every`` lies in (before, after]."""
    return after // every > before // every


def _finish(out: Path, cfg: Config, scene: Scene, shard: Gaussians, background, elapsed: float, ctx: DistContext) -> dict:
    """Write model.ply (merged from every rank), renders/ and metrics.json; return the metrics."""
    model = Gaussians(**{k: v.detach() for k, v in vars(shard).items()})
    write_merged_ply(out / "model.ply", model, ctx)
    test = None
    if scene.test_cameras:
        if ctx.is_main:
            with staged_dir(out / "renders") as renders:
                test = evaluate_sharded(model, scene, scene.test_cameras, background, ctx, renders, cfg.train.eval_renders)
        else:
            test = evaluate_sharded(model, scene, scene.test_cameras, background, ctx, None, cfg.train.eval_renders)
    total = torch.tensor([float(len(model))], dtype=torch.float64)
    if ctx.distributed:
        dist.all_reduce(total)
    result = {
        "images": cfg.train.images,
        "world_size": ctx.world_size,
        "train_seconds": elapsed,
        "num_gaussians": int(total.item()),
        "test": test,
        "config": config_to_dict(cfg),
    }
    if ctx.is_main:
        with atomic_open(out / "metrics.json", "w") as f:
            json.dump(result, f, indent=2)
    return result
