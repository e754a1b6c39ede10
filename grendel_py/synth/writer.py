"""A synthetic COLMAP dataset on disk: the images, the cameras, and sparse points sampled on the surfaces with
their tracks (the views that see them), as a structure-from-motion run would give.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from grendel_py.data.cameras import Camera
from grendel_py.data.colmap import ColmapCamera, ColmapImage, ColmapPoints, rotmat_to_qvec, write_model
from grendel_py.errors import InputError
from grendel_py.outputs import staged_dir
from grendel_py.synth.intersect import cast_groups, dot
from grendel_py.synth.presets import check_preset, synthetic_cameras, synthetic_scene
from grendel_py.synth.raytrace import TILE, render_samples, tile_candidates, tile_grid, to_uint8
from grendel_py.synth.scene import DTYPE, Scene


@dataclass(frozen=True)
class SynthSummary:
    """What :func:`write_synthetic` wrote: image count and size, 3D point count and the scene's extent."""

    n_images: int
    n_points: int
    width: int
    height: int
    extent: float


@dataclass(frozen=True)
class _Spec:
    """Generation parameters of a preset: points are sampled from every ``sample_every``-th view on a pixel
    grid of stride ``sample_stride``, merged on a ``voxel`` grid; tracks keep at most ``max_track`` views."""

    sample_every: int
    sample_stride: int
    voxel: float
    max_track: int


_SPECS = {
    "object": _Spec(sample_every=3, sample_stride=5, voxel=0.035, max_track=16),
    "city": _Spec(sample_every=3, sample_stride=8, voxel=1.3, max_track=12),
}


def _surface_samples(
    colour: torch.Tensor, points: torch.Tensor, stride: int, offset: int
) -> tuple[np.ndarray, np.ndarray]:
    """Hit points (float64 [P, 3]) and their shaded colours (uint8 [P, 3]) of the first sample of every
    ``stride``-th pixel (rows and columns from ``offset``); ``colour``, ``points`` as from :func:`render_samples`."""
    p = points[offset::stride, offset::stride, 0].reshape(-1, 3)
    c = colour[offset::stride, offset::stride, 0].reshape(-1, 3)
    hit = ~torch.isnan(p[:, 0])
    return p[hit].to(torch.float64).numpy(), to_uint8(c[hit])


def _merge_voxels(xyz: np.ndarray, rgb: np.ndarray, voxel: float) -> tuple[np.ndarray, np.ndarray]:
    """Keep the first point (in input order) of each ``voxel``-sized grid cell."""
    keys = np.floor(xyz / voxel).astype(np.int64)
    first = np.sort(np.unique(keys, axis=0, return_index=True)[1])
    return xyz[first], rgb[first]


