"""Evaluation: render cameras, compare with their photos (PSNR, SSIM), optionally save side-by-side PNGs."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch
from tqdm import tqdm

from grendel_py.config import Config
from grendel_py.data.cameras import Camera
from grendel_py.data.dataset import Scene, load_scene
from grendel_py.errors import InputError
from grendel_py.model.gaussians import Gaussians
from grendel_py.model.ply import read_ply
from grendel_py.outputs import save_png
from grendel_py.render import render
from grendel_py.train.metrics import psnr, ssim

Split = Literal["test", "train", "all"]


def evaluate(
    gaussians: Gaussians,
    scene: Scene,
    cameras: list[Camera],
    background: torch.Tensor,
    backend: str = "torch",
    renders_dir: Path | None = None,
    max_renders: int = 0,
) -> dict[str, Any]:
    """PSNR and SSIM of ``gaussians`` rendered from each of ``cameras`` (non-empty) against its photo.

    Returns {"views": [{"name", "uid", "psnr", "ssim"}, ...], "psnr": mean, "ssim": mean, "count": n}. With
    ``renders_dir``, the first ``max_renders`` views are saved there as "render | ground truth" PNGs
    [H, 2W] named ``{uid:05d}_{stem}.png``.
    """
    if not cameras:
        raise ValueError("evaluate: no cameras given")
    views = []
    with torch.no_grad():
        for i, cam in enumerate(tqdm(cameras, desc="eval", unit="view", disable=None, leave=False)):
            image = render(gaussians, cam, background, backend=backend).image.clamp(0.0, 1.0)
            gt = scene.load_image(cam).to(image)
            views.append({"name": cam.name, "uid": cam.uid, "psnr": psnr(image, gt), "ssim": ssim(image, gt)})
            if renders_dir is not None and i < max_renders:
                save_png(torch.cat([image, gt], dim=1), Path(renders_dir) / f"{cam.uid:05d}_{Path(cam.name).stem}.png")
    return {
        "views": views,
        "psnr": sum(v["psnr"] for v in views) / len(views),
        "ssim": sum(v["ssim"] for v in views) / len(views),
        "count": len(views),
    }


def run_eval(model_path: str | Path, cfg: Config, split: Split = "test") -> dict[str, Any]:
    """Evaluate the PLY model at ``model_path`` on the ``split`` cameras of the scene ``cfg.data``, rendered
    with ``cfg.render``; InputError when the split has no cameras."""
    d = cfg.data
    scene = load_scene(d.path, downscale=d.downscale, test_every=d.test_every, images_dir=d.images_dir)
    cameras = {"test": scene.test_cameras, "train": scene.train_cameras, "all": scene.cameras}[split]
    if not cameras:
        raise InputError(scene.source, f"scene has no {split} cameras; use --split all or data.test_every")
    gaussians = read_ply(model_path)
    background = torch.tensor(cfg.render.background, dtype=torch.float32)
    return evaluate(gaussians, scene, cameras, background, cfg.render.backend)
