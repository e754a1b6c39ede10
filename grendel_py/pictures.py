"""Pictures of the distributed work, for seeing why a run is slow or unbalanced.

- :func:`tile_picture`: a view with each 16x16 tile tinted by the rank that rasterized it (rank borders
  drawn), beside a bar chart of each rank's work (intersections rasterized) with the balance (max / mean).
- :func:`shard_picture`: the ranks' shards of the model as boxes (the 1st-99th percentile of their Gaussians'
  centres on each axis, so a few far floaters do not hide the layout) drawn over a view.
- :func:`shard_boxes`: those boxes and each rank's Gaussian count, gathered from every rank (one collective).
- :func:`tile_heat`: a view's tiles shaded by a per-tile value, the picture under the tiles where there is
  no render (``grendel simulate --pictures``).

Drawn with Pillow in rank colours (:func:`rank_colours`), scaled up so that small images stay legible; files
are written atomically (:func:`save_picture`).
"""

from __future__ import annotations

import colorsys
import json
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from PIL import Image, ImageDraw, ImageFont

from grendel_py.data.cameras import Camera
from grendel_py.fileio import atomic_open
from grendel_py.model.gaussians import Gaussians
from grendel_py.parallel.runtime import DistContext
from partition.tiles import TileGrid

# Tableau's ten categorical colours; more ranks get hues spaced by the golden ratio.
_PALETTE = [
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
]
MIN_SIDE = 360  # pictures are scaled up by an integer factor until the image's short side reaches this
BOX_QUANTILE = 0.01  # shard boxes span the [q, 1 - q] quantiles of their Gaussians' centres on each axis
_NEAR = 1e-3  # box edges are clipped to z >= this (camera space) before projection


def rank_colours(world_size: int) -> np.ndarray:
    """A distinct RGB colour per rank, uint8 [world_size, 3]; rank r has the same colour in every picture."""
    colours = list(_PALETTE[:world_size])
    for r in range(len(_PALETTE), world_size):
        h = (r * 0.618033988749895) % 1.0
        colours.append(tuple(round(255 * c) for c in colorsys.hsv_to_rgb(h, 0.75, 0.95)))
    return np.array(colours, dtype=np.uint8).reshape(world_size, 3)


