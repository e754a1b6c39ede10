"""COLMAP sparse models: read and write cameras, images and points3D in the .bin and .txt formats.

Record types mirror COLMAP's own (https://colmap.github.io/format.html). Readers raise
:class:`grendel_py.errors.InputError` naming the file and the problem for truncated or malformed input.
Binary files are little-endian; ids are uint32 (cameras, images) or uint64 (points), and an image keypoint
without a 3D point stores point3D id -1 (uint64 max in the file). Other files of a model (rigs, frames) are ignored.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np

from grendel_py.errors import InputError
from grendel_py.fileio import atomic_open


@dataclass
class ColmapCamera:
    """A COLMAP camera: ``model`` is the model name (e.g. "PINHOLE"), ``params`` float64 in COLMAP's order."""

    camera_id: int
    model: str
    width: int
    height: int
    params: np.ndarray


@dataclass
class ColmapImage:
    """A registered image: ``qvec`` (w, x, y, z) and ``tvec`` map world to camera.

    ``xys`` [K, 2] float64 are its 2D keypoints, ``point3D_ids`` [K] int64 the 3D point each observes (-1: none).
    """

    image_id: int
    qvec: np.ndarray
    tvec: np.ndarray
    camera_id: int
    name: str
    xys: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), dtype=np.float64))
    point3D_ids: np.ndarray = field(default_factory=lambda: np.zeros((0,), dtype=np.int64))


@dataclass
class ColmapPoints:
    """All 3D points of a model, as arrays: ``ids`` [P] int64, ``xyz`` [P, 3] float64, ``rgb`` [P, 3] uint8,
    ``error`` [P] float64. Tracks are flat: point p's observations are rows
    ``track_offsets[p]:track_offsets[p+1]`` of ``track_image_ids`` / ``track_point2D_idx`` (int64)."""

    ids: np.ndarray
    xyz: np.ndarray
    rgb: np.ndarray
    error: np.ndarray
    track_offsets: np.ndarray
    track_image_ids: np.ndarray
    track_point2D_idx: np.ndarray

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    @staticmethod
    def empty() -> ColmapPoints:
        """A model without 3D points."""
        return ColmapPoints(
            ids=np.zeros(0, np.int64),
            xyz=np.zeros((0, 3), np.float64),
            rgb=np.zeros((0, 3), np.uint8),
            error=np.zeros(0, np.float64),
            track_offsets=np.zeros(1, np.int64),
            track_image_ids=np.zeros(0, np.int64),
            track_point2D_idx=np.zeros(0, np.int64),
        )


class CameraModel(NamedTuple):
    """One entry of COLMAP's camera model table."""

    model_id: int
    name: str
    num_params: int


CAMERA_MODELS: tuple[CameraModel, ...] = (
    CameraModel(0, "SIMPLE_PINHOLE", 3),
    CameraModel(1, "PINHOLE", 4),
    CameraModel(2, "SIMPLE_RADIAL", 4),
    CameraModel(3, "RADIAL", 5),
    CameraModel(4, "OPENCV", 8),
    CameraModel(5, "OPENCV_FISHEYE", 8),
    CameraModel(6, "FULL_OPENCV", 12),
    CameraModel(7, "FOV", 5),
    CameraModel(8, "SIMPLE_RADIAL_FISHEYE", 4),
    CameraModel(9, "RADIAL_FISHEYE", 5),
    CameraModel(10, "THIN_PRISM_FISHEYE", 12),
    CameraModel(11, "RAD_TAN_THIN_PRISM_FISHEYE", 16),
    CameraModel(12, "SIMPLE_DIVISION", 4),
    CameraModel(13, "DIVISION", 5),
    CameraModel(14, "SIMPLE_FISHEYE", 3),
    CameraModel(15, "FISHEYE", 4),
    CameraModel(16, "EUCM", 6),
    CameraModel(17, "EQUIRECTANGULAR", 2),
)
CAMERA_MODEL_BY_ID: dict[int, CameraModel] = {m.model_id: m for m in CAMERA_MODELS}
CAMERA_MODEL_BY_NAME: dict[str, CameraModel] = {m.name: m for m in CAMERA_MODELS}

