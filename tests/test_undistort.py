"""Undistortion: COLMAP model conversion, the distortion formula, and image resampling."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from grendel_py.data.colmap import ColmapCamera
from grendel_py.data.undistort import OpenCVIntrinsics, distort, opencv_intrinsics, undistort_image
from grendel_py.errors import InputError


def test_opencv_intrinsics_of_each_model() -> None:
    def cam(model: str, *params: float) -> ColmapCamera:
        return ColmapCamera(1, model, 10, 10, np.array(params, dtype=np.float64))

    assert opencv_intrinsics(cam("SIMPLE_PINHOLE", 5, 1, 2)) == OpenCVIntrinsics(5, 5, 1, 2)
    assert opencv_intrinsics(cam("PINHOLE", 5, 6, 1, 2)) == OpenCVIntrinsics(5, 6, 1, 2)
    assert opencv_intrinsics(cam("SIMPLE_RADIAL", 5, 1, 2, 0.1)) == OpenCVIntrinsics(5, 5, 1, 2, 0.1)
    assert opencv_intrinsics(cam("RADIAL", 5, 1, 2, 0.1, 0.2)) == OpenCVIntrinsics(5, 5, 1, 2, 0.1, 0.2)
    opencv = opencv_intrinsics(cam("OPENCV", 5, 6, 1, 2, 0.1, 0.2, 0.3, 0.4))
    assert opencv == OpenCVIntrinsics(5, 6, 1, 2, 0.1, 0.2, 0.3, 0.4) and opencv.is_distorted
    assert not opencv_intrinsics(cam("RADIAL", 5, 1, 2, 0, 0)).is_distorted
    with pytest.raises(InputError, match="camera model OPENCV_FISHEYE is not supported; undistort with colmap") as info:
        opencv_intrinsics(cam("OPENCV_FISHEYE", 5, 6, 1, 2, 0, 0, 0, 0), "sparse/cameras.bin")
    assert str(info.value.path) == "sparse/cameras.bin"


@pytest.mark.parametrize("model", ["OPENCV", "RADIAL", "SIMPLE_RADIAL"])
def test_distort_matches_pycolmap(model: str) -> None:
    pycolmap = pytest.importorskip("pycolmap")
    params = {
        "OPENCV": [90, 95, 50, 40, 0.1, -0.05, 0.01, -0.02],
        "RADIAL": [90, 50, 40, 0.1, -0.05],
        "SIMPLE_RADIAL": [90, 50, 40, 0.1],
    }[model]
    theirs = pycolmap.Camera(model=model, width=100, height=80, params=params)
    ours = opencv_intrinsics(ColmapCamera(1, model, 100, 80, np.array(params, dtype=np.float64)))
    xy = np.random.default_rng(0).uniform(-0.6, 0.6, size=(50, 2))
    expected = theirs.img_from_cam(np.concatenate([xy, np.ones((50, 1))], axis=1))
    xd, yd = distort(torch.from_numpy(xy[:, 0]), torch.from_numpy(xy[:, 1]), *ours[4:])
    got = np.stack([ours.fx * xd.numpy() + ours.cx, ours.fy * yd.numpy() + ours.cy], axis=1)
    np.testing.assert_allclose(got, expected, atol=1e-9)


def test_identity_without_distortion() -> None:
    image = torch.rand(13, 17, 3, dtype=torch.float32)
    out = undistort_image(image, 20.0, 21.0, 8.5, 6.5, 0.0, 0.0, 0.0, 0.0)
    torch.testing.assert_close(out, image, atol=1e-5, rtol=0)


def _undistort_points(
    xd: torch.Tensor, yd: torch.Tensor, coeffs: tuple[float, ...]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Invert :func:`distort` by fixed-point iteration (converges for moderate distortion)."""
    x, y = xd.clone(), yd.clone()
    for _ in range(200):
        dx, dy = distort(x, y, *coeffs)
        x, y = x + (xd - dx), y + (yd - dy)
    return x, y


def _pattern(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """A smooth test image as a function of undistorted normalised coordinates, [..., 3]."""
    return torch.stack([0.5 + 0.5 * torch.sin(4 * x) * torch.cos(3 * y), 0.5 + 0.4 * x, y * y], dim=-1)


@pytest.mark.parametrize("coeffs", [(0.1, -0.05, 0.01, -0.02), (-0.2, 0.05, 0.0, 0.0), (0.0, 0.0, 0.02, 0.01)])
def test_undistortion_recovers_pinhole_image(coeffs: tuple[float, ...]) -> None:
    h, w, fx, fy, cx, cy = 90, 120, 100.0, 105.0, 61.0, 44.0
    v, u = torch.meshgrid(
        torch.arange(h, dtype=torch.float64) + 0.5, torch.arange(w, dtype=torch.float64) + 0.5, indexing="ij"
    )
    xn, yn = (u - cx) / fx, (v - cy) / fy
    # The captured (distorted) image: each pixel shows the pattern at its undistorted position.
    x_true, y_true = _undistort_points(xn, yn, coeffs)
    dx, dy = distort(x_true, y_true, *coeffs)
    assert torch.allclose(dx, xn, atol=1e-12) and torch.allclose(dy, yn, atol=1e-12)
    distorted = _pattern(x_true, y_true).float()

    out = undistort_image(distorted, fx, fy, cx, cy, *coeffs)
    assert out.shape == distorted.shape
    expected = _pattern(xn, yn).float()
    # Interior: output pixels whose source position is at least one pixel inside the captured image.
    sx, sy = distort(xn, yn, *coeffs)
    su, sv = fx * sx + cx, fy * sy + cy
    inside = (su > 1.0) & (su < w - 1.0) & (sv > 1.0) & (sv < h - 1.0)
    assert inside.float().mean() > 0.8
    err = (out - expected).abs()[inside]
    assert err.max() < 2e-3
    # Where the source falls outside the capture, the output is black.
    outside = (su < -1.0) | (su > w + 1.0) | (sv < -1.0) | (sv > h + 1.0)
    assert torch.all(out[outside] == 0)
    # And undistortion actually did something.
    if any(coeffs):
        assert (distorted - expected).abs()[inside].max() > 2e-2


def test_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="float"):
        undistort_image(torch.zeros(4, 4, 3, dtype=torch.uint8), 1, 1, 2, 2, 0, 0, 0, 0)
