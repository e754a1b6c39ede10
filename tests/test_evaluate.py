"""Metrics and evaluation: a COLMAP scene whose photos are renders of a known model."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from grendel_py.config import Config, DataConfig
from grendel_py.data.cameras import Camera, look_at
from grendel_py.data.colmap import ColmapCamera, ColmapImage, ColmapPoints, rotmat_to_qvec, write_model
from grendel_py.data.dataset import load_scene, scene_from_config
from grendel_py.data.photo_cache import PhotoCache
from grendel_py.errors import InputError
from grendel_py.model.gaussians import Gaussians
from grendel_py.model.ply import read_ply, write_ply
from grendel_py.outputs import save_png
from grendel_py.parallel.runtime import single_process
from grendel_py.parallel.step import StepOptions
from grendel_py.render import render
from grendel_py.train.evaluate import EvalOutputs, evaluate, evaluate_sharded, run_eval
from grendel_py.train.images import GroundTruth
from grendel_py.train.metrics import psnr, ssim
from tests.render_scenes import random_gaussians

WIDTH, HEIGHT, VIEWS = 32, 24, 4


def make_scene(root: Path, gaussians: Gaussians) -> None:
    """A COLMAP scene of VIEWS pinhole cameras around the origin whose photos are renders of ``gaussians``."""
    cameras = {1: ColmapCamera(1, "PINHOLE", WIDTH, HEIGHT, np.array([30.0, 30.0, WIDTH / 2, HEIGHT / 2]))}
    images = {}
    (root / "images").mkdir(parents=True)
    for k in range(VIEWS):
        angle = 2 * math.pi * k / VIEWS
        R, t = look_at(
            torch.tensor([3.5 * math.sin(angle), -1.0, -3.5 * math.cos(angle)]),
            torch.zeros(3),
            torch.tensor([0.0, -1.0, 0.0]),
        )
        name = f"img_{k:02d}.png"
        images[k + 1] = ColmapImage(k + 1, rotmat_to_qvec(R.numpy()), t.numpy(), 1, name)
        camera = Camera(k, name, WIDTH, HEIGHT, 30.0, 30.0, WIDTH / 2, HEIGHT / 2, R, t)
        with torch.no_grad():
            save_png(render(gaussians, camera).image, root / "images" / name)
    write_model(root / "sparse" / "0", cameras, images, ColmapPoints.empty())


@pytest.fixture(scope="module")
def scene_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The scene folder, holding the true model as model.ply and a perturbed one as perturbed.ply."""
    root = tmp_path_factory.mktemp("scene")
    gaussians = random_gaussians(60, seed=3, dtype=torch.float32, opacity_shift=1.0)
    make_scene(root, gaussians)
    write_ply(root / "model.ply", gaussians)
    noise = torch.randn(gaussians.means.shape, generator=torch.Generator().manual_seed(0)) * 0.05
    write_ply(root / "perturbed.ply", replace(gaussians, means=gaussians.means + noise))
    return root


def config(root: Path, test_every: int = 2, cache_dir: str = "") -> Config:
    return Config(data=DataConfig(path=str(root), test_every=test_every, cache_dir=cache_dir))


def test_psnr_and_ssim_values() -> None:
    gt = torch.rand(16, 20, 3, generator=torch.Generator().manual_seed(0)) * 0.8
    assert psnr(gt + 0.1, gt) == pytest.approx(20.0, abs=1e-4)
    assert psnr(gt, gt) == math.inf
    assert psnr(torch.full_like(gt, 5.0), torch.ones_like(gt)) == math.inf  # the render is clamped first
    assert ssim(gt, gt) == pytest.approx(1.0, abs=1e-6)
    assert ssim(torch.rand(gt.shape, generator=torch.Generator().manual_seed(1)), gt) < 0.5


def test_model_scores_high_on_its_own_renders(scene_dir: Path) -> None:
    result = run_eval(scene_dir / "model.ply", config(scene_dir), "test")
    assert result["count"] == 2
    assert [(v["uid"], v["name"]) for v in result["views"]] == [(0, "img_00.png"), (2, "img_02.png")]
    assert result["psnr"] > 40.0
    assert result["ssim"] > 0.99
    assert result["psnr"] == pytest.approx(sum(v["psnr"] for v in result["views"]) / 2)
    assert run_eval(scene_dir / "model.ply", config(scene_dir), "all")["count"] == VIEWS
    assert run_eval(scene_dir / "model.ply", config(scene_dir), "train")["count"] == VIEWS - 2
    perturbed = run_eval(scene_dir / "perturbed.ply", config(scene_dir), "test")
    assert perturbed["psnr"] < result["psnr"] - 10.0
    assert perturbed["ssim"] < result["ssim"]


