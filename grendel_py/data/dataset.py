"""Scenes: cameras, the initial point cloud and lazily loaded, undistorted, downscaled images.

:func:`load_scene` reads a COLMAP model (``sparse/0``, ``sparse`` or the model files directly in the scene
folder, images in ``images_dir``) or a transforms json scene. Cameras are sorted by image name and
``Camera.uid`` is the index in that order; the test split is every ``test_every``-th camera (INRIA's
convention) unless Blender split files define it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from grendel_py.config import DataConfig
from grendel_py.data.cameras import Camera
from grendel_py.data.colmap import find_model_format, qvec_to_rotmat, read_model
from grendel_py.data.points import PointCloud
from grendel_py.data.transforms_json import (
    find_transforms,
    read_transforms,
    read_transforms_points,
    transforms_points_file,
)
from grendel_py.data.undistort import OpenCVIntrinsics, opencv_intrinsics, undistort_image
from grendel_py.data.views import RawView
from grendel_py.errors import InputError, one_line


@dataclass(frozen=True)
class ImageSource:
    """What :meth:`Scene.load_image` needs about a camera's file: its path, raw size and distortion."""

    path: Path
    width: int
    height: int
    intrinsics: OpenCVIntrinsics


@dataclass
class Scene:
    """A loaded scene. Cameras are pinhole, sized after downscaling; ``points_xyz`` [P, 3] float32 and
    ``points_rgb`` [P, 3] uint8 are the initial point cloud (None when the source has none), read from the
    file ``points_path`` (None without one); ``extent`` is INRIA's scene radius: 1.1 x the largest distance
    of a training camera centre from their mean."""

    train_cameras: list[Camera]
    test_cameras: list[Camera]
    points_xyz: torch.Tensor | None
    points_rgb: torch.Tensor | None
    extent: float
    source: Path
    points_path: Path | None = None
    _sources: dict[int, ImageSource] = field(default_factory=dict, repr=False)

    @property
    def points(self) -> PointCloud:
        """The initial point cloud, named by its file (or by the scene when it has none)."""
        return PointCloud(self.points_xyz, self.points_rgb, self.points_path or self.source)

    @property
    def cameras(self) -> list[Camera]:
        """All cameras in uid order."""
        return sorted(self.train_cameras + self.test_cameras, key=lambda c: c.uid)

    def check_images(self) -> None:
        """Check every image file, mostly without decoding it, and raise InputError naming the first one that
        is missing, unreadable, truncated or corrupt, or whose size differs from its camera's. Checked: every
        file's header, the chunk checksums of PNGs; a JPEG that does not end in its end-of-image marker is
        decoded at 1/8 scale."""
        for uid in sorted(self._sources):
            _check_header(self._sources[uid])

    def image_source(self, camera: Camera) -> ImageSource:
        """The camera's image file, raw size and distortion; ValueError for a camera of another scene."""
        src = self._sources.get(camera.uid)
        if src is None:
            raise ValueError(f"camera {camera.uid} ({camera.name}) is not part of scene {self.source}")
        return src

    def channels(self, camera: Camera) -> int:
        """The channels :meth:`load_image` gives for the camera's photo: 4 when the file has alpha, else 3
        (reads only the file's header)."""
        src = self.image_source(camera)
        try:
            with Image.open(src.path) as im:
                return 4 if _has_alpha(im) else 3
        except FileNotFoundError as e:
            raise InputError(src.path, "image file is missing") from e
        except (OSError, SyntaxError, ValueError) as e:
            raise InputError(src.path, _image_problem(e)) from e

    def load_image(self, camera: Camera) -> torch.Tensor:
        """The camera's photo as float32 [H, W, C] in [0, 1], undistorted to the pinhole model and
        area-downscaled to the camera's size: RGB (C = 3), or for a file with alpha (C = 4) its colour
        premultiplied by alpha (i.e. over black), then alpha, so that both filter correctly;
        :func:`over_background` composites it over any background."""
        src = self.image_source(camera)
        image = _read_pixels(src)
        if src.intrinsics.is_distorted:
            image = undistort_image(image, *src.intrinsics)
        if (camera.width, camera.height) != (src.width, src.height):
            image = _resize_area(image, camera.width, camera.height)
        return image


def load_scene(path: str | Path, *, downscale: float = 1.0, test_every: int = 8, images_dir: str = "images") -> Scene:
    """Load the COLMAP or transforms json scene at ``path``; image sizes become round(W / downscale).

    ``images_dir`` (relative to ``path``) is where COLMAP scenes keep their photos; transforms json scenes
    name their files themselves. Only the existence of the image files is checked here.
    """
    path = Path(path)
    if not downscale > 0:
        raise InputError(None, f"downscale must be positive, got {downscale}")
    if test_every < 0:
        raise InputError(None, f"test_every must be >= 0, got {test_every}")
    sparse_dir = next((d for d in (path / "sparse" / "0", path / "sparse", path) if find_model_format(d)), None)
    if sparse_dir is not None:
        views, points = _colmap_views(sparse_dir, path / images_dir)
    elif find_transforms(path) is not None:
        views, points = _transforms_views(path)
    else:
        raise InputError(path, "no scene here: expected a COLMAP model (sparse/0, sparse or here) or transforms.json")
    if points is not None:
        _check_points(points[0], points[2])
    return _build_scene(path, views, points, downscale, test_every)