def _scale(height: int, width: int) -> int:
    return max(1, -(-MIN_SIDE // min(height, width)))


def _upscaled(image: np.ndarray, scale: int) -> np.ndarray:
    """float [H, W, 3] in [0, 1] -> uint8 [H*scale, W*scale, 3] (nearest neighbour)."""
    pixels = (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    return np.repeat(np.repeat(pixels, scale, axis=0), scale, axis=1)


def tile_picture(image: np.ndarray, grid: TileGrid, ranks: np.ndarray, work: np.ndarray, title: str) -> Image.Image:
    """``image`` (float [H, W, 3] in [0, 1]: the render, or any picture of the view) with each tile tinted by
    the rank in ``ranks`` (int [grid.n_tiles], row-major) and a line where neighbouring tiles' ranks differ,
    beside a bar chart of ``work`` (float [W]: what each rank did for this view), under ``title``."""
    ranks = np.asarray(ranks, dtype=np.int64)
    work = np.asarray(work, dtype=np.float64)
    colours = rank_colours(len(work))
    if ranks.shape != (grid.n_tiles,) or image.shape[:2] != (grid.height, grid.width):
        raise ValueError(
            f"tile_picture: {ranks.shape} ranks and a {image.shape} image for a {grid.width}x{grid.height} grid"
        )
    per_tile = ranks.reshape(grid.ny, grid.nx)
    t = grid.tile_size
    per_pixel = np.repeat(np.repeat(per_tile, t, axis=0), t, axis=1)[: grid.height, : grid.width]
    tinted = 0.55 * np.clip(image, 0.0, 1.0) + 0.45 * colours[per_pixel] / 255.0
    s = _scale(grid.height, grid.width)
    view = Image.fromarray(_upscaled(tinted, s))
    draw = ImageDraw.Draw(view)
    edge = max(1, s // 3)
    for ty in range(grid.ny):
        for tx in range(grid.nx):
            x1, y1 = min((tx + 1) * t, grid.width) * s, min((ty + 1) * t, grid.height) * s
            if tx + 1 < grid.nx and per_tile[ty, tx] != per_tile[ty, tx + 1]:
                draw.line([(x1, ty * t * s), (x1, y1)], fill=(0, 0, 0), width=edge)
            if ty + 1 < grid.ny and per_tile[ty, tx] != per_tile[ty + 1, tx]:
                draw.line([(tx * t * s, y1), (x1, y1)], fill=(0, 0, 0), width=edge)
    mean = work.mean() if work.size else 0.0
    balance = f"balance {work.max() / mean:.3f} (max / mean)" if mean > 0 else "no work"
    chart = _bar_chart(work, colours, view.height, "intersections per rank")
    return _titled([view, chart], f"{title}: tiles by rank; in this view {balance}")


def tile_heat(grid: TileGrid, per_tile: np.ndarray) -> np.ndarray:
    """A grey picture of the view [H, W, 3] in [0, 1] where each tile's brightness is ``log(1 + v)`` of its
    value in ``per_tile`` ([grid.n_tiles], e.g. intersections) over the largest: a stand-in for the render
    where there is none (``grendel simulate``)."""
    v = np.log1p(np.maximum(np.asarray(per_tile, dtype=np.float64), 0.0))
    v = v / v.max() if v.size and v.max() > 0 else v
    t = grid.tile_size
    pixels = np.repeat(np.repeat(v.reshape(grid.ny, grid.nx), t, axis=0), t, axis=1)[: grid.height, : grid.width]
    return np.repeat(pixels[..., None], 3, axis=2)


def _bar_chart(values: np.ndarray, colours: np.ndarray, height: int, label: str) -> Image.Image:
    """Vertical bars of ``values`` in ``colours``, ``height`` pixels tall, rank numbers under the bars."""
    font = ImageFont.load_default()
    n = len(values)
    bar = max(4, min(32, 640 // max(n, 1)))
    caption = f"{label} (max {values.max() if n else 0:,.0f})"
    width = max(int(font.getlength(caption)) + 16, n * (bar + 4) + 16)
    chart = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(chart)
    top, bottom = 28, height - 16
    peak = float(values.max()) if n and values.max() > 0 else 1.0
    draw.text((8, 4), caption, fill=(0, 0, 0), font=font)
    for r, v in enumerate(values):
        x0 = 8 + r * (bar + 4)
        y0 = bottom - (bottom - top) * float(v) / peak
        draw.rectangle([x0, y0, x0 + bar, bottom], fill=tuple(int(c) for c in colours[r]))
        if bar >= 16 or r % max(1, 16 // bar) == 0:
            draw.text((x0, bottom + 2), str(r), fill=(0, 0, 0), font=font)
    draw.line([(4, bottom), (width - 4, bottom)], fill=(0, 0, 0))
    return chart


def _titled(panels: list[Image.Image], title: str) -> Image.Image:
    """``panels`` side by side under a line of ``title``."""
    font = ImageFont.load_default()
    band = 20
    width = sum(p.width for p in panels) + 8 * (len(panels) - 1)
    out = Image.new("RGB", (width, max(p.height for p in panels) + band), (255, 255, 255))
    ImageDraw.Draw(out).text((4, 4), title, fill=(0, 0, 0), font=font)
    x = 0
    for p in panels:
        out.paste(p, (x, band))
        x += p.width + 8
    return out


def shard_boxes(shard: Gaussians, ctx: DistContext) -> tuple[np.ndarray, np.ndarray]:
    """Every rank's shard box (float64 [W, 2, 3]: low and high corner; NaN for an empty shard) and Gaussian
    count (int64 [W]); collective (one all-gather), every rank gets both."""
    means = shard.means.detach()
    mine = torch.full((7,), float("nan"), dtype=torch.float64, device=means.device)
    mine[6] = len(shard)
    if len(shard):
        ordered = torch.sort(means.double(), dim=0).values
        k = int(BOX_QUANTILE * (len(shard) - 1))
        mine[:3], mine[3:6] = ordered[k], ordered[len(shard) - 1 - k]
    if ctx.distributed:
        parts = [torch.empty_like(mine) for _ in range(ctx.world_size)]
        dist.all_gather(parts, mine)
        mine = torch.stack(parts)
    table = mine.reshape(-1, 7).cpu().numpy()
    return table[:, :6].reshape(-1, 2, 3), table[:, 6].astype(np.int64)


_BOX_EDGES = [(0, 1), (2, 3), (4, 5), (6, 7), (0, 2), (1, 3), (4, 6), (5, 7), (0, 4), (1, 5), (2, 6), (3, 7)]


def shard_picture(image: np.ndarray, camera: Camera, boxes: np.ndarray, counts: np.ndarray, title: str) -> Image.Image:
    """``image`` (float [H, W, 3] in [0, 1], seen from ``camera``) with each rank's box from
    :func:`shard_boxes` drawn as a wireframe in its colour (edges clipped at the camera's near plane), and a
    legend of the ranks' Gaussian counts."""
    colours = rank_colours(len(counts))
    s = _scale(camera.height, camera.width)
    view = Image.fromarray(_upscaled(image, s))
    draw = ImageDraw.Draw(view)
    for r, box in enumerate(np.asarray(boxes, dtype=np.float64)):
        if not np.all(np.isfinite(box)):
            continue
        corners = np.array([[box[i >> 2 & 1, 0], box[i >> 1 & 1, 1], box[i & 1, 2]] for i in range(8)])
        cam = camera.to_camera(torch.from_numpy(corners)).numpy()
        for a, b in _BOX_EDGES:
            segment = _clip_near(cam[a], cam[b])
            if segment is not None:
                line = _clip_rect(*(_pixel(camera, p, s) for p in segment), view.width, view.height)
                if line is not None:
                    draw.line(line, fill=tuple(int(c) for c in colours[r]), width=2)
    legend = Image.new("RGB", (200, view.height), (255, 255, 255))
    ld = ImageDraw.Draw(legend)
    font = ImageFont.load_default()
    for r, n in enumerate(counts):
        y = 8 + 16 * r
        if y + 12 > legend.height:
            ld.text((8, y - 16), "...", fill=(0, 0, 0), font=font)
            break
        ld.rectangle([8, y, 20, y + 10], fill=tuple(int(c) for c in colours[r]))
        ld.text((26, y - 1), f"rank {r}: {int(n):,} Gaussians", fill=(0, 0, 0), font=font)
    return _titled([view, legend], f"{title}: shard boxes ({BOX_QUANTILE:.0%}-{1 - BOX_QUANTILE:.0%} of centres)")


def _clip_near(p: np.ndarray, q: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """The part of segment p-q (camera space) with z >= the near plane, or None."""
    if p[2] < _NEAR and q[2] < _NEAR:
        return None
    if p[2] < _NEAR:
        p = p + (q - p) * (_NEAR - p[2]) / (q[2] - p[2])
    elif q[2] < _NEAR:
        q = q + (p - q) * (_NEAR - q[2]) / (p[2] - q[2])
    return p, q


def _pixel(camera: Camera, p: np.ndarray, scale: int) -> np.ndarray:
    """Camera-space point ``p`` (z > 0) in picture pixels, float64 [2]."""
    return np.array([(camera.fx * p[0] / p[2] + camera.cx) * scale, (camera.fy * p[1] / p[2] + camera.cy) * scale])


def _clip_rect(a: np.ndarray, b: np.ndarray, width: int, height: int) -> list[tuple[float, float]] | None:
    """The part of segment a-b inside the picture (one pixel of margin), Liang-Barsky, or None."""
    t0, t1 = 0.0, 1.0
    d = b - a
    for p, q in ((-d[0], a[0] + 1), (d[0], width + 1 - a[0]), (-d[1], a[1] + 1), (d[1], height + 1 - a[1])):
        if p == 0:
            if q < 0:
                return None
        elif p < 0:
            t0 = max(t0, q / p)
        else:
            t1 = min(t1, q / p)
    if t0 > t1:
        return None
    return [tuple(map(float, a + t0 * d)), tuple(map(float, a + t1 * d))]


def save_picture(picture: Image.Image, path: str | Path) -> None:
    """Write ``picture`` as a PNG at ``path`` atomically."""
    with atomic_open(path) as f:
        picture.save(f, format="PNG")


def save_boxes(boxes: np.ndarray, counts: np.ndarray, path: str | Path) -> None:
    """Write the shard boxes and counts as JSON at ``path`` atomically: {"ranks": [{"rank", "gaussians",
    "low", "high"}, ...]} (low and high null for an empty shard)."""
    ranks = []
    for r, (box, n) in enumerate(zip(boxes, counts)):
        finite = bool(np.all(np.isfinite(box)))
        ranks.append(
            {
                "rank": r,
                "gaussians": int(n),
                "low": box[0].tolist() if finite else None,
                "high": box[1].tolist() if finite else None,
            }
        )
    with atomic_open(path, "w") as f:
        json.dump({"quantile": BOX_QUANTILE, "ranks": ranks}, f, indent=1)
