"""Read instant-ngp / nerfstudio / Blender ``transforms.json`` scenes.

Intrinsics come from the frame or, failing that, the file's top level: ``fl_x``/``fl_y`` (or ``camera_angle_x``
/ ``camera_angle_y`` in radians), ``cx``, ``cy`` (default: the image centre), ``w``, ``h`` (default: read
from the image file's header) and OpenCV distortion ``k1 k2 p1 p2``. ``transform_matrix`` is camera-to-world
with OpenGL camera axes (x right, y up, looking down -z); it is converted to OpenCV world-to-camera ``R, t``.
``file_path`` is relative to the json's folder; without an extension (Blender) .png and .jpg are tried.
A folder with ``transforms_train.json`` / ``transforms_test.json`` (Blender) gives the train/test split.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from grendel_py.data.points import read_ply_data
from grendel_py.data.undistort import OpenCVIntrinsics
from grendel_py.data.views import RawView
from grendel_py.errors import InputError

SPLIT_FILES = (("transforms_train.json", "train"), ("transforms_test.json", "test"))
SINGLE_FILE = "transforms.json"
_IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".PNG", ".JPG", ".JPEG")
_SUPPORTED_MODELS = ("PINHOLE", "SIMPLE_PINHOLE", "SIMPLE_RADIAL", "RADIAL", "OPENCV")
_OPENGL_TO_OPENCV = np.diag([1.0, -1.0, -1.0])


def find_transforms(path: str | Path) -> list[tuple[Path, str | None]] | None:
    """The json files of a transforms scene at ``path`` (a json file or a folder) with their split, or None."""
    path = Path(path)
    if path.is_file() and path.suffix == ".json":
        return [(path, None)]
    split_files = [(path / name, split) for name, split in SPLIT_FILES if (path / name).is_file()]
    if split_files:
        return split_files
    if (path / SINGLE_FILE).is_file():
        return [(path / SINGLE_FILE, None)]
    return None


def read_transforms(path: str | Path) -> list[RawView]:
    """All frames of the transforms scene at ``path`` (json file or folder), in file order."""
    files = find_transforms(path)
    if files is None:
        raise InputError(path, f"no {SINGLE_FILE} or {SPLIT_FILES[0][0]} here")
    return [frame for json_path, split in files for frame in read_transforms_file(json_path, split)]


def read_transforms_file(json_path: str | Path, split: str | None = None) -> list[RawView]:
    """The frames of one transforms json; ``split`` is recorded in each frame."""
    json_path = Path(json_path)
    meta = _load_json(json_path)
    frames = meta.get("frames")
    if not isinstance(frames, list):
        raise InputError(json_path, "missing or malformed 'frames' list")
    _check_camera_model(json_path, meta, "top level")
    return [_read_frame(json_path, meta, frame, i, split) for i, frame in enumerate(frames)]


def _load_json(path: Path) -> dict[str, Any]:
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise InputError(path, f"cannot read: {e.strerror or e}") from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(path, f"not valid JSON: {e}") from e
    if not isinstance(meta, dict):
        raise InputError(path, "top level is not a JSON object")
    return meta


def _check_camera_model(json_path: Path, entry: dict[str, Any], where: str) -> None:
    model = entry.get("camera_model")
    if model is not None and model not in _SUPPORTED_MODELS:
        raise InputError(json_path, f"{where}: camera_model {model!r} is not supported (only pinhole/OPENCV)")
    if entry.get("is_fisheye"):
        raise InputError(json_path, f"{where}: fisheye cameras are not supported")
    for key in ("k3", "k4"):
        if entry.get(key, 0) != 0:
            raise InputError(json_path, f"{where}: distortion term {key} is not supported (only k1 k2 p1 p2)")


def _read_frame(json_path: Path, meta: dict[str, Any], frame: Any, index: int, split: str | None) -> RawView:
    if not isinstance(frame, dict):
        raise InputError(json_path, f"frame {index}: not a JSON object")
    where = f"frame {index} ({frame.get('file_path', '?')})"
    _check_camera_model(json_path, frame, where)

    def number(key: str, default: float | None = None) -> float | None:
        value = frame.get(key, meta.get(key, default))
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise InputError(json_path, f"{where}: {key} must be a finite number, got {value!r}")
        return float(value)

    file_path = frame.get("file_path")
    if not isinstance(file_path, str) or not file_path:
        raise InputError(json_path, f"frame {index}: missing or malformed 'file_path'")
    image_path = _resolve_image(json_path.parent / file_path)
    width, height = _image_size(json_path, where, image_path, number("w"), number("h"))
    fx, fy = _focal_lengths(json_path, where, width, height, number)
    intrinsics = OpenCVIntrinsics(
        fx,
        fy,
        number("cx", width / 2),
        number("cy", height / 2),
        number("k1", 0.0),
        number("k2", 0.0),
        number("p1", 0.0),
        number("p2", 0.0),
    )
    R, t = _world_to_camera(json_path, where, frame.get("transform_matrix"))
    name = Path(os.path.relpath(image_path, json_path.parent)).as_posix()
    return RawView(name, image_path, width, height, intrinsics, R, t, split)


def _resolve_image(path: Path) -> Path:
    """``path`` if it exists, else the first existing ``path + ext``; a missing extension-less path gets .png."""
    if path.exists():
        return path
    for ext in _IMAGE_EXTENSIONS:
        candidate = path.with_name(path.name + ext)
        if candidate.exists():
            return candidate
    return path if path.suffix else path.with_name(path.name + ".png")


def _image_size(json_path: Path, where: str, image_path: Path, w: float | None, h: float | None) -> tuple[int, int]:
    """(width, height) from the json, else from the image file's header."""
    if w is None or h is None:
        try:
            with Image.open(image_path) as im:
                return im.size
        except FileNotFoundError as e:
            raise InputError(image_path, f"image of {json_path.name} {where} is missing (needed for its size)") from e
        except OSError as e:
            raise InputError(image_path, f"cannot read image header: {e}") from e
    if w != int(w) or h != int(h) or w <= 0 or h <= 0:
        raise InputError(json_path, f"{where}: image size must be positive integers, got w={w} h={h}")
    return int(w), int(h)