def scene_from_config(data: DataConfig) -> Scene:
    """:func:`load_scene` with the settings of a config's ``data`` section."""
    return load_scene(data.path, downscale=data.downscale, test_every=data.test_every, images_dir=data.images_dir)


def describe(scene: Scene) -> dict[str, Any]:
    """A JSON-friendly summary: camera counts, image sizes, distortion, extent and point cloud."""
    sizes: dict[str, int] = {}
    for cam in scene.cameras:
        key = f"{cam.width}x{cam.height}"
        sizes[key] = sizes.get(key, 0) + 1
    points = scene.points_xyz
    return {
        "source": str(scene.source),
        "cameras": len(scene.train_cameras) + len(scene.test_cameras),
        "train_cameras": len(scene.train_cameras),
        "test_cameras": len(scene.test_cameras),
        "image_sizes": sizes,
        "distorted_cameras": sum(src.intrinsics.is_distorted for src in scene._sources.values()),
        "extent": scene.extent,
        "points": 0 if points is None else int(points.shape[0]),
        "points_bbox": None
        if points is None or len(points) == 0
        else [points.min(0).values.tolist(), points.max(0).values.tolist()],
    }


# ------------------------------------------------------------------------------------------------ readers

_Points = tuple[np.ndarray, np.ndarray, Path] | None  # xyz [P, 3], rgb [P, 3], the file they come from


def _check_points(xyz: np.ndarray, source: Path) -> None:
    """InputError naming ``source`` if a point of the initial cloud has a non-finite coordinate."""
    bad = np.flatnonzero(~np.isfinite(xyz).all(axis=1))
    if bad.size:
        first = bad[0]
        problem = f"non-finite coordinates in {bad.size} 3D point(s), the first (#{first}) at {xyz[first].tolist()}"
        raise InputError(source, problem)


def _colmap_views(sparse_dir: Path, image_root: Path) -> tuple[list[RawView], _Points]:
    ext = find_model_format(sparse_dir)
    cameras, images, points = read_model(sparse_dir)
    cameras_file, images_file = sparse_dir / f"cameras{ext}", sparse_dir / f"images{ext}"
    if not images:
        raise InputError(images_file, "the model has no registered images")
    views = []
    for img in images.values():
        cam = cameras.get(img.camera_id)
        if cam is None:
            problem = f"image {img.name} refers to camera {img.camera_id}, which is not in {cameras_file.name}"
            raise InputError(images_file, problem)
        pose = np.concatenate([img.qvec, img.tvec])
        if not np.all(np.isfinite(pose)) or not np.any(img.qvec):
            raise InputError(images_file, f"image {img.name} has an invalid pose {pose.tolist()}")
        intrinsics = opencv_intrinsics(cam, cameras_file)
        R = qvec_to_rotmat(img.qvec)
        views.append(RawView(img.name, image_root / img.name, cam.width, cam.height, intrinsics, R, img.tvec, None))
    return views, ((points.xyz, points.rgb, sparse_dir / f"points3D{ext}") if len(points) else None)


def _transforms_views(path: Path) -> tuple[list[RawView], _Points]:
    points = read_transforms_points(path)
    return read_transforms(path), None if points is None else (*points, transforms_points_file(path))


# ------------------------------------------------------------------------------------------------ assembly


def _build_scene(source: Path, views: list[RawView], points: _Points, downscale: float, test_every: int) -> Scene:
    if not views:
        raise InputError(source, "the scene has no images")
    views = sorted(views, key=lambda v: v.name)
    for a, b in zip(views, views[1:]):
        if a.name == b.name:
            raise InputError(source, f"two cameras share the image name {a.name}")
    for view in views:
        if not os.path.exists(view.image_path):
            raise InputError(view.image_path, "image file is missing")
    cameras = [_camera(source, uid, view, downscale) for uid, view in enumerate(views)]
    if any(v.split is not None for v in views):
        is_test = [v.split == "test" for v in views]
    else:
        is_test = [test_every > 0 and uid % test_every == 0 for uid in range(len(views))]
    train = [c for c, test in zip(cameras, is_test) if not test]
    test = [c for c, test in zip(cameras, is_test) if test]
    return Scene(
        train_cameras=train,
        test_cameras=test,
        points_xyz=None if points is None else torch.from_numpy(points[0]).to(torch.float32),
        points_rgb=None if points is None else torch.from_numpy(np.ascontiguousarray(points[1], dtype=np.uint8)),
        extent=_extent(train or cameras),
        source=source,
        points_path=None if points is None else points[2],
        _sources={uid: ImageSource(v.image_path, v.width, v.height, v.intrinsics) for uid, v in enumerate(views)},
    )


