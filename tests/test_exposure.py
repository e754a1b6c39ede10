"""Per-photo exposure compensation (optim.exposure_lr, grendel_py.model.exposure): the affine fit, a darkened
photo's factor recovered by training on 1 and 2 ranks alike, checkpoints, and evaluation with identity or
INRIA's left-half / right-half split."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from grendel_py.config import load_config
from grendel_py.data.dataset import load_scene
from grendel_py.model.exposure import IDENTITY, Exposures, apply_exposure, exposure_moments, fit_exposure
from grendel_py.parallel.runtime import init_distributed, single_process
from grendel_py.parallel.step import Batch, StepOptions, batch_loss
from grendel_py.render import render
from grendel_py.train.checkpoint import checkpoint_dir, find_checkpoint, load_replicated
from grendel_py.train.evaluate import evaluate_sharded
from grendel_py.train.loop import train
from partition.balancer import TileBalancer
from tests.dist_util import run_ranks
from tests.render_scenes import random_gaussians, small_camera

DARK = torch.tensor([[0.5, 0.0, 0.0, 0.02], [0.0, 0.6, 0.0, 0.0], [0.0, 0.0, 0.45, 0.01]])  # a darker, warmer photo
HALF = 0.5  # the known factor a training photo is darkened by


def test_the_fit_recovers_an_affine_colour_transform() -> None:
    render_px = torch.rand(500, 3, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(
        fit_exposure(exposure_moments(render_px, apply_exposure(render_px, DARK))), DARK, atol=1e-5, rtol=0
    )
    torch.testing.assert_close(fit_exposure(exposure_moments(render_px, render_px)), IDENTITY, atol=1e-5, rtol=0)
    grey = render_px[:, :1].expand(-1, 3)  # colours that do not span RGB: still a finite answer
    assert bool(torch.isfinite(fit_exposure(exposure_moments(grey, grey * 0.5))).all())


def _scene():
    model = random_gaussians(300, seed=8, sh_degree=0, dtype=torch.float32, opacity_shift=2.0)
    cams = [small_camera(40, 30, 0), small_camera(32, 24, 1)]
    with torch.no_grad():
        photos = [render(model, c, torch.zeros(3)).image for c in cams]
    photos[1] = photos[1] * HALF
    return model, cams, photos


def _recover_job(ctx, steps: int = 40):
    """Train only the exposures (the model is the photos' own, frozen) on both cameras for ``steps`` steps."""
    model, cams, photos = _scene()
    shard = model.select(model.ids % ctx.world_size == ctx.rank)
    exposures = Exposures(2, 0.1, torch.device("cpu"))
    balancer = TileBalancer("locality", ctx.world_size, calibrate=False)
    for step in range(steps):
        batch = Batch(cams, photos, 0, exposures=exposures.of([0, 1]))
        loss, _ = batch_loss(shard, batch, StepOptions(torch.zeros(3), balancer=balancer), ctx)
        loss.backward()
        exposures.step([0, 1], step, steps, ctx.reduce)  # lr 0.1 decaying to 0.01
    return exposures.transforms.detach()


def test_a_darkened_photo_is_recovered_the_same_on_one_and_two_ranks() -> None:
    """Photo 1 is its render at half the brightness; training only the exposures, its transform learns to
    halve the render (in the colours the render has: correlated channels leave some matrices equivalent), and
    photo 0's stays close to the identity."""
    model, cams, photos = _scene()
    with torch.no_grad():
        renders = [render(model, c, torch.zeros(3)).image for c in cams]
    one = _recover_job(init_distributed(env={}))
    assert float((apply_exposure(renders[0], one[0]) - renders[0]).abs().max()) < 0.02
    assert float((apply_exposure(renders[1], one[1]) - photos[1]).abs().max()) < 0.05  # brightest pixels: within 5%
    mean = renders[1].reshape(-1, 3).mean(0)
    torch.testing.assert_close(apply_exposure(mean, one[1]), HALF * mean, atol=0.005, rtol=0)
    two = run_ranks(2, _recover_job)
    torch.testing.assert_close(two[0], two[1], rtol=0, atol=0)  # every rank takes the same step
    torch.testing.assert_close(
        apply_exposure(renders[1], two[0][1]), apply_exposure(renders[1], one[1]), rtol=0, atol=2e-3
    )


def _train(scene: Path, out: Path, images: int, resume: Path | None = None) -> dict:
    cfg = load_config(
        None,
        [
            f"data.path={scene}",
            "data.downscale=4",
            f"train.out={out}",
            f"train.images={images}",
            "train.batch_size=2",
            "train.eval_every=0",
            "train.eval_renders=0",
            "train.checkpoint_every=10",
            "model.sh_degree=0",
            "densify.start_images=1000",
            "optim.exposure_lr=0.01",
        ],
    )
    return train(cfg, single_process(), find_checkpoint(resume) if resume else None)


def test_training_saves_the_exposures_and_resumes_them(object_scene_seed2: Path, tmp_path: Path) -> None:
    _train(object_scene_seed2, tmp_path / "whole", 20)
    saved = json.loads((tmp_path / "whole" / "exposures.json").read_text())
    names = [c.name for c in load_scene(object_scene_seed2, downscale=4).train_cameras]
    assert sorted(saved) == sorted(names) and all(len(m) == 3 and len(m[0]) == 4 for m in saved.values())
    assert any(abs(m[0][0] - 1.0) > 1e-4 for m in saved.values())  # the trained photos moved off the identity
    ckpt = find_checkpoint(checkpoint_dir(tmp_path / "whole", 10))
    assert load_replicated(ckpt)["exposures"]["transforms"].shape == (len(names), 3, 4)
    shutil.copytree(tmp_path / "whole", tmp_path / "again")  # resume the copy from 10 images: the same exposures
    _train(object_scene_seed2, tmp_path / "again", 20, resume=checkpoint_dir(tmp_path / "again", 10))
    assert (tmp_path / "again" / "exposures.json").read_text() == (tmp_path / "whole" / "exposures.json").read_text()
    assert (tmp_path / "again" / "model.ply").read_bytes() == (tmp_path / "whole" / "model.ply").read_bytes()


def test_evaluation_compares_as_rendered_or_fits_the_left_half() -> None:
    model, cams, photos = _scene()
    by_uid = {c.uid: p for c, p in zip(cams, photos)}
    options = StepOptions(torch.zeros(3))
    identity = evaluate_sharded(model, lambda c: by_uid[c.uid], cams, options, single_process())
    fitted = evaluate_sharded(model, lambda c: by_uid[c.uid], cams, options, single_process(), exposure="fit-left")
    assert identity["views"][0]["psnr"] > 60 and identity["views"][1]["psnr"] < 25  # the darkened photo
    assert all(v["psnr"] > 45 for v in fitted["views"])  # its transform found on the left, checked on the right
    assert fitted["views"][1]["ssim"] == pytest.approx(1.0, abs=1e-3)
