"""Small random scenes and a direct per-pixel compositing loop shared by the renderer tests."""

from __future__ import annotations

import math

import torch

from grendel_py.data.cameras import Camera, look_at
from grendel_py.model.gaussians import Gaussians
from grendel_py.render.projection import ALPHA_MIN, Splats


def random_gaussians(
    n: int, seed: int = 0, sh_degree: int = 1, dtype=torch.float64, opacity_shift: float = 0.0
) -> Gaussians:
    """``n`` Gaussians in the cube [-1, 1]^3, scales 0.02..0.17, random rotations, opacities and SH."""
    g = torch.Generator().manual_seed(seed)
    return Gaussians(
        means=(torch.rand(n, 3, generator=g, dtype=dtype) - 0.5) * 2,
        log_scales=torch.log(torch.rand(n, 3, generator=g, dtype=dtype) * 0.15 + 0.02),
        quats=torch.randn(n, 4, generator=g, dtype=dtype),
        opacity_logits=torch.randn(n, generator=g, dtype=dtype) * 2 + opacity_shift,
        sh0=torch.randn(n, 1, 3, generator=g, dtype=dtype) * 0.5,
        shN=torch.randn(n, (sh_degree + 1) ** 2 - 1, 3, generator=g, dtype=dtype) * 0.1,
        ids=torch.randperm(n, generator=g),
    )


def small_camera(width: int = 37, height: int = 29, uid: int = 0) -> Camera:
    """A camera 3.7 units from the origin with an off-centre principal point and odd image size."""
    R, t = look_at(torch.tensor([0.0, -1.0, -3.5]), torch.zeros(3), torch.tensor([0.0, -1.0, 0.0]))
    return Camera(
        uid, f"cam{uid}", width, height, 40.0 * width / 37, 42.0 * width / 37, 0.49 * width, 0.52 * height, R, t
    )


def loop_composite(
    splats: Splats, width: int, height: int, background: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Composite every visible splat at every pixel, one pixel and one splat at a time, in (depth, id)
    order with the INRIA rules. Returns (image [H, W, 3], alpha [H, W], number of early-terminated pixels)."""
    visible = splats.visible.nonzero().squeeze(1).tolist()
    order = sorted(visible, key=lambda i: (float(splats.depths[i]), int(splats.ids[i])))
    rows = [
        (splats.means2d[i].tolist(), splats.conics[i].tolist(), float(splats.opacities[i]), splats.colors[i])
        for i in order
    ]
    image = torch.zeros(height, width, 3, dtype=splats.means2d.dtype)
    alpha = torch.zeros(height, width, dtype=splats.means2d.dtype)
    stopped = 0
    for j in range(height):
        for i in range(width):
            px, py = i + 0.5, j + 0.5
            T, color = 1.0, torch.zeros(3, dtype=image.dtype)
            for (mx, my), (a, b, c), o, rgb in rows:
                dx, dy = mx - px, my - py
                a_j = min(0.99, o * math.exp(-0.5 * (a * dx * dx + c * dy * dy) - b * dx * dy))
                if a_j < ALPHA_MIN:
                    continue
                if T * (1.0 - a_j) < 1e-4:
                    stopped += 1
                    break
                color = color + a_j * T * rgb
                T *= 1.0 - a_j
            image[j, i] = color + T * background
            alpha[j, i] = 1.0 - T
    return image, alpha, stopped
