"""Backgrounds: photos with alpha are composited over the background the render uses (``render.background``,
or a random one per photo and batch with ``render.random_background``), through the photo cache, the
renderer's per-camera backgrounds, and training."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from grendel_py.config import load_config
from grendel_py.data.dataset import load_scene
from grendel_py.data.photo_cache import PhotoCache
from grendel_py.model.ply import read_ply
from grendel_py.parallel.runtime import single_process
from grendel_py.render import project, rasterize_batch, render
from grendel_py.render.intersect import BatchTiles
from grendel_py.render.projection import Splats
from grendel_py.train.images import GroundTruth, random_backgrounds, to_float
from grendel_py.train.loop import train
from partition.tiles import TileGrid
from tests.render_scenes import random_gaussians, small_camera

SPLAT_FIELDS = ("means2d", "conics", "depths", "opacities", "colors", "extents", "ids")


@pytest.fixture(scope="module")
def rgba_scene(object_scene_seed2: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The synthetic object scene (black where rays miss) with those pixels transparent: alpha 0 where a
    photo is black, 255 elsewhere."""
    out = tmp_path_factory.mktemp("rgba") / "scene"
    shutil.copytree(object_scene_seed2, out)
    for path in sorted((out / "images").iterdir()):
        rgb = np.asarray(Image.open(path).convert("RGB"))
        alpha = np.where(rgb.max(axis=-1) > 0, 255, 0).astype(np.uint8)
        Image.fromarray(np.dstack([rgb, alpha]), mode="RGBA").save(path)
    return out


def test_the_cache_keeps_alpha_and_each_photo_is_read_over_its_background(rgba_scene: Path, tmp_path: Path) -> None:
    scene = load_scene(rgba_scene, downscale=4)
    cams = scene.train_cameras[:2]
    cache = PhotoCache(tmp_path, scene)
    exact = [scene.load_image(c) for c in cams]
    assert all(cache.photo(c).shape == (c.height, c.width, 4) for c in cams)  # premultiplied colour and alpha
    white = torch.ones(3)
    images = GroundTruth(cache, torch.device("cpu"), white)
    own = torch.tensor([[0.1, 0.7, 0.3], [0.9, 0.2, 0.5]])
    for photos, backgrounds in ((images.batch(cams), [white, white]), (images.batch(cams, own), list(own))):
        for cam, photo, image, bg in zip(cams, photos, exact, backgrounds):
            cached = to_float(torch.from_numpy(cache.photo(cam)))
            expected = cached[..., :3] + (1 - cached[..., 3:]) * bg
            torch.testing.assert_close(photo[0 : cam.height, 0 : cam.width], expected, atol=1e-6, rtol=0)
            assert float((expected - (image[..., :3] + (1 - image[..., 3:]) * bg)).abs().max()) <= 1 / 255
            clear = cached[..., 3] == 0
            whole = photo[0 : cam.height, 0 : cam.width]
            assert bool(clear.any()) and torch.equal(whole[clear], bg.expand(int(clear.sum()), 3))
            assert torch.equal(photo[3:17, 5:21], whole[3:17, 5:21])  # a region read: the same pixels
    images.close()


