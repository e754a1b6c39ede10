"""Images of a scene from a camera: rays per pixel (supersampled), culled per screen tile, cast and shaded."""

from __future__ import annotations

import numpy as np
import torch

from grendel_py.data.cameras import Camera
from grendel_py.synth.intersect import cast_groups, dot
from grendel_py.synth.scene import DTYPE, Scene
from grendel_py.synth.textures import shade

TILE = 8  # pixels per side of the screen tiles used to cull boxes


def tile_grid(cam: Camera) -> tuple[int, int]:
    """Number of tile rows and columns covering the image."""
    return -(-cam.height // TILE), -(-cam.width // TILE)


def tile_candidates(scene: Scene, cam: Camera) -> torch.Tensor:
    """Boxes that may be seen through each screen tile: [T, K] int64 box indices, -1 padded (T row-major tiles).

    A box is culled from a tile when all 8 of its corners lie outside one of the four planes through the
    camera centre bounding the tile (widened by half a pixel); those planes also exclude everything behind.
    """
    rows, cols = tile_grid(cam)
    n_boxes = scene.box_lo.shape[0]
    if n_boxes == 0:
        return torch.zeros((rows * cols, 0), dtype=torch.int64)
    lo, hi = scene.box_lo, scene.box_hi
    bits = torch.tensor([[(c >> a) & 1 for a in range(3)] for c in range(8)], dtype=torch.bool)
    corners = torch.where(bits, hi[:, None, :], lo[:, None, :])  # [B, 8, 3]
    x, y, z = cam.to_camera(corners).unbind(-1)  # [B, 8]
    u0 = torch.arange(cols, dtype=torch.float64) * TILE - 0.5
    v0 = torch.arange(rows, dtype=torch.float64) * TILE - 0.5
    u1, v1 = u0 + TILE + 1.0, v0 + TILE + 1.0

    def outside(a: float, c: torch.Tensor, coord: torch.Tensor) -> torch.Tensor:
        # [n, B]: all corners have a * coord + c * z < 0
        return (a * coord[None] + c[:, None, None] * z[None] < 0).all(dim=-1)

    out_cols = outside(cam.fx, cam.cx - u0, x) | outside(-cam.fx, u1 - cam.cx, x)  # [cols, B]
    out_rows = outside(cam.fy, cam.cy - v0, y) | outside(-cam.fy, v1 - cam.cy, y)  # [rows, B]
    keep = ~(out_rows[:, None, :] | out_cols[None, :, :]).reshape(rows * cols, n_boxes)
    k = int(keep.sum(dim=1).max())
    order = torch.where(keep, torch.arange(n_boxes), n_boxes).sort(dim=1, stable=True).values[:, :k]
    return torch.where(order == n_boxes, -1, order)


def _trace(scene: Scene, cam: Camera, samples: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Ray trace ``samples`` x ``samples`` sub-pixel rays per pixel (regular grid inside the pixel).

    Returns colours and hit points (NaN: miss), both [Hp, Wp, samples**2, 3] over the image padded to whole
    tiles; sample ``q`` of pixel (i, j) goes through ``(j + (q % s + 0.5) / s, i + (q // s + 0.5) / s)``.
    """
    rows, cols = tile_grid(cam)
    hp, wp, s2 = rows * TILE, cols * TILE, samples * samples
    offsets = (torch.arange(samples, dtype=DTYPE) + 0.5) / samples
    q = torch.arange(s2)
    u = torch.arange(wp, dtype=DTYPE)[None, :, None] + offsets[q % samples][None, None, :]
    v = torch.arange(hp, dtype=DTYPE)[:, None, None] + offsets[q // samples][None, None, :]
    a, b = ((u - cam.cx) / cam.fx).expand(hp, wp, s2), ((v - cam.cy) / cam.fy).expand(hp, wp, s2)
    R = cam.R.tolist()
    d = torch.stack([R[0][k] * a + R[1][k] * b + R[2][k] for k in range(3)], dim=-1)
    d = d / torch.sqrt(dot(d, d))[..., None]

    def tiled(x: torch.Tensor) -> torch.Tensor:  # [Hp, Wp, S, 3] -> [T, tile * tile * S, 3]
        return x.reshape(rows, TILE, cols, TILE, s2, 3).permute(0, 2, 1, 3, 4, 5).reshape(rows * cols, -1, 3)

    def untiled(x: torch.Tensor) -> torch.Tensor:  # inverse of tiled
        return x.reshape(rows, cols, TILE, TILE, s2, 3).permute(0, 2, 1, 3, 4, 5).reshape(hp, wp, s2, 3)

    origin = cam.center.to(DTYPE)
    d_tiled = tiled(d)
    hits = cast_groups(scene, origin, d_tiled, tile_candidates(scene, cam))
    colour, points = shade(scene, origin, d_tiled.reshape(-1, 3), hits)
    return untiled(colour), untiled(points)


def to_uint8(colour: torch.Tensor) -> np.ndarray:
    """Colours in [0, 1] to uint8 (round half up)."""
    return torch.floor(torch.clamp(colour, 0.0, 1.0) * 255.0 + 0.5).to(torch.uint8).numpy()


def render_samples(scene: Scene, cam: Camera, samples: int) -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
    """The image (uint8 [H, W, 3], the mean of each pixel's samples) and the per-sample colours and hit points
    ([H, W, samples**2, 3], see :func:`_trace`)."""
    colour, points = _trace(scene, cam, samples)
    colour, points = colour[: cam.height, : cam.width], points[: cam.height, : cam.width]
    total = colour[:, :, 0]
    for q in range(1, samples * samples):
        total = total + colour[:, :, q]
    return to_uint8(total / (samples * samples)), colour, points


def render(scene: Scene, cam: Camera, samples: int = 2) -> np.ndarray:
    """The camera's image, uint8 [H, W, 3], averaging ``samples`` x ``samples`` rays per pixel."""
    return render_samples(scene, cam, samples)[0]
