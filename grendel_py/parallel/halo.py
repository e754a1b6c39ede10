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

_AROUND = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]
assert HALO < TILE_SIZE, "the halo must not reach past the adjacent tiles"


def _near_owners(grids: list[TileGrid], owners: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """For the batch's pixels laid end to end (camera by camera, each row-major): the rank owning each pixel,
    int64 [P], and for each of the 8 tiles around its own, the rank owning that tile when the pixel lies within
    HALO of it (box distance), else -1, int64 [8, P]. A halo narrower than a tile reaches no farther tile, so
    these are all the ranks whose pixels lie within HALO of the pixel (besides its own tile's). One pass over
    the batch: a fixed number of operations whatever its number of cameras."""
    device, ts = owners[0].device, grids[0].tile_size
    sizes = [g.width * g.height for g in grids]
    # per camera: first pixel, width, tiles across, tiles down, first tile, pixels (int32: a batch's pixels
    # and tiles stay far below 2^31)
    tiles = part_starts([g.n_tiles for g in grids])
    cams = torch.tensor(
        [[p, g.width, g.nx, g.ny, t, n] for g, p, t, n in zip(grids, part_starts(sizes), tiles, sizes)],
        dtype=torch.int32,
    ).to(device, non_blocking=True)
    pixel = torch.arange(sum(sizes), dtype=torch.int32, device=device)
    camera = torch.arange(len(grids), device=device).repeat_interleave(cams[:, 5], output_size=pixel.shape[0])
    first, width, nx, ny, first_tile, _ = cams[camera].unbind(1)
    local = pixel - first
    y, x = local.div(width, rounding_mode="floor"), local.remainder(width)
    ty, tx = y.div(ts, rounding_mode="floor"), x.div(ts, rounding_mode="floor")
    all_owners = torch.cat(owners)
    own = all_owners[first_tile + ty * nx + tx]
    # the 8 neighbours: tile offsets, and whether the pixel lies within HALO of that side ([3, P] by offset + 1)
    dy, dx = (torch.tensor(d, dtype=torch.int32).to(device, non_blocking=True)[:, None] for d in zip(*_AROUND))
    ry, rx = y - ty * ts, x - tx * ts
    reach_y = torch.stack([ry < HALO, torch.ones_like(ry, dtype=torch.bool), ry >= ts - HALO])[dy[:, 0] + 1]
    reach_x = torch.stack([rx < HALO, torch.ones_like(rx, dtype=torch.bool), rx >= ts - HALO])[dx[:, 0] + 1]
    ny_, nx_ = ty + dy, tx + dx  # [8, P]
    inside = (ny_ >= 0) & (ny_ < ny) & (nx_ >= 0) & (nx_ < nx)
    neighbour = all_owners[(first_tile + ny_ * nx + nx_).clamp_(min=0, max=all_owners.shape[0] - 1)]
    return own, torch.where(inside & reach_y & reach_x, neighbour, -1)


def _halo_keys(
    grids: list[TileGrid], owners: list[torch.Tensor], me: int, world: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The rank owning each pixel of the batch (int64 [P], :func:`_near_owners`) and the sorted keys
    ``rank * P + pixel`` of the pixels this rank sends (its own, near a tile of ``rank``) and receives (those
    of ``rank``, near a tile of its own), each followed by ``world * P`` padding."""
    own, near = _near_owners(grids, owners)
    total = own.shape[0]
    pixel = torch.arange(total, device=own.device)
    mine, sentinel = own == me, world * total
    send = torch.where((near >= 0) & (near != me) & mine, near * total + pixel, sentinel).reshape(-1)
    recv = torch.where((near == me).any(dim=0) & ~mine, own * total + pixel, sentinel)
    return own, distinct_sorted(send, sentinel), distinct_sorted(recv, sentinel)


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
        own, send, recv = _halo_keys(grids, owners, me, w)
        sentinel = w * total
        pixel_owners = [o.view(g.height, g.width) for o, g in zip(own.split(sizes), grids)]
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


def halo_pixel_counts(grids: list[TileGrid], owners: list[torch.Tensor], world: int) -> torch.Tensor:
    """How many halo pixels each rank receives for a batch with these tile owners, int64 [world]: the pixels
    of other ranks within HALO of its tiles (what :func:`exchange_halos` receives; for planning). Counted tile
    by tile, not pixel by pixel (the planner's batches hold tens of millions of pixels): a tile's pixels fall
    in 3 x 3 zones by whether they lie within HALO of its top, bottom, left or right side (its right and
    bottom tiles may be cut short by the image's edge), and a zone's pixels go to each distinct other rank
    among the tiles its sides face (those of :func:`_near_owners`)."""
    ts = grids[0].tile_size
    out = torch.zeros(world, dtype=torch.int64)
    for grid, owner in zip(grids, owners):
        own = owner.cpu().view(grid.ny, grid.nx)
        padded = torch.full((grid.ny + 2, grid.nx + 2), -1, dtype=own.dtype)
        padded[1:-1, 1:-1] = own
        # the pixels of each tile in zones lo (within HALO of the low side), mid and hi, along x and along y
        span_x = (grid.width - torch.arange(grid.nx) * ts).clamp(max=ts)
        span_y = (grid.height - torch.arange(grid.ny) * ts).clamp(max=ts)
        zones_x, zones_y = _zones(span_x), _zones(span_y)
        for zy, dys in enumerate(((0, -1), (0,), (0, 1))):
            for zx, dxs in enumerate(((0, -1), (0,), (0, 1))):
                faced = [(dy, dx) for dy in dys for dx in dxs if (dy, dx) != (0, 0)]
                if not faced:
                    continue
                size = zones_y[zy][:, None] * zones_x[zx][None, :]
                ranks = torch.stack([padded[1 + dy : 1 + dy + grid.ny, 1 + dx : 1 + dx + grid.nx] for dy, dx in faced])
                ranks = torch.where((ranks >= 0) & (ranks != own), ranks, world).sort(dim=0).values
                first = torch.ones_like(ranks, dtype=torch.bool)
                first[1:] = ranks[1:] != ranks[:-1]
                keep = first & (ranks < world)
                out += torch.bincount(ranks[keep], weights=size.expand_as(ranks)[keep].double(), minlength=world).long()
    return out


def _zones(span: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Of tiles ``span`` pixels wide (from their low side): how many lie within HALO of the low side, in the
    middle, and within HALO of the high side of a full tile."""
    ts = TILE_SIZE
    lo = span.clamp(max=HALO)
    hi = (span - (ts - HALO)).clamp(min=0)
    return lo, span - lo - hi, hi