_INVALID_POINT3D = np.uint64(np.iinfo(np.uint64).max)  # COLMAP's kInvalidPoint3DId; read back as int64 -1
_KEYPOINT_DTYPE = np.dtype([("x", "<f8"), ("y", "<f8"), ("id", "<i8")])
_POINT_HEADER_DTYPE = np.dtype(
    [("id", "<u8"), ("xyz", "<f8", (3,)), ("rgb", "u1", (3,)), ("error", "<f8"), ("track_len", "<u8")]
)
_TRACK_DTYPE = np.dtype([("image_id", "<u4"), ("point2D_idx", "<u4")])
_CAMERA_HEADER = struct.Struct("<IiQQ")  # camera_id, model_id, width, height
_IMAGE_HEADER = struct.Struct("<I7dI")  # image_id, qvec (w, x, y, z), tvec, camera_id
_U64 = struct.Struct("<Q")


# ----------------------------------------------------------------------------------------------- rotations


def qvec_to_rotmat(qvec: np.ndarray) -> np.ndarray:
    """Rotation matrix [3, 3] float64 of a quaternion (w, x, y, z); the quaternion is normalised first."""
    w, x, y, z = np.asarray(qvec, dtype=np.float64) / np.linalg.norm(qvec)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
            [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
            [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
        ]
    )


def rotmat_to_qvec(R: np.ndarray) -> np.ndarray:
    """Unit quaternion (w, x, y, z) with w >= 0 of a rotation matrix [3, 3] (robust eigenvector method)."""
    (r00, r01, r02), (r10, r11, r12), (r20, r21, r22) = np.asarray(R, dtype=np.float64)
    k = (
        np.array(
            [
                [r00 - r11 - r22, 0.0, 0.0, 0.0],
                [r01 + r10, r11 - r00 - r22, 0.0, 0.0],
                [r02 + r20, r12 + r21, r22 - r00 - r11, 0.0],
                [r21 - r12, r02 - r20, r10 - r01, r00 + r11 + r22],
            ]
        )
        / 3.0
    )
    eigvals, eigvecs = np.linalg.eigh(k, UPLO="L")
    x, y, z, w = eigvecs[:, np.argmax(eigvals)]
    q = np.array([w, x, y, z])
    return -q if q[0] < 0 else q


# ------------------------------------------------------------------------------------------ binary reading


class _Cursor:
    """Reads little-endian records from a whole file held in memory; short reads raise "truncated"."""

    def __init__(self, path: Path):
        self.path = path
        self.data = _read_bytes(path)
        self.pos = 0

    def need(self, n: int, what: str) -> int:
        """Reserve ``n`` bytes for ``what`` and return their start."""
        if n < 0 or self.pos + n > len(self.data):
            raise InputError(
                self.path, f"truncated: {what} needs {n} bytes at offset {self.pos}, file has {len(self.data)}"
            )
        start = self.pos
        self.pos += n
        return start

    def unpack(self, fmt: struct.Struct, what: str) -> tuple:
        return fmt.unpack_from(self.data, self.need(fmt.size, what))

    def array(self, dtype: np.dtype, count: int, what: str) -> np.ndarray:
        dtype = np.dtype(dtype)
        return np.frombuffer(self.data, dtype=dtype, count=count, offset=self.need(count * dtype.itemsize, what))

    def cstring(self, what: str) -> str:
        end = self.data.find(b"\0", self.pos)
        if end < 0:
            raise InputError(self.path, f"truncated: {what} has no terminating NUL byte")
        raw = self.data[self.pos : end]
        self.pos = end + 1
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise InputError(self.path, f"{what} is not valid UTF-8") from e

    def count(self, what: str, min_record_bytes: int) -> int:
        """A uint64 record count, checked against the bytes left so absurd counts fail fast."""
        (n,) = self.unpack(_U64, what)
        if n * min_record_bytes > len(self.data) - self.pos:
            raise InputError(
                self.path,
                f"corrupt or truncated: {what} says {n} records but only {len(self.data) - self.pos} bytes follow",
            )
        return int(n)

    def finish(self) -> None:
        if self.pos != len(self.data):
            raise InputError(
                self.path, f"malformed: {len(self.data) - self.pos} unexpected bytes after the last record"
            )


def _read_bytes(path: Path) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise InputError(path, f"cannot read: {e.strerror or e}") from e


