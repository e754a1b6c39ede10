"""Single-process training: read top to bottom, one iteration = one batch of cameras.

The run folder (``train.out``) gets the resolved ``config.yaml`` first, TensorBoard scalars under ``tb/``
while training, and at the end ``model.ply``, ``metrics.json`` and ``renders/`` (test views, render | ground
truth). Every file is written atomically. Schedules count images, so the batch size can change freely.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from tqdm import tqdm

from grendel_py.config import Config, config_to_dict, save_config
from grendel_py.data.dataset import Scene, load_scene
from grendel_py.errors import InputError
from grendel_py.fileio import atomic_open
from grendel_py.model.densify import DensifyStrategy
from grendel_py.model.gaussians import Gaussians
from grendel_py.model.initialize import initial_gaussians
from grendel_py.model.optim import GaussianOptimizer
from grendel_py.model.ply import write_ply
from grendel_py.outputs import staged_dir
from grendel_py.render import render
from grendel_py.train.evaluate import evaluate
from grendel_py.train.loss import photometric_loss
from grendel_py.train.metrics import psnr
from grendel_py.train.sampler import CameraSampler


def train(cfg: Config) -> dict:
    """Train on ``cfg.data`` into the folder ``cfg.train.out``; returns the final metrics."""
    out = _prepare_run_dir(cfg)
    torch.manual_seed(cfg.seed)
    d = cfg.data
    scene = load_scene(d.path, downscale=d.downscale, test_every=d.test_every, images_dir=d.images_dir)
    scene.check_images()
    if not scene.train_cameras:
        raise InputError(scene.source, "scene has no training cameras")
    gaussians = initial_gaussians(cfg.model, scene, cfg.seed)
    optimizer = GaussianOptimizer(gaussians, cfg.optim, scene.extent, cfg.train.batch_size)
    densify = DensifyStrategy(cfg.densify, scene.extent, torch.Generator().manual_seed(cfg.seed + 1))
    sampler = CameraSampler(len(scene.train_cameras), cfg.train.batch_size, cfg.seed)
    background = torch.tensor(cfg.render.background)
    allocate_ids = _id_allocator(gaussians)
    images = _ImageCache(scene)

    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(out / "tb"))
    t = cfg.train
    seen, start = 0, time.perf_counter()
    bar = tqdm(total=t.images, desc="train", unit="img", disable=None, dynamic_ncols=True)
    try:
        while seen < t.images:
            cameras = [scene.train_cameras[i] for i in sampler.next_batch()]
            sh_degree = min(cfg.model.sh_degree, seen // t.sh_degree_every)
            loss_sum, batch_psnr, views = _batch_loss(gaussians, cameras, images, background, sh_degree, cfg)
            loss_sum.backward()
            loss = loss_sum.detach() / len(cameras)
            for cam, splats in views:
                densify.observe(splats, splats.means2d.grad, cam.width, cam.height)
            optimizer.update_lr(seen, t.images)
            optimizer.step()
            before, seen = seen, seen + len(cameras)
            densify.step(before, seen, gaussians, optimizer, allocate_ids)

            bar.update(len(cameras))
            rate = seen / (time.perf_counter() - start)
            bar.set_postfix(loss=f"{loss.item():.4f}", psnr=f"{batch_psnr:.2f}", n=len(gaussians), img_s=f"{rate:.1f}")
            if _crossed(before, seen, t.log_every):
                _log_scalars(writer, seen, loss.item(), batch_psnr, len(gaussians), rate)
            if t.eval_every and _crossed(before, seen, t.eval_every) and seen < t.images and scene.test_cameras:
                metrics = evaluate(gaussians, scene, scene.test_cameras, background, cfg.render.backend)
                writer.add_scalar("test/psnr", metrics["psnr"], seen)
                writer.add_scalar("test/ssim", metrics["ssim"], seen)
    finally:
        bar.close()
    elapsed = time.perf_counter() - start
    result = _finish(out, cfg, scene, gaussians, background, elapsed)
    if result["test"]:
        writer.add_scalar("test/psnr", result["test"]["psnr"], seen)
        writer.add_scalar("test/ssim", result["test"]["ssim"], seen)
    writer.close()
    return result


def _prepare_run_dir(cfg: Config) -> Path:
    if not cfg.train.out:
        raise InputError(None, "train.out is not set: give the run's output folder, e.g. train.out=runs/demo")
    out = Path(cfg.train.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError(out, "output folder exists and is not empty; choose a new path")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(out, f"cannot create output folder: {e.strerror}") from None
    save_config(cfg, out / "config.yaml")
    return out


class _ImageCache:
    """Ground-truth images, loaded (decoded, undistorted, downscaled) once per camera."""

    def __init__(self, scene: Scene):
        self.scene, self.cache = scene, {}

    def __getitem__(self, camera) -> torch.Tensor:
        if camera.uid not in self.cache:
            self.cache[camera.uid] = self.scene.load_image(camera)
        return self.cache[camera.uid]


def _id_allocator(gaussians: Gaussians):
    """Fresh global ids for new Gaussians: one past the largest id ever handed out."""
    state = {"next": int(gaussians.ids.max()) + 1 if len(gaussians) else 0}

    def allocate(n: int) -> torch.Tensor:
        ids = torch.arange(state["next"], state["next"] + n, dtype=torch.int64)
        state["next"] += n
        return ids

    return allocate


def _batch_loss(gaussians, cameras, images, background, sh_degree, cfg: Config):
    """The loss summed over the batch's cameras (so each camera's splats get the gradient of its own image,
    which densification thresholds expect; Adam is blind to the scale), the batch's mean PSNR, and each
    camera's splats with their means2d gradients kept."""
    total, psnrs, views = 0.0, [], []
    for cam in cameras:
        out = render(gaussians, cam, background, sh_degree=sh_degree, backend=cfg.render.backend)
        out.splats.means2d.retain_grad()
        gt = images[cam]
        total = total + photometric_loss(out.image, gt, cfg.train.lambda_dssim)
        psnrs.append(psnr(out.image.detach(), gt))
        views.append((cam, out.splats))
    return total, sum(psnrs) / len(psnrs), views


def _crossed(before: int, after: int, every: int) -> bool:
    """True when a multiple of ``every`` lies in (before, after]."""
    return after // every > before // every


def _log_scalars(writer, seen: int, loss: float, batch_psnr: float, n: int, rate: float) -> None:
    writer.add_scalar("train/loss", loss, seen)
    writer.add_scalar("train/psnr", batch_psnr, seen)
    writer.add_scalar("train/num_gaussians", n, seen)
    writer.add_scalar("train/images_per_s", rate, seen)


def _finish(out: Path, cfg: Config, scene: Scene, gaussians: Gaussians, background, elapsed: float) -> dict:
    """Write model.ply, renders/ and metrics.json (each atomically) and return the metrics."""
    model = Gaussians(**{k: v.detach() for k, v in vars(gaussians).items()})
    write_ply(out / "model.ply", model)
    test = None
    if scene.test_cameras:
        with staged_dir(out / "renders") as renders:
            test = evaluate(model, scene, scene.test_cameras, background, cfg.render.backend, renders, cfg.train.eval_renders)
    result = {
        "images": cfg.train.images,
        "train_seconds": elapsed,
        "num_gaussians": len(model),
        "test": test,
        "config": config_to_dict(cfg),
    }
    with atomic_open(out / "metrics.json", "w") as f:
        json.dump(result, f, indent=2)
    return result
