"""Pixel halos: each rank renders only its own tiles, then receives the rendered pixels within 5 px of its
region from the ranks that own them, so SSIM windows at split lines see the real neighbours. Gradients of
the loss with respect to those halo pixels go back to their owners (the exchange is differentiable).

Every rank derives every other rank's needs from the tile owner tables, so no request round is needed.
"""

from __future__ import annotations

import torch

from grendel_py.loss.pixels import HALO, window_with_halo
from grendel_py.loss.regions import Region
from grendel_py.parallel.exchange import all_to_all_rows
from grendel_py.parallel.runtime import DistContext
from grendel_py.render.intersect import count_values, distinct_sorted, part_starts
from partition.tiles import TILE_SIZE, TileGrid


def _pixel_owner(grid: TileGrid, owners: torch.Tensor) -> torch.Tensor:
    """Rank owning each pixel, int64 [H, W]."""
    return grid.tiles_to_image(owners[:, None, None].expand(-1, grid.tile_size**2, 1), None)[..., 0]


def _near_owners(grid: TileGrid, owners: torch.Tensor) -> torch.Tensor:
    """int64 [8, H, W]: for each pixel and each of the 8 tiles around its own, the rank owning that tile when
    the pixel lies within HALO of it (box distance), else -1. A halo narrower than a tile reaches no farther
    tile, so these are all the ranks whose pixels lie within HALO of the pixel (besides its own tile's)."""
    ts = grid.tile_size
    table = owners.new_full((grid.ny + 2, grid.nx + 2), -1)
    table[1:-1, 1:-1] = owners.view(grid.ny, grid.nx)
    y = torch.arange(grid.height, device=owners.device)
    x = torch.arange(grid.width, device=owners.device)
    reach_y = {-1: y % ts < HALO, 0: torch.ones_like(y, dtype=torch.bool), 1: y % ts >= ts - HALO}
    reach_x = {-1: x % ts < HALO, 0: torch.ones_like(x, dtype=torch.bool), 1: x % ts >= ts - HALO}
    near = []
    for dy, dx in _AROUND:
        neighbour = table[(y // ts + 1 + dy)[:, None], (x // ts + 1 + dx)[None, :]]
        near.append(torch.where(reach_y[dy][:, None] & reach_x[dx][None, :], neighbour, -1))
    return torch.stack(near)


_AROUND = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]
assert HALO < TILE_SIZE, "the halo must not reach past the adjacent tiles"


def _halo_keys(
    grids: list[TileGrid],
    owners: list[torch.Tensor],
    pixel_owners: list[torch.Tensor],
    starts: list[int],
    total: int,
    me: int,
    sentinel: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The sorted keys ``rank * total + pixel`` (pixel: index among the batch's ``total`` pixels, camera b's
    from ``starts[b]``) of the pixels this rank sends (its own, near a tile of ``rank``) and receives (those of
    ``rank``, near a tile of its own), each followed by ``sentinel`` padding."""
    send_keys, send_ok, recv_keys, recv_ok = [], [], [], []
    for grid, own, po, start in zip(grids, owners, pixel_owners, starts):
        near = _near_owners(grid, own)
        pixel = torch.arange(start, start + grid.width * grid.height, device=own.device).view(grid.height, grid.width)
        mine = po == me
        send_keys.append((near * total + pixel).reshape(-1))
        send_ok.append(((near >= 0) & (near != me) & mine).reshape(-1))
        recv_keys.append((po * total + pixel).reshape(-1))
        recv_ok.append(((near == me).any(dim=0) & ~mine).reshape(-1))
    send = distinct_sorted(torch.where(torch.cat(send_ok), torch.cat(send_keys), sentinel), sentinel)
    return send, distinct_sorted(torch.where(torch.cat(recv_ok), torch.cat(recv_keys), sentinel), sentinel)


def exchange_halos(
    tile_colors: list[torch.Tensor],
    tile_ids: list[torch.Tensor],
    grids: list[TileGrid],
    owners: list[torch.Tensor],
    boxes: list[tuple[int, int, int, int]],
    ctx: DistContext,
) -> tuple[list[Region | None], torch.Tensor]:
    """Assemble this rank's region of every camera slot b from its rendered tiles ``tile_colors[b]``
    [T_b, P, C] (tiles ``tile_ids[b]``, in the box ``boxes[b]`` = (ty0, ty1, tx0, tx1) of tiles, half-open,
    from the plan on the host) and the halo pixels other ranks send. Returns the regions (None for cameras
    where this rank owns nothing) and the received halo values (every rank must keep them in its loss's
    graph so that all ranks join the backward exchange).

    The pixels to send and to receive are found at once for the whole batch from the tile owners (which
    every rank knows), as keys ``rank * P + pixel`` over the batch's P pixels: sorted, they give each peer's
    pixels in the order both sides agree on (camera, then row-major). One read of their counts is the only
    host synchronisation besides the two sorts; one rank exchanges nothing."""
    me, w = ctx.rank, ctx.world_size
    proto = tile_colors[0]
    c, device = proto.shape[-1], proto.device
    sizes = [g.width * g.height for g in grids]
    starts, total = part_starts(sizes), sum(sizes)  # each camera's first pixel in the batch
    images = [  # tile ids are sorted and unique: all of them need no placing
        grid.tiles_to_image(colors, None if tiles.shape[0] == grid.n_tiles else tiles)
        for grid, colors, tiles in zip(grids, tile_colors, tile_ids)
    ]
    if not ctx.distributed:  # one rank: no halo, and every pixel is its own
        pixel_owners = [None] * len(grids)
        per_camera, received = [0] * len(grids), proto.new_zeros(0, c)
    else:
        pixel_owners = [_pixel_owner(grid, own) for grid, own in zip(grids, owners)]
        sentinel = w * total
        send, recv = _halo_keys(grids, owners, pixel_owners, starts, total, me, sentinel)
        recv_camera = torch.searchsorted(torch.tensor(starts, device=device), recv % total, right=True) - 1
        host = torch.cat(
            [
                count_values(send // total, w),
                count_values(recv // total, w),
                count_values(torch.where(recv < sentinel, recv_camera, len(grids)), len(grids)),
            ]
        ).tolist()
        send_counts, recv_counts, per_camera = host[:w], host[w : 2 * w], host[2 * w :]
        send, recv = send[: sum(send_counts)], recv[: sum(recv_counts)]
        recv_camera = recv_camera[: sum(recv_counts)]
        flat = torch.cat([image.reshape(-1, c) for image in images])
        received = all_to_all_rows(flat[send % total], send_counts, recv_counts, ctx)
        by_camera = torch.argsort(recv_camera, stable=True)  # received rows: by sending rank, then camera
        received_at = (recv % total)[by_camera].split(per_camera)
        received_rows = by_camera.split(per_camera)

    regions: list[Region | None] = []
    for b, (grid, image, tiles, po) in enumerate(zip(grids, images, tile_ids, pixel_owners)):
        if tiles.numel() == 0:
            regions.append(None)
            continue
        ts = grid.tile_size
        ty0, ty1, tx0, tx1 = boxes[b]
        y0, y1, x0, x1 = ty0 * ts, min(ty1 * ts, grid.height), tx0 * ts, min(tx1 * ts, grid.width)
        canvas = window_with_halo(image, y0, y1, x0, x1)
        if per_camera[b]:
            at = received_at[b] - starts[b]
            ys, xs = at // grid.width - y0 + HALO, at % grid.width - x0 + HALO
            canvas = canvas.index_put((ys, xs), received[received_rows[b]], accumulate=True)
        owned = (
            torch.ones(y1 - y0, x1 - x0, dtype=torch.bool, device=device) if po is None else (po == me)[y0:y1, x0:x1]
        )
        regions.append(Region(canvas, owned, y0, x0))
    return regions, received
