"""Pixel halos: each rank renders only its own tiles, then receives the rendered pixels within 5 px of its
region from the ranks that own them, so SSIM windows at split lines see the real neighbours. Gradients of
the loss with respect to those halo pixels go back to their owners (the exchange is differentiable).

Every rank derives every other rank's needs from the tile owner tables, so no request round is needed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from grendel_py.dist.exchange import all_to_all_rows
from grendel_py.dist.runtime import DistContext
from grendel_py.train.loss import HALO
from partition.tiles import TileGrid


@dataclass
class Region:
    """What a rank holds of one camera: ``canvas`` [h + 2 HALO, w + 2 HALO, C] covers the bounding box of its
    pixels plus the halo (image coordinates of its top-left pixel: ``y0 - HALO``, ``x0 - HALO``); it holds the
    rank's rendered pixels, the halo pixels received from other ranks and zeros elsewhere (also outside the
    image, like SSIM's zero padding). ``owned`` [h, w] marks the rank's own pixels inside the box."""

    canvas: torch.Tensor
    owned: torch.Tensor
    y0: int
    x0: int


def _pixel_owner(grid: TileGrid, owners: torch.Tensor) -> torch.Tensor:
    """Rank owning each pixel, int64 [H, W]."""
    return grid.tiles_to_image(owners[:, None, None].expand(-1, grid.tile_size**2, 1), None)[..., 0]


def _needs(pixel_owner: torch.Tensor, rank: int) -> torch.Tensor:
    """Bool [H, W]: pixels within HALO (box distance) of ``rank``'s pixels that another rank owns."""
    own = (pixel_owner == rank).float()[None, None]
    near = F.max_pool2d(own, 2 * HALO + 1, stride=1, padding=HALO)[0, 0] > 0
    return near & (pixel_owner != rank)


def _bbox(mask: torch.Tensor) -> tuple[int, int, int, int]:
    ys, xs = torch.nonzero(mask, as_tuple=True)
    return int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1


def exchange_halos(
    tile_colors: list[torch.Tensor], tile_ids: list[torch.Tensor], grids: list[TileGrid], owners: list[torch.Tensor],
    ctx: DistContext,
) -> tuple[list[Region | None], torch.Tensor]:
    """Assemble this rank's region of every camera slot b from its rendered tiles ``tile_colors[b]``
    [T_b, P, C] (tiles ``tile_ids[b]``) and the halo pixels other ranks send. Returns the regions (None for
    cameras where this rank owns nothing) and the received halo values (every rank must keep them in its
    loss's graph so that all ranks join the backward exchange)."""
    me, w = ctx.rank, ctx.world_size
    images, pix_owner = [], []
    send_rows = [[] for _ in range(w)]
    recv_pos = [[] for _ in range(w)]
    for b, (colors, tiles, grid, own) in enumerate(zip(tile_colors, tile_ids, grids, owners)):
        po = _pixel_owner(grid, own)
        pix_owner.append(po)
        images.append(grid.tiles_to_image(colors, tiles) if tiles.numel() else None)
        mine = po == me
        for q in range(w):
            if q == me:
                continue
            out = torch.nonzero(_needs(po, q) & mine)  # pixels q needs from me, row-major order
            if out.numel():
                send_rows[q].append(images[b][out[:, 0], out[:, 1]])
            inc = torch.nonzero(_needs(po, me) & (po == q))  # pixels I need from q, same order on q's side
            if inc.numel():
                recv_pos[q].append(torch.cat([torch.full_like(inc[:, :1], b), inc], dim=1))
    c = tile_colors[0].shape[-1]
    proto = tile_colors[0]
    send = [torch.cat(rows) if rows else proto.new_zeros((0, c)) for rows in send_rows]
    send_counts = [int(s.shape[0]) for s in send]
    recv_counts = [sum(int(p.shape[0]) for p in pos) for pos in recv_pos]
    received = all_to_all_rows(torch.cat(send) if send else proto.new_zeros((0, c)), send_counts, recv_counts, ctx)
    positions = torch.cat([torch.cat(p) for p in recv_pos if p]) if any(recv_pos) else torch.zeros((0, 3), dtype=torch.long)

    regions: list[Region | None] = []
    for b, (grid, po) in enumerate(zip(grids, pix_owner)):
        if images[b] is None:
            regions.append(None)
            continue
        y0, y1, x0, x1 = _bbox(po == me)
        padded = F.pad(images[b].permute(2, 0, 1), (HALO, HALO, HALO, HALO)).permute(1, 2, 0)
        canvas = padded[y0 : y1 + 2 * HALO, x0 : x1 + 2 * HALO]
        here = positions[:, 0] == b
        if here.any():
            ys = positions[here, 1] - y0 + HALO
            xs = positions[here, 2] - x0 + HALO
            canvas = canvas.index_put((ys, xs), received[here], accumulate=True)
        regions.append(Region(canvas, (po == me)[y0:y1, x0:x1], y0, x0))
    return regions, received