def _camera(source: Path, uid: int, view: RawView, downscale: float) -> Camera:
    k = view.intrinsics
    try:
        raw = Camera(
            uid,
            view.name,
            view.width,
            view.height,
            k.fx,
            k.fy,
            k.cx,
            k.cy,
            torch.as_tensor(view.R, dtype=torch.float64),
            torch.as_tensor(view.t, dtype=torch.float64),
            view.image_path,
        )
    except ValueError as e:
        raise InputError(source, str(e)) from e
    width, height = max(1, round(view.width / downscale)), max(1, round(view.height / downscale))
    return raw if (width, height) == (raw.width, raw.height) else raw.scaled(width, height)


def _extent(cameras: list[Camera]) -> float:
    """1.1 x the largest distance of the camera centres from their mean (1.0 when that is 0)."""
    if not cameras:
        return 1.0
    centers = torch.stack([c.center for c in cameras])
    radius = float((centers - centers.mean(0)).norm(dim=1).max())
    return 1.1 * radius if radius > 0 else 1.0


# ------------------------------------------------------------------------------------------------ images


def _check_size(src: ImageSource, im: Image.Image) -> None:
    if im.size != (src.width, src.height):
        raise InputError(src.path, f"image is {im.width}x{im.height} but its camera says {src.width}x{src.height}")


def _check_header(src: ImageSource) -> None:
    """Check the file's size against the camera and that its data is complete, without a full decode: PNG
    chunk checksums; a JPEG that does not end in its end-of-image marker is decoded at 1/8 scale."""
    try:
        with Image.open(src.path) as im:
            _check_size(src, im)
            if im.format == "PNG":
                im.verify()
            elif im.format == "JPEG" and not _ends_with_jpeg_eoi(src.path):
                im.draft("RGB", (max(1, im.width // 8), max(1, im.height // 8)))
                im.load()
    except FileNotFoundError as e:
        raise InputError(src.path, "image file is missing") from e
    except (OSError, SyntaxError, ValueError) as e:  # Pillow reports broken PNG chunks as SyntaxError
        raise InputError(src.path, _image_problem(e)) from e


def _ends_with_jpeg_eoi(path: Path) -> bool:
    """Whether the file's last two bytes are the JPEG end-of-image marker FF D9 (a truncated file lacks it)."""
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        if f.tell() < 2:
            return False
        f.seek(-2, os.SEEK_END)
        return f.read(2) == b"\xff\xd9"


def _image_problem(error: BaseException) -> str:
    """One line saying why Pillow could not read an image file."""
    if isinstance(error, UnidentifiedImageError):
        return "cannot read image: not an image file Pillow knows (corrupt, or an unsupported format)"
    if isinstance(error, OSError) and error.strerror:
        return f"cannot read image: {error.strerror}"
    detail = one_line(str(error)) or type(error).__name__
    return f"cannot read image: corrupt or truncated ({detail})"


def over_background(image: torch.Tensor, background: torch.Tensor) -> torch.Tensor:
    """An image of :meth:`Scene.load_image` (or a region of it, [..., C]) as RGB [..., 3] over ``background``
    [3]: premultiplied colour + (1 - alpha) x background when it has alpha, else the image itself."""
    if image.shape[-1] == 3:
        return image
    return torch.addcmul(image[..., :3], 1.0 - image[..., 3:], background.to(image))


def _has_alpha(im: Image.Image) -> bool:
    return im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info


def _read_pixels(src: ImageSource) -> torch.Tensor:
    """The file as float32 [H, W, C] in [0, 1]: RGB, or colour premultiplied by alpha and alpha (C = 4) for a
    file with alpha; its size must match the camera."""
    try:
        with Image.open(src.path) as im:
            _check_size(src, im)
            has_alpha = _has_alpha(im)
            pixels = np.asarray(im.convert("RGBA" if has_alpha else "RGB"), dtype=np.float32) / 255.0
    except FileNotFoundError as e:
        raise InputError(src.path, "image file is missing") from e
    except (OSError, SyntaxError, ValueError) as e:
        raise InputError(src.path, _image_problem(e)) from e
    if has_alpha:
        pixels[..., :3] *= pixels[..., 3:]
    return torch.from_numpy(np.ascontiguousarray(pixels))


def _resize_area(image: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Resize float [H, W, C] to [height, width, C] with Pillow's box (area) filter, channel by channel."""
    channels = [
        np.asarray(
            Image.fromarray(np.ascontiguousarray(image[..., c].numpy())).resize((width, height), Image.Resampling.BOX)
        )
        for c in range(image.shape[-1])
    ]
    return torch.from_numpy(np.stack(channels, axis=-1))
