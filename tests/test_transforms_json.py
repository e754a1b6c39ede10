"""transforms.json reading: intrinsics rules, OpenGL -> OpenCV poses, Blender splits, errors, the fox scene."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from plyfile import PlyData, PlyElement

from grendel_py.data.cameras import look_at
from grendel_py.data.transforms_json import read_transforms, read_transforms_points
from grendel_py.errors import InputError


def opengl_c2w(R: np.ndarray, t: np.ndarray) -> list[list[float]]:
    """The transforms.json matrix of an OpenCV world-to-camera pose."""
    c2w = np.eye(4)
    c2w[:3, :3] = R.T
    c2w[:3, 3] = -R.T @ t
    c2w[:3, 1:3] *= -1
    return c2w.tolist()


def random_pose(seed: int) -> tuple[np.ndarray, np.ndarray]:
    eye = torch.from_numpy(np.random.default_rng(seed).normal(size=3) * 3)
    R, t = look_at(eye, torch.zeros(3), torch.tensor([0.0, 0.0, 1.0]))
    return R.numpy(), t.numpy()


def write_png(path: Path, width: int, height: int, mode: str = "RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, (width, height)).save(path)


def write_json(path: Path, meta: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(meta))
    return path


def test_global_intrinsics_and_poses(tmp_path: Path) -> None:
    poses = [random_pose(s) for s in range(3)]
    meta = {
        "fl_x": 50.0,
        "fl_y": 52.0,
        "cx": 20.5,
        "cy": 14.0,
        "w": 40,
        "h": 30,
        "k1": 0.1,
        "k2": -0.01,
        "p1": 0.001,
        "p2": -0.002,
        "frames": [{"file_path": f"images/{i}.jpg", "transform_matrix": opengl_c2w(*p)} for i, p in enumerate(poses)],
    }
    write_json(tmp_path / "transforms.json", meta)
    frames = read_transforms(tmp_path)
    assert [f.name for f in frames] == ["images/0.jpg", "images/1.jpg", "images/2.jpg"]
    assert frames[0].image_path == tmp_path / "images" / "0.jpg"
    for frame, (R, t) in zip(frames, poses):
        assert (frame.width, frame.height, frame.split) == (40, 30, None)
        assert tuple(frame.intrinsics) == (50.0, 52.0, 20.5, 14.0, 0.1, -0.01, 0.001, -0.002)
        np.testing.assert_allclose(frame.R, R, atol=1e-12)
        np.testing.assert_allclose(frame.t, t, atol=1e-12)
    # The json file itself can be given too.
    assert [f.name for f in read_transforms(tmp_path / "transforms.json")] == [f.name for f in frames]


def test_opengl_axes_become_opencv(tmp_path: Path) -> None:
    # An OpenGL camera at z = 5 with identity rotation looks down -z at the origin, world +y up.
    matrix = [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 5], [0, 0, 0, 1]]
    write_json(
        tmp_path / "t.json",
        {"fl_x": 10, "w": 8, "h": 6, "frames": [{"file_path": "a.png", "transform_matrix": matrix}]},
    )
    (frame,) = read_transforms(tmp_path / "t.json")
    np.testing.assert_allclose(frame.R @ np.zeros(3) + frame.t, [0, 0, 5])  # origin is 5 in front
    np.testing.assert_allclose(frame.R @ [0, 1, 0], [0, -1, 0])  # world up is image up (-y)
    np.testing.assert_allclose(frame.R @ [1, 0, 0], [1, 0, 0])
    assert tuple(frame.intrinsics) == (10.0, 10.0, 4.0, 3.0, 0.0, 0.0, 0.0, 0.0)


def test_per_frame_intrinsics_override(tmp_path: Path) -> None:
    R, t = random_pose(0)
    meta = {
        "fl_x": 50.0,
        "w": 40,
        "h": 30,
        "frames": [
            {"file_path": "a.png", "transform_matrix": opengl_c2w(R, t)},
            {
                "file_path": "b.png",
                "transform_matrix": opengl_c2w(R, t),
                "fl_x": 70.0,
                "fl_y": 71.0,
                "w": 20,
                "h": 10,
                "k1": 0.2,
            },
        ],
    }
    a, b = read_transforms(write_json(tmp_path / "transforms.json", meta))
    assert (a.width, a.height, a.intrinsics.fx, a.intrinsics.fy, a.intrinsics.cx, a.intrinsics.k1) == (
        40,
        30,
        50,
        50,
        20,
        0,
    )
    assert (b.width, b.height, b.intrinsics.fx, b.intrinsics.fy, b.intrinsics.cy, b.intrinsics.k1) == (
        20,
        10,
        70,
        71,
        5,
        0.2,
    )


def test_blender_split_angles_and_image_headers(tmp_path: Path) -> None:
    angle = 0.69
    for split, n in (("train", 3), ("test", 2)):
        frames = []
        for i in range(n):
            write_png(tmp_path / split / f"r_{i}.png", 40, 30, "RGBA")
            frames.append(
                {"file_path": f"./{split}/r_{i}", "rotation": 0.0, "transform_matrix": opengl_c2w(*random_pose(i))}
            )
        write_json(tmp_path / f"transforms_{split}.json", {"camera_angle_x": angle, "frames": frames})
    write_json(tmp_path / "transforms_val.json", {"camera_angle_x": angle, "frames": [{"file_path": "./val/x"}]})
    frames = read_transforms(tmp_path)
    assert [(f.name, f.split) for f in frames] == [
        ("train/r_0.png", "train"),
        ("train/r_1.png", "train"),
        ("train/r_2.png", "train"),
        ("test/r_0.png", "test"),
        ("test/r_1.png", "test"),
    ]
    focal = 0.5 * 40 / math.tan(0.5 * angle)
    for f in frames:
        assert (f.width, f.height) == (40, 30)
        assert f.intrinsics == pytest.approx((focal, focal, 20.0, 15.0, 0, 0, 0, 0))


def test_camera_angle_y_and_jpg_fallback(tmp_path: Path) -> None:
    write_png(tmp_path / "img.jpg", 16, 12)
    meta = {
        "camera_angle_x": 1.0,
        "camera_angle_y": 0.8,
        "frames": [{"file_path": "img", "transform_matrix": np.eye(4).tolist()}],
    }
    (frame,) = read_transforms(write_json(tmp_path / "transforms.json", meta))
    assert frame.name == "img.jpg"
    assert frame.intrinsics.fx == pytest.approx(8 / math.tan(0.5))
    assert frame.intrinsics.fy == pytest.approx(6 / math.tan(0.4))


def _frame(**overrides) -> dict:
    frame = {"file_path": "a.png", "transform_matrix": np.eye(4).tolist()}
    frame.update(overrides)
    return {k: v for k, v in frame.items() if v is not None}


@pytest.mark.parametrize(
    ("meta", "match"),
    [
        (
            {"fl_x": 5, "w": 4, "h": 4, "frames": [_frame(), _frame(transform_matrix=None)]},
            r"frame 1 \(a.png\): transform_matrix",
        ),
        ({"fl_x": 5, "w": 4, "h": 4, "frames": [_frame(transform_matrix=[[1, 0], [0, 1]])]}, "frame 0.*4x4"),
        ({"fl_x": 5, "w": 4, "h": 4, "frames": [_frame(transform_matrix=(2 * np.eye(4)).tolist())]}, "not orthonormal"),
        ({"fl_x": 5, "w": 4, "h": 4, "frames": [_frame(file_path=None)]}, "frame 0: missing or malformed 'file_path'"),
        ({"fl_x": "5", "w": 4, "h": 4, "frames": [_frame()]}, "fl_x must be a finite number"),
        ({"w": 4, "h": 4, "frames": [_frame()]}, "needs fl_x or camera_angle_x"),
        ({"fl_x": 5, "w": 4.5, "h": 4, "frames": [_frame()]}, "positive integers"),
        ({"fl_x": -5, "w": 4, "h": 4, "frames": [_frame()]}, "focal lengths must be positive"),
        ({"camera_angle_x": 4.0, "w": 4, "h": 4, "frames": [_frame()]}, r"camera_angle_x must be in \(0, pi\)"),
        ({"fl_x": 5, "w": 4, "h": 4, "camera_model": "OPENCV_FISHEYE", "frames": [_frame()]}, "OPENCV_FISHEYE"),
        ({"fl_x": 5, "w": 4, "h": 4, "frames": [_frame(k3=0.1)]}, "k3 is not supported"),
        ({"fl_x": 5, "w": 4, "h": 4}, "'frames'"),
        ([1, 2], "not a JSON object"),
    ],
)
def test_bad_values_are_input_errors(tmp_path: Path, meta, match: str) -> None:
    path = write_json(tmp_path / "transforms.json", meta)
    with pytest.raises(InputError, match=match) as info:
        read_transforms(tmp_path)
    assert info.value.path == path


def test_invalid_json_and_missing_files(tmp_path: Path) -> None:
    (tmp_path / "transforms.json").write_text("{ not json")
    with pytest.raises(InputError, match="not valid JSON"):
        read_transforms(tmp_path)
    with pytest.raises(InputError, match="no transforms.json"):
        read_transforms(tmp_path / "elsewhere")
    write_json(tmp_path / "transforms.json", {"camera_angle_x": 1.0, "frames": [_frame(file_path="gone")]})
    with pytest.raises(InputError, match="missing") as info:
        read_transforms(tmp_path)
    assert info.value.path == tmp_path / "gone.png"


def test_ply_points(tmp_path: Path) -> None:
    assert read_transforms_points(write_json(tmp_path / "transforms.json", {"frames": []})) is None
    xyz = np.random.default_rng(0).normal(size=(5, 3)).astype(np.float32)
    vertex = np.empty(5, dtype=[("x", "f4"), ("y", "f4"), ("z", "f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1")])
    vertex["x"], vertex["y"], vertex["z"] = xyz.T
    vertex["red"], vertex["green"], vertex["blue"] = 1, 2, 3
    PlyData([PlyElement.describe(vertex, "vertex")]).write(str(tmp_path / "sparse_pc.ply"))
    write_json(tmp_path / "transforms.json", {"ply_file_path": "sparse_pc.ply", "frames": []})
    points, colors = read_transforms_points(tmp_path)
    np.testing.assert_array_equal(points, xyz.astype(np.float64))
    assert colors.dtype == np.uint8 and colors.tolist() == [[1, 2, 3]] * 5
    write_json(tmp_path / "transforms.json", {"ply_file_path": "nope.ply", "frames": []})
    with pytest.raises(InputError, match="missing"):
        read_transforms_points(tmp_path)


def test_fox_scene(fox: Path) -> None:
    frames = read_transforms(fox)
    assert len(frames) == 44
    assert all((f.width, f.height) == (1080, 1920) and f.intrinsics.is_distorted for f in frames)
    assert all(f.image_path.is_file() for f in frames)
    centers = np.stack([-f.R.T @ f.t for f in frames])
    # The photos circle the fox: the point nearest to every optical axis lies in front of every camera
    # and projects inside every image.
    axes = np.stack([f.R[2] for f in frames])
    lhs = sum(np.eye(3) - np.outer(a, a) for a in axes)
    rhs = sum((np.eye(3) - np.outer(a, a)) @ c for a, c in zip(axes, centers))
    target = np.linalg.solve(lhs, rhs)
    for f in frames:
        x, y, z = f.R @ target + f.t
        assert z > 0
        k = f.intrinsics
        u, v = k.fx * x / z + k.cx, k.fy * y / z + k.cy
        assert 0 <= u <= f.width and 0 <= v <= f.height
