"""The fused loss kernels (cuda/loss.cu) against the torch loss (grendel_py/loss/pixels.py, the spec), through
:func:`grendel_py.loss.regions.regions_loss` with and without a kernel launcher, on the implementations of
tests/test_kernels.py (host loops, the host CUDA runtime, CuPy on a GPU).

Bounds: the loss and the squared error within 1e-6 relative (float32 sums in another order); the canvas
gradients within 1e-4
relative / 1e-5 x (largest gradient) absolute.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from grendel_py.loss.pixels import HALO, gaussian_window, pad_halo
from grendel_py.loss.regions import Region, regions_loss
from tests.render_scenes import small_camera
from tests.test_kernels import _close_scaled, impl  # noqa: F401  (impl: the fixture)

CASES = {
    # (image height, width), then per region: (y0, x0, h, w), owned fraction
    "whole": [((37, 53), (0, 0, 37, 53), 1.0)],
    "inside": [((70, 90), (20, 33, 21, 30), 0.7)],
    "batch": [((37, 53), (0, 0, 37, 53), 0.5), ((70, 40), (48, 0, 22, 40), 1.0), ((16, 16), (0, 0, 16, 16), 0.9)],
    "nothing_owned": [((40, 40), (8, 8, 17, 19), 0.0)],
}


def _regions(case: str, device: torch.device):
    """Regions cut from random images as the engine holds them: the box of the rank's pixels and a halo of
    HALO pixels, zeros outside the image; random owned masks; the photos and cameras."""
    g = torch.Generator().manual_seed(len(case))
    regions, photos, cameras = [], [], []
    for (height, width), (y0, x0, h, w), share in CASES[case]:
        image = pad_halo(torch.rand(height, width, 3, generator=g))
        canvas = image[y0 : y0 + h + 2 * HALO, x0 : x0 + w + 2 * HALO].contiguous()
        owned = torch.rand(h, w, generator=g) < share
        regions.append(Region(canvas.to(device), owned.to(device), y0, x0))
        photos.append(torch.rand(height, width, 3, generator=g).to(device))
        cameras.append(small_camera(width, height))
    return regions, photos, cameras


def _loss(regions, photos, cameras, lambda_dssim: float, launch):
    leaves = [r.canvas.clone().requires_grad_(True) for r in regions]
    held = [Region(c, r.owned, r.y0, r.x0) for c, r in zip(leaves, regions)]
    loss, squared = regions_loss(held, photos, cameras, lambda_dssim, torch.device("cpu"), launch)
    loss.backward()
    return loss.detach(), squared, [c.grad for c in leaves]


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("lambda_dssim", [0.2, 1.0, 0.0])
def test_loss_matches_spec(impl, case: str, lambda_dssim: float) -> None:  # noqa: F811
    kernels, device = impl
    regions, photos, cameras = _regions(case, device)
    ref, ref_squared, ref_grads = _loss(regions, photos, cameras, lambda_dssim, None)
    got, got_squared, got_grads = _loss(regions, photos, cameras, lambda_dssim, kernels.launch)
    torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-9)
    assert got_squared.dtype == torch.float64
    torch.testing.assert_close(got_squared.cpu(), ref_squared.cpu(), rtol=1e-6, atol=1e-9)
    for b, (g, r) in enumerate(zip(got_grads, ref_grads)):
        _close_scaled(g, r, 1e-4, 1e-5, f"d/d canvas {b}")
    if case == "nothing_owned":
        assert float(got) == 0.0 and all(float(g.abs().max()) == 0.0 for g in got_grads)


def test_loss_of_no_region_is_zero(impl) -> None:  # noqa: F811
    kernels, device = impl
    loss, squared = regions_loss([None, None], [None, None], [None, None], 0.2, device, kernels.launch)
    assert loss == 0.0 and float(squared) == 0.0 and squared.device == device


def test_window_is_the_spec_window() -> None:
    """The kernels' 11 taps (cuda/loss.cuh) are the spec's 1D Gaussian in float32: its 2D window is their outer
    product to float rounding."""
    text = (Path(__file__).resolve().parents[1] / "cuda" / "loss.cuh").read_text()
    body = re.search(r"const float w\[WINDOW\] = \{([^}]*)\}", text).group(1)
    taps = torch.tensor([float(v.strip().rstrip("f")) for v in body.split(",")], dtype=torch.float64)
    torch.testing.assert_close(torch.outer(taps, taps).float(), gaussian_window(), rtol=2e-7, atol=0)
