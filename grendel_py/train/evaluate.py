"""Evaluation: render cameras, compare with their photos (PSNR, SSIM), optionally save side-by-side PNGs."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.distributed as dist
from tqdm import tqdm

from grendel_py.config import Config
from grendel_py.data.cameras import Camera
from grendel_py.data.dataset import Scene, over_background, scene_from_config
from grendel_py.data.photo_cache import photo_cache
from grendel_py.errors import InputError
from grendel_py.loss.pixels import HALO
from grendel_py.loss.regions import expose_region, ground_truth_region, squared_error_sums, ssim_sums
from grendel_py.model.exposure import exposure_moments, fit_exposure
from grendel_py.model.gaussians import Gaussians
from grendel_py.model.ply import read_ply
from grendel_py.outputs import save_png
from grendel_py.parallel.runtime import DistContext, single_process
from grendel_py.parallel.step import Batch, StepOptions, render_batch
from grendel_py.pictures import save_boxes, save_picture, shard_boxes, shard_picture, tile_picture
from grendel_py.train.images import GroundTruth, to_float, to_uint8
from partition.tiles import TileGrid

Split = Literal["test", "train", "all"]
Exposure = Literal["identity", "fit-left"]


@dataclass(frozen=True)
class EvalOutputs:
    """What an evaluation writes besides its metrics: the first ``renders`` views as "render | photo" PNGs
    into ``renders_dir`` (only rank 0 needs it; None: none written) and, with ``pictures_dir`` (given on every
    rank or on none: the shard boxes are gathered from every rank; only rank 0 writes), the pictures of the
    distributed work of those views (see :func:`evaluate_sharded`)."""

    renders: int = 0
    renders_dir: Path | None = None
    pictures_dir: Path | None = None


def evaluate(
    gaussians: Gaussians,
    scene: Scene,
    cameras: list[Camera],
    background: torch.Tensor,
    renders_dir: Path | None = None,
    max_renders: int = 0,
    antialiased: bool = False,
) -> dict[str, Any]:
    """PSNR and SSIM of ``gaussians`` (all in this process) rendered from each of ``cameras`` (non-empty)
    against its photo (composited over ``background`` where it has alpha): :func:`evaluate_sharded` on a
    single process.

    Returns {"views": [{"name", "uid", "psnr", "ssim"}, ...], "psnr": mean, "ssim": mean, "count": n}. With
    ``renders_dir``, the first ``max_renders`` views are saved there as "render | ground truth" PNGs
    [H, 2W] named ``{uid:05d}_{stem}.png``.
    """

    def photo(camera: Camera) -> torch.Tensor:  # the 8-bit photo, as in training
        return over_background(to_float(to_uint8(scene.load_image(camera)).to(gaussians.device)), background)

    options = StepOptions(background, antialiased=antialiased)
    return evaluate_sharded(
        gaussians, photo, cameras, options, single_process(), outputs=EvalOutputs(max_renders, renders_dir)
    )


def run_eval(
    model_path: str | Path, cfg: Config, split: Split = "test", exposure: Exposure = "identity"
) -> dict[str, Any]:
    """Evaluate the PLY model at ``model_path`` on the ``split`` cameras of the scene ``cfg.data``, rendered
    with ``cfg.render``, against the photos read through the photo cache (``cfg.data.cache_dir``), as training
    reads them: each decoded once per node, then only the rendered regions read; ``exposure``: see
    :func:`evaluate_sharded`. InputError when the split has no cameras."""
    scene = scene_from_config(cfg.data)
    cameras = {"test": scene.test_cameras, "train": scene.train_cameras, "all": scene.cameras}[split]
    if not cameras:
        raise InputError(scene.source, f"scene has no {split} cameras; use --split all or data.test_every")
    gaussians = read_ply(model_path)
    background = torch.tensor(cfg.render.background, dtype=torch.float32)
    photos = GroundTruth(photo_cache(cfg.data, scene), gaussians.device, background)
    try:
        options = StepOptions(background, antialiased=cfg.render.antialiased)
        return evaluate_sharded(gaussians, photos.photo, cameras, options, single_process(), exposure)
    finally:
        photos.close()


def evaluate_sharded(
    shard: Gaussians,
    photos: Callable[[Camera], Any],
    cameras: list[Camera],
    options: StepOptions,
    ctx: DistContext,
    exposure: Exposure = "identity",
    outputs: EvalOutputs = EvalOutputs(),
) -> dict[str, Any]:
    """:func:`evaluate` for a model sharded over the ranks of ``ctx`` (call on every rank; every rank gets the
    result), rendered as ``options`` say (its backend, antialiasing, background). ``photos(camera)`` is the
    camera's photo as float32 in [0, 1] on the model's device, or anything that gives its pixels when sliced
    ``[y0:y1, x0:x1]`` and has a ``shape`` (a :class:`~grendel_py.train.images.Photo`, so a rank reads only its
    regions). Each rank renders its tiles of each view; squared errors and SSIM sums over its pixels are
    all-reduced; the first ``outputs.renders`` views are gathered on rank 0, which saves them into
    ``outputs.renders_dir`` and, with ``outputs.pictures_dir``, the pictures of the distributed work there:
    for each of those views, which rank rasterized each tile and each rank's work
    (``{uid:05d}_{stem}_tiles.png``), and for the first one the shards' boxes (``shards.png``,
    ``shards.json``; see :mod:`grendel_py.pictures`).

    ``exposure``: how a view's colours are compared. ``identity``: as rendered (test photos have no learned
    exposure). ``fit-left``: INRIA's ``train_test_exp`` split of each view: an affine colour transform is
    fitted (least squares, closed form, summed over ranks) on the left half of the image, W // 2 columns,
    and the metrics are over the right half only, through that transform (INRIA learns the transform while
    training on the left halves of the test photos; here the model never sees them)."""
    if not cameras:
        raise ValueError("evaluate: no cameras given")
    views = []
    pictures_dir = outputs.pictures_dir
    # every rank takes part
    boxes = shard_boxes(shard, ctx) if outputs.renders > 0 and pictures_dir is not None else None
    with torch.no_grad():
        for i, cam in enumerate(
            tqdm(cameras, desc="eval", unit="view", disable=None if ctx.is_main else True, leave=False)
        ):
            gt = photos(cam)
            rendered = render_batch(shard, Batch([cam], None, shard.sh_degree), options, ctx)
            n = cam.width * cam.height
            if exposure == "fit-left":
                _fit_left_half(rendered, gt, cam, ctx)
                n = cam.height * (cam.width - cam.width // 2)
            device = rendered.tie.device
            sums = torch.cat(
                [squared_error_sums(rendered.regions, [gt], device), ssim_sums(rendered.regions, [gt], device)]
            )
            if ctx.distributed:
                dist.all_reduce(sums)
            mse = float(sums[0]) / (3 * n)
            views.append(
                {
                    "name": cam.name,
                    "uid": cam.uid,
                    "psnr": -10.0 * math.log10(mse) if mse > 0 else math.inf,
                    "ssim": float(sums[1]) / n,
                }
            )
            if i < outputs.renders:  # every rank sends its tiles; rank 0 saves into renders_dir
                image = _gathered(rendered, cam, ctx)
                if image is not None and outputs.renders_dir is not None:
                    save_png(
                        torch.cat([image, gt[:, :].cpu()], dim=1),
                        Path(outputs.renders_dir) / f"{cam.uid:05d}_{Path(cam.name).stem}.png",
                    )
                if image is not None and pictures_dir is not None:
                    _save_pictures(image.numpy(), rendered, cam, boxes if i == 0 else None, Path(pictures_dir))
    return {
        "views": views,
        "psnr": sum(v["psnr"] for v in views) / len(views),
        "ssim": sum(v["ssim"] for v in views) / len(views),
        "count": len(views),
    }


def _fit_left_half(rendered, gt, cam: Camera, ctx: DistContext) -> None:
    """Put the view's render through the affine colour transform that best maps its left half (W // 2
    columns) onto the photo, fitted over every rank's pixels, and keep only the right half as the rank's
    pixels to measure (``rendered.regions`` replaced)."""
    half = cam.width // 2
    region = rendered.regions[0]
    moments = torch.zeros(4, 7, dtype=torch.float64, device=rendered.tie.device)
    if region is not None:
        core = (slice(HALO, -HALO), slice(HALO, -HALO))
        cols = torch.arange(region.owned.shape[1], device=region.owned.device) + region.x0
        left = region.owned & (cols < half)[None, :]
        moments = exposure_moments(region.canvas[core][left], ground_truth_region(region, gt)[core][left])
    if ctx.distributed:
        dist.all_reduce(moments)
    transform = fit_exposure(moments)
    if region is not None:
        exposed = expose_region(region, transform, cam.height, cam.width)
        rendered.regions = [dataclasses.replace(exposed, owned=region.owned & (cols >= half)[None, :])]


def _gathered(rendered, cam: Camera, ctx: DistContext) -> torch.Tensor | None:
    """Every rank's tiles of ``cam`` gathered on rank 0 as the render [H, W, 3] on the CPU (None elsewhere)."""
    mine = (rendered.tile_ids[0].cpu(), rendered.tile_colors[0].cpu())  # object collectives carry CPU payloads
    parts = [None] * ctx.world_size if ctx.is_main else None
    if ctx.distributed:
        dist.gather_object(mine, parts, dst=0)
    else:
        parts = [mine]
    if not ctx.is_main:
        return None
    grid = TileGrid(cam.width, cam.height)
    tiles = torch.cat([p[0] for p in parts])
    return grid.tiles_to_image(torch.cat([p[1] for p in parts]), tiles).clamp(0.0, 1.0)


def _save_pictures(image, rendered, cam: Camera, boxes, folder: Path) -> None:
    """The tile picture of ``cam`` (its render ``image``, the batch's assignment and tile table) and, given
    ``boxes``, the shard picture and boxes, into ``folder``."""
    stem = f"{cam.uid:05d}_{Path(cam.name).stem}"
    work = rendered.assignment.work(rendered.table.intersections)
    save_picture(
        tile_picture(image, TileGrid(cam.width, cam.height), rendered.assignment.rank, work, stem),
        folder / f"{stem}_tiles.png",
    )
    if boxes is not None:
        save_picture(shard_picture(image, cam, *boxes, stem), folder / "shards.png")
        save_boxes(*boxes, folder / "shards.json")