def _focal_lengths(json_path: Path, where: str, width: int, height: int, number) -> tuple[float, float]:
    """fx from fl_x else camera_angle_x; fy from fl_y else camera_angle_y else fx (instant-ngp's rules)."""
    fx = number("fl_x")
    if fx is None:
        angle_x = number("camera_angle_x")
        if angle_x is None:
            raise InputError(json_path, f"{where}: needs fl_x or camera_angle_x")
        fx = _focal_from_angle(json_path, where, "camera_angle_x", angle_x, width)
    fy = number("fl_y")
    if fy is None:
        angle_y = number("camera_angle_y")
        fy = fx if angle_y is None else _focal_from_angle(json_path, where, "camera_angle_y", angle_y, height)
    if fx <= 0 or fy <= 0:
        raise InputError(json_path, f"{where}: focal lengths must be positive, got {fx}, {fy}")
    return fx, fy


def _focal_from_angle(json_path: Path, where: str, key: str, angle: float, size: int) -> float:
    if not 0 < angle < math.pi:
        raise InputError(json_path, f"{where}: {key} must be in (0, pi) radians, got {angle}")
    return 0.5 * size / math.tan(0.5 * angle)


def _world_to_camera(json_path: Path, where: str, matrix: Any) -> tuple[np.ndarray, np.ndarray]:
    """OpenCV world-to-camera (R, t) of an OpenGL camera-to-world 4x4 (or 3x4) ``transform_matrix``."""
    try:
        m = np.array(matrix, dtype=np.float64)
    except (TypeError, ValueError):
        m = None
    if m is None or m.shape not in ((4, 4), (3, 4)) or not np.all(np.isfinite(m)):
        raise InputError(json_path, f"{where}: transform_matrix must be a 4x4 matrix of finite numbers")
    rot = m[:3, :3] @ _OPENGL_TO_OPENCV  # columns: OpenCV camera axes in world coordinates
    if not np.allclose(rot.T @ rot, np.eye(3), atol=1e-4) or np.linalg.det(rot) <= 0:
        raise InputError(
            json_path, f"{where}: transform_matrix rotation is not orthonormal (scaled or sheared camera?)"
        )
    u, _, vt = np.linalg.svd(rot)
    R = (u @ vt).T
    return R, -R @ m[:3, 3]


def read_transforms_points(path: str | Path) -> tuple[np.ndarray, np.ndarray] | None:
    """The point cloud named by nerfstudio's ``ply_file_path`` (same world frame as the poses), or None.

    Returns ``xyz`` [P, 3] float64 and ``rgb`` [P, 3] uint8 (grey 128 when the ply has no colours).
    """
    ply_path = transforms_points_file(path)
    return None if ply_path is None else _read_ply_points(ply_path)


def transforms_points_file(path: str | Path) -> Path | None:
    """The point cloud file named by ``ply_file_path`` of the transforms scene at ``path``, or None."""
    files = find_transforms(path)
    if files is None:
        return None
    json_path = files[0][0]
    ply_name = _load_json(json_path).get("ply_file_path")
    if ply_name is None:
        return None
    if not isinstance(ply_name, str):
        raise InputError(json_path, f"ply_file_path must be a string, got {ply_name!r}")
    return json_path.parent / ply_name


def _read_ply_points(ply_path: Path) -> tuple[np.ndarray, np.ndarray]:
    ply = read_ply_data(ply_path, missing="point cloud file is missing")
    if "vertex" not in ply:
        raise InputError(ply_path, "point cloud has no 'vertex' element")
    vertex = ply["vertex"]
    names = vertex.data.dtype.names or ()
    missing = [k for k in ("x", "y", "z") if k not in names]
    if missing:
        raise InputError(ply_path, f"point cloud vertices lack properties {', '.join(missing)}")
    try:
        xyz = np.stack([vertex[k] for k in ("x", "y", "z")], axis=1).astype(np.float64)
    except (TypeError, ValueError) as e:
        raise InputError(ply_path, f"point cloud vertices x, y, z are not numbers: {e}") from e
    if all(k in names for k in ("red", "green", "blue")):
        rgb = np.stack([vertex[k] for k in ("red", "green", "blue")], axis=1).astype(np.uint8)
    else:
        rgb = np.full_like(xyz, 128, dtype=np.uint8)
    return xyz, rgb
