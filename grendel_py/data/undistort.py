"""Undistort photos taken with COLMAP's OpenCV-family cameras into the pinhole model the renderer uses.

Distortion is COLMAP's / OpenCV's (k1, k2 radial, p1, p2 tangential) applied to normalised image coordinates
``(x, y) = ((u - cx) / fx, (v - cy) / fy)``; pixel (i, j) is centred at (i + 0.5, j + 0.5). The undistorted
image keeps the distorted one's intrinsics and size, so some border pixels sample outside it and become 0.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F

from grendel_py.data.colmap import ColmapCamera
from grendel_py.errors import InputError


class OpenCVIntrinsics(NamedTuple):
    """Pinhole intrinsics (pixels) plus OpenCV distortion coefficients; all zeros means no distortion."""

    fx: float
    fy: float
    cx: float
    cy: float
    k1: float = 0.0
    k2: float = 0.0
    p1: float = 0.0
    p2: float = 0.0

    @property
    def is_distorted(self) -> bool:
        return any(c != 0.0 for c in (self.k1, self.k2, self.p1, self.p2))


def opencv_intrinsics(camera: ColmapCamera, source: str | Path | None = None) -> OpenCVIntrinsics:
    """The camera as pinhole + OpenCV distortion; ``source`` (the cameras file) is named in errors.

    SIMPLE_PINHOLE, PINHOLE, SIMPLE_RADIAL, RADIAL and OPENCV are supported; other models raise InputError.
    """
    p = [float(v) for v in camera.params]
    if camera.model == "SIMPLE_PINHOLE":
        return OpenCVIntrinsics(p[0], p[0], p[1], p[2])
    if camera.model == "PINHOLE":
        return OpenCVIntrinsics(*p[:4])
    if camera.model == "SIMPLE_RADIAL":
        return OpenCVIntrinsics(p[0], p[0], p[1], p[2], k1=p[3])
    if camera.model == "RADIAL":
        return OpenCVIntrinsics(p[0], p[0], p[1], p[2], k1=p[3], k2=p[4])
    if camera.model == "OPENCV":
        return OpenCVIntrinsics(*p[:8])
    problem = f"camera model {camera.model} is not supported; undistort with colmap image_undistorter"
    raise InputError(source, f"camera {camera.camera_id}: {problem}")


def distort(
    x: torch.Tensor, y: torch.Tensor, k1: float, k2: float, p1: float, p2: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply OpenCV distortion to normalised coordinates ``x, y`` (any shape); returns the distorted pair."""
    x2, y2, xy = x * x, y * y, x * y
    r2 = x2 + y2
    radial = 1.0 + r2 * (k1 + k2 * r2)
    xd = x * radial + 2.0 * p1 * xy + p2 * (r2 + 2.0 * x2)
    yd = y * radial + 2.0 * p2 * xy + p1 * (r2 + 2.0 * y2)
    return xd, yd


def undistort_image(
    image: torch.Tensor, fx: float, fy: float, cx: float, cy: float, k1: float, k2: float, p1: float, p2: float
) -> torch.Tensor:
    """Undistort ``image`` [H, W, C] (float) to the pinhole image [H, W, C] with the same intrinsics.

    Each output pixel centre is mapped through the distortion to its source position, which is sampled
    bilinearly; positions outside the source read 0.
    """
    if image.dim() != 3 or not image.is_floating_point():
        raise ValueError(f"undistort_image: expected a float [H, W, C] tensor, got {image.dtype} {tuple(image.shape)}")
    h, w = image.shape[:2]
    coords = dict(dtype=torch.float64, device=image.device)
    v, u = torch.meshgrid(torch.arange(h, **coords) + 0.5, torch.arange(w, **coords) + 0.5, indexing="ij")
    xd, yd = distort((u - cx) / fx, (v - cy) / fy, k1, k2, p1, p2)
    # grid_sample with align_corners=False puts pixel i's centre at (2 * (i + 0.5) / W - 1).
    grid = torch.stack([2.0 * (fx * xd + cx) / w - 1.0, 2.0 * (fy * yd + cy) / h - 1.0], dim=-1)
    out = F.grid_sample(
        image.permute(2, 0, 1).unsqueeze(0),
        grid.unsqueeze(0).to(image.dtype),
        mode="bilinear",
        padding_mode="zeros",
        align_corners=False,
    )
    return out[0].permute(1, 2, 0).contiguous()