def read_cameras_bin(path: str | Path) -> dict[int, ColmapCamera]:
    """Read ``cameras.bin``: {camera_id: ColmapCamera}."""
    cur = _Cursor(Path(path))
    cameras: dict[int, ColmapCamera] = {}
    for i in range(cur.count("camera count", _CAMERA_HEADER.size)):
        camera_id, model_id, width, height = cur.unpack(_CAMERA_HEADER, f"camera #{i}")
        model = CAMERA_MODEL_BY_ID.get(model_id)
        if model is None:
            raise InputError(path, f"camera {camera_id} has unknown camera model id {model_id}")
        params = cur.array(np.dtype("<f8"), model.num_params, f"params of camera {camera_id}").astype(np.float64)
        cameras[camera_id] = ColmapCamera(camera_id, model.name, int(width), int(height), params)
    cur.finish()
    return cameras


def read_images_bin(path: str | Path) -> dict[int, ColmapImage]:
    """Read ``images.bin``: {image_id: ColmapImage}."""
    cur = _Cursor(Path(path))
    images: dict[int, ColmapImage] = {}
    for i in range(cur.count("image count", _IMAGE_HEADER.size + 1 + _U64.size)):
        image_id, *pose, camera_id = cur.unpack(_IMAGE_HEADER, f"image #{i}")
        name = cur.cstring(f"name of image {image_id}")
        n = cur.count(f"keypoint count of image {image_id}", _KEYPOINT_DTYPE.itemsize)
        kp = cur.array(_KEYPOINT_DTYPE, n, f"keypoints of image {image_id}")
        images[image_id] = ColmapImage(
            image_id=image_id,
            qvec=np.array(pose[:4], dtype=np.float64),
            tvec=np.array(pose[4:], dtype=np.float64),
            camera_id=camera_id,
            name=name,
            xys=np.stack([kp["x"], kp["y"]], axis=1).astype(np.float64),
            point3D_ids=kp["id"].astype(np.int64),
        )
    cur.finish()
    return images


def read_points3D_bin(path: str | Path) -> ColmapPoints:
    """Read ``points3D.bin``. Records are walked once for their offsets, then gathered with numpy."""
    cur = _Cursor(Path(path))
    n = cur.count("point count", _POINT_HEADER_DTYPE.itemsize)
    header_size, track_item = _POINT_HEADER_DTYPE.itemsize, _TRACK_DTYPE.itemsize
    len_at = _POINT_HEADER_DTYPE.fields["track_len"][1]
    data, size = cur.data, len(cur.data)
    starts = np.empty(n, dtype=np.int64)
    pos = cur.pos
    for p in range(n):
        if pos + header_size > size:
            raise InputError(path, f"truncated: point #{p} needs {header_size} bytes at offset {pos}, file has {size}")
        starts[p] = pos
        pos += header_size + track_item * _U64.unpack_from(data, pos + len_at)[0]
    if pos > size:
        raise InputError(path, f"truncated: track of the last point ends at offset {pos}, file has {size}")
    cur.pos = pos
    cur.finish()

    raw = np.frombuffer(data, dtype=np.uint8)
    headers = raw[starts[:, None] + np.arange(header_size)].reshape(-1).view(_POINT_HEADER_DTYPE)
    lengths = headers["track_len"].astype(np.int64)
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    # Byte position of every track element: its point's track start + its rank inside the track.
    rank = np.arange(offsets[-1], dtype=np.int64) - np.repeat(offsets[:-1], lengths)
    elem_start = np.repeat(starts + header_size, lengths) + track_item * rank
    tracks = raw[elem_start[:, None] + np.arange(track_item)].reshape(-1).view(_TRACK_DTYPE)
    return ColmapPoints(
        ids=headers["id"].astype(np.int64),
        xyz=headers["xyz"].astype(np.float64),
        rgb=headers["rgb"].astype(np.uint8),
        error=headers["error"].astype(np.float64),
        track_offsets=offsets,
        track_image_ids=tracks["image_id"].astype(np.int64),
        track_point2D_idx=tracks["point2D_idx"].astype(np.int64),
    )


# -------------------------------------------------------------------------------------------- text reading