def test_one_background_per_camera_is_each_camera_rendered_over_its_own() -> None:
    """rasterize_batch with [B, 3] backgrounds gives each camera's picture over its background, and the same
    gradients (splats and backgrounds) as rendering each camera alone."""
    model = random_gaussians(400, seed=3, sh_degree=1, dtype=torch.float64, opacity_shift=-1.0)
    cams = [small_camera(37, 29, uid=0), small_camera(45, 21, uid=1)]
    grids = [TileGrid(c.width, c.height) for c in cams]
    with torch.no_grad():
        per_camera = [project(model, cam) for cam in cams]
    backgrounds = torch.tensor([[0.9, 0.1, 0.4], [0.2, 0.8, 0.6]], dtype=torch.float64)
    weights = [
        torch.randn(g.n_tiles, g.tile_size**2, 3, generator=torch.Generator().manual_seed(7 + b), dtype=torch.float64)
        for b, g in enumerate(grids)
    ]

    def leaves(splats: list[Splats]) -> tuple[Splats, list[torch.Tensor]]:
        grads = [
            torch.cat([s.colors for s in splats]).clone().requires_grad_(True),
            torch.cat([s.opacities for s in splats]).clone().requires_grad_(True),
        ]
        batch = Splats(*(torch.cat([getattr(s, f) for s in splats]) for f in SPLAT_FIELDS))
        return Splats(batch.means2d, batch.conics, batch.depths, grads[1], grads[0], batch.extents, batch.ids), grads

    batch, batch_leaves = leaves(per_camera)
    bg = backgrounds.clone().requires_grad_(True)
    tiles = BatchTiles(grids, [None, None], torch.device("cpu"))
    colors, alpha, _ = rasterize_batch(batch, [len(s) for s in per_camera], tiles, bg)
    (torch.cat(weights) * colors).sum().backward()

    start = 0
    for b, (splats, grid) in enumerate(zip(per_camera, grids)):
        one, one_leaves = leaves([splats])
        one_bg = backgrounds[b].clone().requires_grad_(True)
        c, a, _ = rasterize_batch(one, [len(splats)], BatchTiles([grid], [None], torch.device("cpu")), one_bg)
        (weights[b] * c).sum().backward()
        rows = slice(start, start + grid.n_tiles)
        torch.testing.assert_close(colors[rows], c)
        torch.testing.assert_close(alpha[rows], a)
        torch.testing.assert_close(bg.grad[b], one_bg.grad)
        n = slice(sum(len(s) for s in per_camera[:b]), sum(len(s) for s in per_camera[: b + 1]))
        for got, ref in zip(batch_leaves, one_leaves):
            torch.testing.assert_close(got.grad[n], ref.grad)
        start += grid.n_tiles


def test_random_backgrounds_depend_only_on_the_seed_and_the_image() -> None:
    a = random_backgrounds(3, 100, 8, torch.device("cpu"))
    assert a.shape == (8, 3) and a.dtype == torch.float32 and bool(((a > 0) & (a < 1)).all())
    assert torch.equal(random_backgrounds(3, 104, 4, torch.device("cpu")), a[4:])  # a resumed run draws the same
    assert not torch.equal(random_backgrounds(4, 100, 8, torch.device("cpu")), a)
    assert len({tuple(row) for row in a.tolist()}) == 8
    many = random_backgrounds(0, 0, 20_000, torch.device("cpu")).double()
    torch.testing.assert_close(many.mean(0), torch.full((3,), 0.5, dtype=torch.float64), atol=0.01, rtol=0)


@pytest.mark.parametrize("random_background", [False, True])
def test_an_rgba_scene_trains_on_white(rgba_scene: Path, tmp_path: Path, random_background: bool) -> None:
    """Trained with ``render.background=[1,1,1]``, the model shows white where the photos are transparent
    (photos composited over black, the old behaviour, teach it to paint black there), and its test PSNR is
    measured against the photos over white. With random backgrounds it learns no background at all."""
    cfg = load_config(
        None,
        [
            f"data.path={rgba_scene}",
            "data.downscale=4",
            f"train.out={tmp_path / 'run'}",
            "train.images=60",
            "train.batch_size=2",
            "train.eval_every=0",
            "train.eval_renders=0",
            "model.sh_degree=0",
            "densify.start_images=1000",
            "render.background=[1,1,1]",
            f"render.random_background={str(random_background).lower()}",
        ],
    )
    result = train(cfg, single_process())
    model = read_ply(tmp_path / "run" / "model.ply")
    scene = load_scene(rgba_scene, downscale=4)
    for cam in scene.test_cameras[:2]:
        clear = scene.load_image(cam)[..., 3] == 0
        image = render(model, cam, torch.ones(3)).image.detach()
        assert float(image[clear].mean()) > 0.9, cam.name
        if random_background:  # no Gaussian paints the background: it shows through
            black = render(model, cam, torch.zeros(3)).image.detach()
            assert float(black[clear].mean()) < 0.1, cam.name
    assert result["test"]["psnr"] > 15.0