def test_side_by_side_renders(scene_dir: Path, tmp_path: Path) -> None:
    scene = load_scene(scene_dir)
    gaussians = random_gaussians(60, seed=3, dtype=torch.float32, opacity_shift=1.0)
    evaluate(gaussians, scene, scene.cameras, torch.zeros(3), renders_dir=tmp_path, max_renders=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["00000_img_00.png", "00001_img_01.png"]
    pair = np.asarray(Image.open(tmp_path / "00001_img_01.png"))
    assert pair.shape == (HEIGHT, 2 * WIDTH, 3)
    photo = np.asarray(Image.open(scene_dir / "images" / "img_01.png"))
    assert np.array_equal(pair[:, WIDTH:], photo)
    assert np.abs(pair[:, :WIDTH].astype(int) - photo).max() <= 1


def test_evaluation_reads_regions_from_the_photo_cache(scene_dir: Path, tmp_path: Path) -> None:
    """Training evaluates its test views through the photo cache (regions, no whole decoded photos): the
    same numbers as decoding each photo, and the views cached for the next evaluation."""
    scene = load_scene(scene_dir)
    gaussians = random_gaussians(60, seed=3, dtype=torch.float32, opacity_shift=0.5)
    direct = evaluate(gaussians, scene, scene.cameras, torch.zeros(3))
    cache = PhotoCache(tmp_path / "cache", scene)
    photos = GroundTruth(cache, torch.device("cpu"), torch.zeros(3))
    (tmp_path / "renders").mkdir()
    outputs = EvalOutputs(1, tmp_path / "renders")
    cached = evaluate_sharded(
        gaussians, photos.photo, scene.cameras, StepOptions(torch.zeros(3)), single_process(), outputs=outputs
    )
    assert [(v["psnr"], v["ssim"]) for v in cached["views"]] == [(v["psnr"], v["ssim"]) for v in direct["views"]]
    assert math.isfinite(cached["psnr"]) and cached["psnr"] < 40.0  # not the true model: the errors are not zero
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == sorted(cache.path(c).name for c in scene.cameras)
    assert [p.name for p in (tmp_path / "renders").iterdir()] == ["00000_img_00.png"]
    assert photos.wait_seconds > 0.0


def test_eval_command_reads_the_photo_cache(scene_dir: Path, tmp_path: Path) -> None:
    """``grendel eval`` reads its photos through the photo cache of ``data.cache_dir``, as training does: the
    same numbers as decoding each photo, and only the split's photos decoded into the cache."""
    cache_dir = tmp_path / "cache"
    cfg = config(scene_dir, cache_dir=str(cache_dir))
    result = run_eval(scene_dir / "perturbed.ply", cfg, "test")
    scene = scene_from_config(cfg.data)
    direct = evaluate(read_ply(scene_dir / "perturbed.ply"), scene, scene.test_cameras, torch.zeros(3))
    assert [(v["uid"], v["psnr"], v["ssim"]) for v in result["views"]] == [
        (v["uid"], v["psnr"], v["ssim"]) for v in direct["views"]
    ]
    assert result["count"] == 2 and math.isfinite(result["psnr"])
    cache = PhotoCache(cache_dir, scene)
    assert sorted(p.name for p in cache_dir.iterdir()) == sorted(cache.path(c).name for c in scene.test_cameras)
    split = run_eval(scene_dir / "perturbed.ply", cfg, "test", exposure="fit-left")  # INRIA's train_test_exp split
    assert split["count"] == 2 and [v["psnr"] for v in split["views"]] != [v["psnr"] for v in result["views"]]


def test_empty_split_is_input_error(scene_dir: Path) -> None:
    with pytest.raises(InputError, match="no test cameras"):
        run_eval(scene_dir / "model.ply", config(scene_dir, test_every=0), "test")