def _observe(scene: Scene, cam: Camera, xyz: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Points [P, 3] that ``cam`` sees: their indices (ascending) and pixel positions (float64 [V, 2]).

    A point is seen when it projects inside the image and a ray from the camera centre towards it hits
    nothing closer than 0.1% short of it.
    """
    x = torch.from_numpy(xyz)
    u, v, inside = cam.pixels(x)
    idx = torch.nonzero(inside).squeeze(1)
    if idx.numel() == 0:
        return np.zeros(0, dtype=np.int64), np.zeros((0, 2))
    center = cam.center
    d = x[idx] - center
    dist = torch.sqrt(dot(d, d))
    tile = torch.floor(v[idx] / TILE).to(torch.int64) * tile_grid(cam)[1] + torch.floor(u[idx] / TILE).to(torch.int64)
    hits = cast_groups(
        scene, center.to(DTYPE), (d / dist[:, None]).to(DTYPE)[:, None, :], tile_candidates(scene, cam)[tile]
    )
    seen = hits.t.to(torch.float64) >= dist * (1.0 - 1e-3)
    return idx[seen].numpy(), torch.stack([u[idx], v[idx]], dim=1)[seen].numpy()


def _colmap_cameras(cams: list[Camera]) -> tuple[dict[int, ColmapCamera], list[int]]:
    """PINHOLE cameras, one per distinct intrinsics (ids from 1 in order of first use), and each view's id."""
    ids: dict[tuple, int] = {}
    for cam in cams:
        ids.setdefault((cam.width, cam.height, cam.fx, cam.fy, cam.cx, cam.cy), len(ids) + 1)
    cameras = {i: ColmapCamera(i, "PINHOLE", k[0], k[1], np.array(k[2:], dtype=np.float64)) for k, i in ids.items()}
    return cameras, [ids[(c.width, c.height, c.fx, c.fy, c.cx, c.cy)] for c in cams]


def _group_rank(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For sorted non-negative int ``keys`` [N]: each row's rank within its run of equal keys, and the run length."""
    counts = np.bincount(keys)
    starts = np.cumsum(counts) - counts
    return np.arange(keys.shape[0]) - starts[keys], counts[keys]


def _build_model(
    cams: list[Camera], xyz: np.ndarray, rgb: np.ndarray, seen: list[tuple[np.ndarray, np.ndarray]], max_track: int
) -> tuple[dict[int, ColmapCamera], dict[int, ColmapImage], ColmapPoints]:
    """COLMAP records from the views each point is seen in (``seen[c]`` = :func:`_observe` of camera c).

    Tracks longer than ``max_track`` keep ``max_track`` evenly spread views; points seen fewer than twice
    are dropped. Image ids are camera index + 1, point ids 1..P in input order.
    """
    point = np.concatenate([s[0] for s in seen]).astype(np.int64)
    view = np.concatenate([np.full(s[0].shape[0], c, dtype=np.int64) for c, s in enumerate(seen)])
    uv = np.concatenate([s[1] for s in seen]).reshape(-1, 2)
    order = np.lexsort((view, point))
    point, view, uv = point[order], view[order], uv[order]
    rank, count = _group_rank(point)
    keep = (rank * max_track) // count > ((rank - 1) * max_track) // count  # all of short tracks, spread otherwise
    point, view, uv = point[keep], view[keep], uv[keep]
    n_seen = np.bincount(point, minlength=xyz.shape[0])
    good = n_seen >= 2
    keep = good[point]
    point, view, uv = point[keep], view[keep], uv[keep]
    new_id = np.cumsum(good)  # 1-based ids of the kept points
    # Keypoint index of each observation inside its image: rank among the image's observations by point.
    by_view = np.lexsort((point, view))
    k = np.empty_like(point)
    k[by_view] = _group_rank(view[by_view])[0]
    cameras, camera_ids = _colmap_cameras(cams)
    per_view = np.bincount(view, minlength=len(cams))
    ends = np.cumsum(per_view)
    images = {}
    for c, cam in enumerate(cams):
        rows = by_view[ends[c] - per_view[c] : ends[c]]
        qvec = rotmat_to_qvec(cam.R.numpy())
        images[c + 1] = ColmapImage(
            c + 1,
            qvec,
            cam.t.numpy().copy(),
            camera_ids[c],
            cam.name,
            xys=uv[rows],
            point3D_ids=new_id[point[rows]].astype(np.int64),
        )
    counts = n_seen[good]
    points = ColmapPoints(
        ids=np.arange(1, counts.shape[0] + 1, dtype=np.int64),
        xyz=xyz[good],
        rgb=rgb[good],
        error=np.zeros(counts.shape[0]),
        track_offsets=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
        track_image_ids=view + 1,
        track_point2D_idx=k,
    )
    return cameras, images, points


# Writing.


def _write(out_dir: Path, scene: Scene, cams: list[Camera], spec: _Spec, samples: int = 2) -> SynthSummary:
    """Render ``cams`` and write images and a sparse model under ``out_dir``, built in a temporary sibling
    directory renamed into place at the end (removed on failure)."""
    with staged_dir(out_dir) as tmp:
        (tmp / "images").mkdir()
        xyz, rgb = [np.zeros((0, 3))], [np.zeros((0, 3), dtype=np.uint8)]
        for v, cam in enumerate(cams):
            image, colour, points = render_samples(scene, cam, samples)
            Image.fromarray(image).save(tmp / "images" / cam.name, format="PNG", compress_level=6)
            if v % spec.sample_every == 0:
                p, c = _surface_samples(
                    colour, points, spec.sample_stride, (v // spec.sample_every) % spec.sample_stride
                )
                xyz.append(p)
                rgb.append(c)
        xyz, rgb = _merge_voxels(np.concatenate(xyz), np.concatenate(rgb), spec.voxel)
        seen = [_observe(scene, cam, xyz) for cam in cams]
        cameras, images, points = _build_model(cams, xyz, rgb, seen, spec.max_track)
        write_model(tmp / "sparse" / "0", cameras, images, points, binary=True)
    return SynthSummary(
        n_images=len(cams), n_points=len(points), width=cams[0].width, height=cams[0].height, extent=scene.extent
    )


def write_synthetic(out_dir: str | Path, preset: str = "object", seed: int = 0) -> SynthSummary:
    """Generate the synthetic dataset ``preset`` (one of :data:`PRESETS`) with ``seed`` into ``out_dir``:
    ``images/NNNN.png`` (RGB) and ``sparse/0/{cameras,images,points3D}.bin`` (PINHOLE, world -> camera poses).

    Deterministic: the same preset and seed give byte-identical files. Raises InputError for an unknown
    preset, a negative seed, or an ``out_dir`` that exists and is not empty; writes nothing on failure.
    """
    check_preset(preset)
    if seed < 0:
        raise InputError(None, f"synthetic seed must be >= 0, got {seed}")
    return _write(Path(out_dir), synthetic_scene(preset, seed), synthetic_cameras(preset, seed), _SPECS[preset])