def _data_lines(path: Path) -> list[tuple[int, str]]:
    """(1-based line number, stripped line) of every line of a text file, comments included."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise InputError(path, "is not valid UTF-8 text") from e
    except OSError as e:
        raise InputError(path, f"cannot read: {e.strerror or e}") from e
    return [(i + 1, line.strip()) for i, line in enumerate(text.splitlines())]


def _is_skipped(line: str) -> bool:
    return not line or line.startswith("#")


@contextmanager
def _parsing(path: Path, lineno: int, what: str) -> Iterator[None]:
    """Turn ValueError / IndexError raised while parsing line ``lineno`` into an InputError."""
    try:
        yield
    except (ValueError, IndexError) as e:
        raise InputError(path, f"line {lineno}: malformed {what} ({e})") from e


def read_cameras_txt(path: str | Path) -> dict[int, ColmapCamera]:
    """Read ``cameras.txt``: lines ``CAMERA_ID MODEL WIDTH HEIGHT PARAMS...``."""
    path = Path(path)
    cameras: dict[int, ColmapCamera] = {}
    for lineno, line in _data_lines(path):
        if _is_skipped(line):
            continue
        tok = line.split()
        if len(tok) < 4:
            raise InputError(path, f"line {lineno}: malformed camera: expected CAMERA_ID MODEL WIDTH HEIGHT PARAMS...")
        model = CAMERA_MODEL_BY_NAME.get(tok[1])
        if model is None:
            raise InputError(path, f"line {lineno}: unknown camera model {tok[1]!r}")
        if len(tok) != 4 + model.num_params:
            raise InputError(path, f"line {lineno}: {model.name} needs {model.num_params} params, got {len(tok) - 4}")
        with _parsing(path, lineno, "camera"):
            camera_id, width, height = int(tok[0]), int(tok[2]), int(tok[3])
            params = np.array(tok[4:], dtype=np.float64)
        cameras[camera_id] = ColmapCamera(camera_id, model.name, width, height, params)
    return cameras


def read_images_txt(path: str | Path) -> dict[int, ColmapImage]:
    """Read ``images.txt``: per image a line ``IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME`` then a
    (possibly empty) line of ``X Y POINT3D_ID`` triples. NAME is the rest of its line."""
    path = Path(path)
    lines = iter(_data_lines(path))
    images: dict[int, ColmapImage] = {}
    for lineno, line in lines:
        if _is_skipped(line):
            continue
        tok = line.split(maxsplit=9)
        if len(tok) != 10:
            raise InputError(
                path, f"line {lineno}: malformed image: expected IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME"
            )
        kp_lineno, kp_line = next(lines, (None, None))
        if kp_line is None:
            raise InputError(path, f"truncated: image on line {lineno} has no keypoint line")
        with _parsing(path, lineno, "image"):
            image_id, camera_id = int(tok[0]), int(tok[8])
            qvec, tvec = np.array(tok[1:5], dtype=np.float64), np.array(tok[5:8], dtype=np.float64)
        with _parsing(path, kp_lineno, "keypoints"):
            values = np.array(kp_line.split(), dtype=np.float64)
        if values.size % 3:
            raise InputError(
                path, f"line {kp_lineno}: malformed keypoints: {values.size} values is not a multiple of 3"
            )
        values = values.reshape(-1, 3)
        images[image_id] = ColmapImage(
            image_id, qvec, tvec, camera_id, tok[9], values[:, :2].copy(), values[:, 2].astype(np.int64)
        )
    return images


def read_points3D_txt(path: str | Path) -> ColmapPoints:
    """Read ``points3D.txt``: lines ``POINT3D_ID X Y Z R G B ERROR (IMAGE_ID POINT2D_IDX)...``."""
    path = Path(path)
    ids, xyz, rgb, err, lengths, track = [], [], [], [], [], []
    for lineno, line in _data_lines(path):
        if _is_skipped(line):
            continue
        tok = line.split()
        if len(tok) < 8 or (len(tok) - 8) % 2:
            raise InputError(path, f"line {lineno}: malformed point: expected POINT3D_ID X Y Z R G B ERROR TRACK[]")
        with _parsing(path, lineno, "point"):
            point_id, position, color, error = (
                int(tok[0]),
                [float(v) for v in tok[1:4]],
                [int(v) for v in tok[4:7]],
                float(tok[7]),
            )
            elements = [int(v) for v in tok[8:]]
        if not all(0 <= c <= 255 for c in color):
            raise InputError(path, f"line {lineno}: malformed point: color {color} outside 0..255")
        ids.append(point_id)
        xyz.append(position)
        rgb.append(color)
        err.append(error)
        track.extend(elements)
        lengths.append(len(elements) // 2)
    offsets = np.zeros(len(ids) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    track_arr = np.array(track, dtype=np.int64).reshape(-1, 2)
    return ColmapPoints(
        ids=np.array(ids, dtype=np.int64),
        xyz=np.array(xyz, dtype=np.float64).reshape(-1, 3),
        rgb=np.array(rgb, dtype=np.uint8).reshape(-1, 3),
        error=np.array(err, dtype=np.float64),
        track_offsets=offsets,
        track_image_ids=track_arr[:, 0].copy(),
        track_point2D_idx=track_arr[:, 1].copy(),
    )


# ------------------------------------------------------------------------------------------------- models

_READERS = {
    ".bin": (read_cameras_bin, read_images_bin, read_points3D_bin),
    ".txt": (read_cameras_txt, read_images_txt, read_points3D_txt),
}
_STEMS = ("cameras", "images", "points3D")


def find_model_format(sparse_dir: str | Path) -> str | None:
    """ ".bin" or ".txt" if ``sparse_dir`` holds a complete model in that format (.bin preferred), else None."""
    sparse_dir = Path(sparse_dir)
    for ext in (".bin", ".txt"):
        if all((sparse_dir / f"{stem}{ext}").is_file() for stem in _STEMS):
            return ext
    return None


def read_model(sparse_dir: str | Path) -> tuple[dict[int, ColmapCamera], dict[int, ColmapImage], ColmapPoints]:
    """Read cameras, images and points3D from ``sparse_dir`` (.bin files preferred over .txt)."""
    sparse_dir = Path(sparse_dir)
    ext = find_model_format(sparse_dir)
    if ext is None:
        raise InputError(sparse_dir, "no COLMAP model here (need cameras, images and points3D as .bin or .txt)")
    read_cams, read_imgs, read_pts = _READERS[ext]
    return (
        read_cams(sparse_dir / f"cameras{ext}"),
        read_imgs(sparse_dir / f"images{ext}"),
        read_pts(sparse_dir / f"points3D{ext}"),
    )


# ------------------------------------------------------------------------------------------------ writing


def _check_camera(cam: ColmapCamera) -> CameraModel:
    model = CAMERA_MODEL_BY_NAME.get(cam.model)
    if model is None:
        raise ValueError(f"camera {cam.camera_id}: unknown camera model {cam.model!r}")
    if np.asarray(cam.params).shape != (model.num_params,):
        raise ValueError(f"camera {cam.camera_id}: {cam.model} needs {model.num_params} params")
    return model


def _check_name(img: ColmapImage, text: bool) -> None:
    """COLMAP ends binary names at NUL and text names at the first space."""
    bad = any(c.isspace() for c in img.name) if text else "\0" in img.name
    if not img.name or bad:
        fmt = "text" if text else "binary"
        raise ValueError(f"image {img.image_id}: name {img.name!r} cannot be stored in a COLMAP {fmt} model")


def _cameras_bin(cameras: dict[int, ColmapCamera]) -> bytes:
    out = [_U64.pack(len(cameras))]
    for cam in cameras.values():
        model = _check_camera(cam)
        out.append(_CAMERA_HEADER.pack(cam.camera_id, model.model_id, cam.width, cam.height))
        out.append(np.asarray(cam.params, dtype="<f8").tobytes())
    return b"".join(out)


def _images_bin(images: dict[int, ColmapImage]) -> bytes:
    out = [_U64.pack(len(images))]
    for img in images.values():
        _check_name(img, text=False)
        out.append(
            _IMAGE_HEADER.pack(img.image_id, *np.asarray(img.qvec, float), *np.asarray(img.tvec, float), img.camera_id)
        )
        out.append(img.name.encode("utf-8") + b"\0")
        kp = np.empty(len(img.point3D_ids), dtype=_KEYPOINT_DTYPE)
        xys = np.asarray(img.xys, dtype=np.float64).reshape(-1, 2)
        kp["x"], kp["y"], kp["id"] = xys[:, 0], xys[:, 1], img.point3D_ids
        out.append(_U64.pack(len(kp)) + kp.tobytes())
    return b"".join(out)


def _points_bin(points: ColmapPoints) -> bytes:
    n = len(points)
    offsets = np.asarray(points.track_offsets, dtype=np.int64)
    lengths = np.diff(offsets)
    headers = np.empty(n, dtype=_POINT_HEADER_DTYPE)
    headers["id"], headers["xyz"], headers["rgb"] = points.ids, points.xyz, points.rgb
    headers["error"], headers["track_len"] = points.error, lengths
    tracks = np.empty(int(offsets[-1]), dtype=_TRACK_DTYPE)
    tracks["image_id"], tracks["point2D_idx"] = points.track_image_ids, points.track_point2D_idx
    hsize, tsize = _POINT_HEADER_DTYPE.itemsize, _TRACK_DTYPE.itemsize
    starts = 8 + hsize * np.arange(n, dtype=np.int64) + tsize * offsets[:-1]
    out = np.empty(8 + hsize * n + tsize * len(tracks), dtype=np.uint8)
    out[:8] = np.frombuffer(_U64.pack(n), dtype=np.uint8)
    out[starts[:, None] + np.arange(hsize)] = headers.view(np.uint8).reshape(n, hsize)
    rank = np.arange(len(tracks), dtype=np.int64) - np.repeat(offsets[:-1], lengths)
    elem_start = np.repeat(starts + hsize, lengths) + tsize * rank
    out[elem_start[:, None] + np.arange(tsize)] = tracks.view(np.uint8).reshape(-1, tsize)
    return out.tobytes()


def _cameras_txt(cameras: dict[int, ColmapCamera]) -> str:
    lines = [
        "# Camera list with one line of data per camera:",
        "#   CAMERA_ID, MODEL, WIDTH, HEIGHT, PARAMS[]",
        f"# Number of cameras: {len(cameras)}",
    ]
    for cam in cameras.values():
        _check_camera(cam)
        lines.append(
            " ".join(
                [str(cam.camera_id), cam.model, str(cam.width), str(cam.height), *map(repr, map(float, cam.params))]
            )
        )
    return "\n".join(lines) + "\n"


def _images_txt(images: dict[int, ColmapImage]) -> str:
    lines = [
        "# Image list with two lines of data per image:",
        "#   IMAGE_ID, QW, QX, QY, QZ, TX, TY, TZ, CAMERA_ID, NAME",
        "#   POINTS2D[] as (X, Y, POINT3D_ID)",
        f"# Number of images: {len(images)}",
    ]
    for img in images.values():
        _check_name(img, text=True)
        pose = map(repr, map(float, [*img.qvec, *img.tvec]))
        lines.append(" ".join([str(img.image_id), *pose, str(img.camera_id), img.name]))
        xys = np.asarray(img.xys, dtype=np.float64).reshape(-1, 2)
        lines.append(" ".join(f"{x!r} {y!r} {int(i)}" for (x, y), i in zip(xys.tolist(), img.point3D_ids)))
    return "\n".join(lines) + "\n"


def _points_txt(points: ColmapPoints) -> str:
    lines = [
        "# 3D point list with one line of data per point:",
        "#   POINT3D_ID, X, Y, Z, R, G, B, ERROR, TRACK[] as (IMAGE_ID, POINT2D_IDX)",
        f"# Number of points: {len(points)}",
    ]
    offsets = np.asarray(points.track_offsets, dtype=np.int64).tolist()
    track = np.stack([points.track_image_ids, points.track_point2D_idx], axis=1).astype(np.int64).tolist()
    for p, (pid, xyz, rgb, err) in enumerate(
        zip(points.ids.tolist(), points.xyz.tolist(), points.rgb.tolist(), points.error.tolist())
    ):
        fields = [str(pid), *map(repr, xyz), *map(str, rgb), repr(err)]
        fields += [f"{i} {k}" for i, k in track[offsets[p] : offsets[p + 1]]]
        lines.append(" ".join(fields))
    return "\n".join(lines) + "\n"


def write_model(
    sparse_dir: str | Path,
    cameras: dict[int, ColmapCamera],
    images: dict[int, ColmapImage],
    points: ColmapPoints,
    binary: bool = True,
) -> None:
    """Write a model as cameras/images/points3D ``.bin`` (or ``.txt``) in ``sparse_dir`` (created if needed).

    Each file is replaced atomically. Files of the other format already in the directory are left alone,
    and :func:`read_model` prefers ``.bin``. Raises ValueError for records COLMAP cannot store.
    """
    sparse_dir = Path(sparse_dir)
    sparse_dir.mkdir(parents=True, exist_ok=True)
    if binary:
        blobs = {
            "cameras.bin": _cameras_bin(cameras),
            "images.bin": _images_bin(images),
            "points3D.bin": _points_bin(points),
        }
    else:
        texts = {
            "cameras.txt": _cameras_txt(cameras),
            "images.txt": _images_txt(images),
            "points3D.txt": _points_txt(points),
        }
        blobs = {name: text.encode("utf-8") for name, text in texts.items()}
    for name, data in blobs.items():
        with atomic_open(sparse_dir / name) as f:
            f.write(data)
