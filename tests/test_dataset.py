"""Scene loading: layout detection, ordering and splits, image loading, errors, describe()."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from grendel_py.config import ModelConfig
from grendel_py.data.cameras import look_at
from grendel_py.data.colmap import ColmapCamera, ColmapImage, ColmapPoints, read_model, rotmat_to_qvec, write_model
from grendel_py.data.dataset import Scene, describe, load_scene, over_background
from grendel_py.data.undistort import undistort_image
from grendel_py.errors import InputError
from grendel_py.model.initialize import initial_gaussians

SIZES = {1: (32, 24), 2: (20, 16)}


def pixels(name: str, width: int, height: int, channels: int = 3) -> np.ndarray:
    """Deterministic uint8 content of the photo called ``name``."""
    seed = sum(name.encode())
    return np.random.default_rng(seed).integers(0, 256, size=(height, width, channels), dtype=np.uint8)


def make_colmap_scene(
    root: Path,
    n_images: int = 10,
    sparse: str = "sparse/0",
    models: tuple[str, str] = ("PINHOLE", "SIMPLE_RADIAL"),
    distortion: float = 0.0,
    write_images: bool = True,
) -> dict[int, ColmapImage]:
    """A COLMAP scene: images named img_XX.png in shuffled id order, two cameras of different sizes."""
    params = {
        "PINHOLE": lambda w, h: [30.0, 31.0, w / 2, h / 2],
        "SIMPLE_RADIAL": lambda w, h: [25.0, w / 2 + 0.5, h / 2 - 0.5, distortion],
        "OPENCV_FISHEYE": lambda w, h: [30.0, 30.0, w / 2, h / 2, 0.0, 0.0, 0.0, 0.0],
    }
    cameras = {
        cid: ColmapCamera(cid, model, *SIZES[cid], np.array(params[model](*SIZES[cid])))
        for cid, model in zip((1, 2), models)
    }
    rng = np.random.default_rng(0)
    images = {}
    for k, image_id in enumerate(rng.permutation(n_images) + 1):
        eye = torch.tensor([np.cos(k), np.sin(k), 0.3 * k], dtype=torch.float64) * 2
        R, t = look_at(eye, torch.zeros(3), torch.tensor([0.0, 0.0, 1.0]))
        name = f"img_{k:02d}.png"
        images[int(image_id)] = ColmapImage(int(image_id), rotmat_to_qvec(R.numpy()), t.numpy(), 1 + k % 2, name)
        if write_images:
            (root / "images").mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels(name, *SIZES[1 + k % 2])).save(root / "images" / name)
    rgb = np.array([[10, 20, 30], [40, 50, 60]], dtype=np.uint8)
    points = ColmapPoints(
        np.array([1, 2]),
        np.array([[0.0, 0.0, 0.0], [1.0, 2.0, 3.0]]),
        rgb,
        np.zeros(2),
        np.array([0, 0, 0]),
        np.zeros(0, np.int64),
        np.zeros(0, np.int64),
    )
    write_model(root / sparse, cameras, images, points)
    return images


def test_colmap_scene_cameras_and_split(tmp_path: Path) -> None:
    images = make_colmap_scene(tmp_path)
    scene = load_scene(tmp_path)
    assert scene.source == tmp_path
    cams = scene.cameras
    assert [c.name for c in cams] == [f"img_{k:02d}.png" for k in range(10)]
    assert [c.uid for c in cams] == list(range(10))
    assert [c.uid for c in scene.test_cameras] == [0, 8]
    assert [c.uid for c in scene.train_cameras] == [1, 2, 3, 4, 5, 6, 7, 9]
    by_name = {img.name: img for img in images.values()}
    for cam in cams:
        assert (cam.width, cam.height) == SIZES[1 + cam.uid % 2]
        np.testing.assert_allclose(cam.t.numpy(), by_name[cam.name].tvec)
        assert cam.image_path == tmp_path / "images" / cam.name
    assert (cams[0].fx, cams[0].fy, cams[0].cx) == (30.0, 31.0, 16.0)
    assert (cams[1].fx, cams[1].fy, cams[1].cx, cams[1].cy) == (25.0, 25.0, 10.5, 7.5)
    assert scene.points_xyz.dtype == torch.float32 and scene.points_xyz.shape == (2, 3)
    assert scene.points_rgb.dtype == torch.uint8 and scene.points_rgb.tolist() == [[10, 20, 30], [40, 50, 60]]
    centers = torch.stack([c.center for c in scene.train_cameras])
    assert scene.extent == pytest.approx(1.1 * float((centers - centers.mean(0)).norm(dim=1).max()))
    assert load_scene(tmp_path, test_every=0).test_cameras == []
    assert [c.uid for c in load_scene(tmp_path, test_every=3).test_cameras] == [0, 3, 6, 9]


@pytest.mark.parametrize("sparse", ["sparse", "."])
def test_colmap_layouts(tmp_path: Path, sparse: str) -> None:
    make_colmap_scene(tmp_path, n_images=3, sparse=sparse)
    assert len(load_scene(tmp_path).cameras) == 3


def test_images_dir(tmp_path: Path) -> None:
    make_colmap_scene(tmp_path, n_images=3)
    (tmp_path / "images").rename(tmp_path / "photos")
    with pytest.raises(InputError, match="image file is missing"):
        load_scene(tmp_path)
    assert load_scene(tmp_path, images_dir="photos").cameras[0].image_path == tmp_path / "photos" / "img_00.png"


def test_load_image_exact_and_downscaled(tmp_path: Path) -> None:
    make_colmap_scene(tmp_path, n_images=4)
    scene = load_scene(tmp_path)
    cam = scene.cameras[0]
    image = scene.load_image(cam)
    assert image.dtype == torch.float32 and image.shape == (24, 32, 3)
    torch.testing.assert_close(image, torch.from_numpy(pixels(cam.name, 32, 24)).float() / 255)

    half = load_scene(tmp_path, downscale=2)
    small = half.cameras[0]
    assert (small.width, small.height, small.fx, small.cx) == (16, 12, 15.0, 8.0)
    expected = torch.from_numpy(pixels(cam.name, 32, 24)).float().div(255).reshape(12, 2, 16, 2, 3).mean(dim=(1, 3))
    torch.testing.assert_close(half.load_image(small), expected, atol=1e-5, rtol=0)

    odd = load_scene(tmp_path, downscale=3)
    sizes = {(c.width, c.height) for c in odd.cameras}
    assert sizes == {(round(32 / 3), round(24 / 3)), (round(20 / 3), round(16 / 3))}
    for c in odd.cameras:
        img = odd.load_image(c)
        assert img.shape == (c.height, c.width, 3)
        assert abs(float(img.mean()) - pixels(c.name, *SIZES[1 + c.uid % 2]).mean() / 255) < 0.02


def test_alpha_is_kept_and_composited_over_any_background(tmp_path: Path) -> None:
    make_colmap_scene(tmp_path, n_images=2)
    rgba = pixels("img_00.png", 32, 24, channels=4)
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "images" / "img_00.png")
    scene = load_scene(tmp_path)
    with_alpha, opaque = scene.cameras
    assert (scene.channels(with_alpha), scene.channels(opaque)) == (4, 3)
    image = scene.load_image(with_alpha)
    colour, alpha = torch.from_numpy(rgba[..., :3]).float() / 255, torch.from_numpy(rgba[..., 3:]).float() / 255
    torch.testing.assert_close(image, torch.cat([colour * alpha, alpha], dim=-1))  # premultiplied, then alpha
    for background in ([0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [0.2, 0.5, 0.9]):
        bg = torch.tensor(background)
        torch.testing.assert_close(over_background(image, bg), colour * alpha + (1 - alpha) * bg)
    rgb = scene.load_image(opaque)
    assert rgb.shape[-1] == 3 and over_background(rgb, torch.ones(3)) is rgb


def test_distorted_camera_is_undistorted(tmp_path: Path) -> None:
    make_colmap_scene(tmp_path, n_images=2, distortion=0.05)
    scene = load_scene(tmp_path)
    assert describe(scene)["distorted_cameras"] == 1
    cam = scene.cameras[1]  # SIMPLE_RADIAL
    raw = torch.from_numpy(pixels(cam.name, 20, 16)).float() / 255
    expected = undistort_image(raw, cam.fx, cam.fy, cam.cx, cam.cy, 0.05, 0.0, 0.0, 0.0)
    got = scene.load_image(cam)
    torch.testing.assert_close(got, expected)
    assert not torch.equal(got, raw)


def test_size_mismatch_is_input_error(tmp_path: Path) -> None:
    make_colmap_scene(tmp_path, n_images=2)
    Image.new("RGB", (10, 10)).save(tmp_path / "images" / "img_01.png")
    scene = load_scene(tmp_path)
    with pytest.raises(InputError, match="image is 10x10 but its camera says 20x16") as info:
        scene.load_image(scene.cameras[1])
    assert info.value.path == tmp_path / "images" / "img_01.png"


def test_missing_images_reported_first_in_name_order(tmp_path: Path) -> None:
    make_colmap_scene(tmp_path, n_images=5)
    for k in (4, 2):
        (tmp_path / "images" / f"img_{k:02d}.png").unlink()
    with pytest.raises(InputError, match="missing") as info:
        load_scene(tmp_path)
    assert info.value.path == tmp_path / "images" / "img_02.png"


def test_check_images_finds_truncated_and_corrupt_files(tmp_path: Path) -> None:
    make_colmap_scene(tmp_path, n_images=3)
    sparse = tmp_path / "sparse" / "0"
    cameras, images, points = read_model(sparse)
    for img in images.values():  # img_01 and img_02 become JPEGs
        if img.name != "img_00.png":
            png = tmp_path / "images" / img.name
            img.name = png.with_suffix(".jpg").name
            Image.open(png).save(tmp_path / "images" / img.name, quality=95)
            png.unlink()
    write_model(sparse, cameras, images, points)
    trailer = tmp_path / "images" / "img_01.jpg"  # data after the end-of-image marker: decoded at 1/8 to be sure
    trailer.write_bytes(trailer.read_bytes() + b"trailing bytes")
    scene = load_scene(tmp_path)
    scene.check_images()
    png, jpg = tmp_path / "images" / "img_00.png", tmp_path / "images" / "img_02.jpg"
    for path, damage in (
        (png, lambda b: b[: len(b) // 2]),
        (png, lambda b: b[:60] + bytes([b[60] ^ 0xFF]) + b[61:]),  # a flipped byte: the chunk checksum fails
        (jpg, lambda b: b[: len(b) // 2]),
    ):
        good = path.read_bytes()
        path.write_bytes(damage(good))
        with pytest.raises(InputError, match="cannot read image: corrupt or truncated") as info:
            scene.check_images()
        assert info.value.path == path
        path.write_bytes(good)
    png.write_bytes(b"not an image")
    with pytest.raises(InputError, match="not an image file") as info:
        scene.check_images()
    assert info.value.path == png


def test_bad_points_are_input_errors_naming_the_points_file(tmp_path: Path) -> None:
    make_colmap_scene(tmp_path, n_images=2)
    sparse = tmp_path / "sparse" / "0"
    assert load_scene(tmp_path).points_path == sparse / "points3D.bin"
    cameras, images, points = read_model(sparse)
    points.xyz[1, 2] = np.inf
    write_model(sparse, cameras, images, points)
    with pytest.raises(InputError, match=r"non-finite coordinates in 1 3D point\(s\), the first \(#1\)") as info:
        load_scene(tmp_path)
    assert info.value.path == sparse / "points3D.bin"
    one = ColmapPoints(
        points.ids[:1],
        np.zeros((1, 3)),
        points.rgb[:1],
        points.error[:1],
        np.zeros(2, np.int64),
        points.track_image_ids,
        points.track_point2D_idx,
    )
    write_model(sparse, cameras, images, one)
    scene = load_scene(tmp_path)
    with pytest.raises(InputError, match="only 1 3D point") as info:
        initial_gaussians(ModelConfig(), scene.points, scene.cameras, scene.extent, 0)
    assert info.value.path == sparse / "points3D.bin"
    assert (
        len(
            initial_gaussians(ModelConfig(init="random", random_points=2), scene.points, scene.cameras, scene.extent, 0)
        )
        == 2
    )


def test_bad_scenes_are_input_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no scene here"):
        load_scene(tmp_path)
    make_colmap_scene(tmp_path / "fisheye", n_images=2, models=("PINHOLE", "OPENCV_FISHEYE"))
    with pytest.raises(InputError, match="OPENCV_FISHEYE is not supported") as info:
        load_scene(tmp_path / "fisheye")
    assert info.value.path == tmp_path / "fisheye" / "sparse" / "0" / "cameras.bin"
    images = make_colmap_scene(tmp_path / "orphan", n_images=2)
    next(iter(images.values())).camera_id = 9
    write_model(tmp_path / "orphan" / "sparse" / "0", {}, images, ColmapPoints.empty())
    with pytest.raises(InputError, match="refers to camera"):
        load_scene(tmp_path / "orphan")
    make_colmap_scene(tmp_path / "zero_quaternion", n_images=2)
    cameras, images, points = read_model(tmp_path / "zero_quaternion" / "sparse" / "0")
    next(iter(images.values())).qvec[:] = 0
    write_model(tmp_path / "zero_quaternion" / "sparse" / "0", cameras, images, points)
    with pytest.raises(InputError, match="invalid pose"):
        load_scene(tmp_path / "zero_quaternion")
    make_colmap_scene(tmp_path / "ok", n_images=1)
    with pytest.raises(InputError, match="downscale"):
        load_scene(tmp_path / "ok", downscale=0)
    make_colmap_scene(tmp_path / "no_images", n_images=1)
    cameras, _, points = read_model(tmp_path / "no_images" / "sparse" / "0")
    write_model(tmp_path / "no_images" / "sparse" / "0", cameras, {}, points)
    with pytest.raises(InputError, match="no registered images") as info:
        load_scene(tmp_path / "no_images")
    assert info.value.path == tmp_path / "no_images" / "sparse" / "0" / "images.bin"


def test_camera_from_another_scene(tmp_path: Path) -> None:
    make_colmap_scene(tmp_path, n_images=2)
    scene = load_scene(tmp_path)
    other = Scene([], [], None, None, 1.0, tmp_path)
    with pytest.raises(ValueError, match="not part of scene"):
        other.load_image(scene.cameras[0])


def _blender_scene(root: Path) -> None:
    for split, n in (("train", 3), ("test", 2)):
        frames = []
        for i in range(n):
            (root / split).mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels(f"{split}{i}", 8, 6, channels=4), mode="RGBA").save(root / split / f"r_{i}.png")
            c2w = np.eye(4)
            c2w[2, 3] = 3 + i
            frames.append({"file_path": f"./{split}/r_{i}", "transform_matrix": c2w.tolist()})
        (root / f"transforms_{split}.json").write_text(json.dumps({"camera_angle_x": 0.7, "frames": frames}))


def test_blender_scene_split_overrides_test_every(tmp_path: Path) -> None:
    _blender_scene(tmp_path)
    scene = load_scene(tmp_path, test_every=1)
    assert [c.name for c in scene.train_cameras] == ["train/r_0.png", "train/r_1.png", "train/r_2.png"]
    assert [c.name for c in scene.test_cameras] == ["test/r_0.png", "test/r_1.png"]
    assert [c.uid for c in scene.test_cameras] == [0, 1]  # "test/..." sorts before "train/..."
    assert scene.points_xyz is None and scene.points_rgb is None
    assert scene.extent == pytest.approx(1.1 * 1.0)  # train centres at z = 3, 4, 5
    image = scene.load_image(scene.test_cameras[1])
    rgba = pixels("test1", 8, 6, channels=4).astype(np.float32) / 255
    torch.testing.assert_close(
        image, torch.from_numpy(np.concatenate([rgba[..., :3] * rgba[..., 3:], rgba[..., 3:]], -1))
    )


def test_describe(tmp_path: Path) -> None:
    make_colmap_scene(tmp_path)
    info = describe(load_scene(tmp_path, downscale=2))
    assert info == {
        "source": str(tmp_path),
        "cameras": 10,
        "train_cameras": 8,
        "test_cameras": 2,
        "image_sizes": {"16x12": 5, "10x8": 5},
        "distorted_cameras": 0,
        "extent": pytest.approx(load_scene(tmp_path).extent),
        "points": 2,
        "points_bbox": [[0.0, 0.0, 0.0], [1.0, 2.0, 3.0]],
    }
    json.dumps(info)


def test_fox_scene(fox: Path) -> None:
    scene = load_scene(fox, downscale=8)
    info = describe(scene)
    assert (info["cameras"], info["test_cameras"], info["distorted_cameras"]) == (44, 6, 44)
    assert info["image_sizes"] == {"135x240": 44}
    image = scene.load_image(scene.test_cameras[0])
    assert image.shape == (240, 135, 3) and 0.05 < float(image.mean()) < 0.95
