"""The sparse all-to-all: rows of a tensor go to the ranks that need them, gradients come back the same way.

:func:`all_to_all_rows` is the differentiable primitive (one ``all_to_all_single`` with split sizes, whose
backward is the reverse all-to-all); :func:`route_splats` decides which rank receives which splat of which
camera (for the whole batch at once); :func:`exchange_splats` packs, moves and unpacks them.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
import torch.distributed as dist

from grendel_py.parallel.runtime import DistContext
from grendel_py.render.intersect import expand_spans, tile_spans
from grendel_py.render.projection import Splats
from partition.tiles import TileGrid


def _all_to_all(x: torch.Tensor, send: list[int], recv: list[int]) -> torch.Tensor:
    out = x.new_empty((sum(recv),) + tuple(x.shape[1:]))
    dist.all_to_all_single(out, x.contiguous(), output_split_sizes=recv, input_split_sizes=send)
    return out


class _AllToAllRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, send: list[int], recv: list[int]):
        ctx.send, ctx.recv = send, recv
        return _all_to_all(x, send, recv)

    @staticmethod
    def backward(ctx, grad):
        return _all_to_all(grad, ctx.recv, ctx.send), None, None


def count_values(values: torch.Tensor, n: int) -> torch.Tensor:
    """How often each of 0..n-1 occurs in the int64 ``values`` (values >= n are ignored), int64 [n]. Unlike
    ``bincount`` its size does not depend on the data, so it costs no host synchronisation on a GPU."""
    counts = values.new_zeros(n + 1)
    return counts.index_add_(0, values.clamp_max(n), torch.ones_like(values))[:n]


def exchange_counts(send_counts: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """How many rows each rank will send to this one, given how many this one sends to each: int64 [W]."""
    if not ctx.distributed:
        return send_counts.clone()
    recv = torch.empty_like(send_counts)
    dist.all_to_all_single(recv, send_counts.contiguous())
    return recv


def all_to_all_rows(x: torch.Tensor, send_counts: list[int], recv_counts: list[int], ctx: DistContext) -> torch.Tensor:
    """Send rows ``x[sum(send[:q]):sum(send[:q+1])]`` to rank q and receive ``recv[q]`` rows from each rank q,
    concatenated in rank order. Differentiable: the backward sends row gradients back to where rows came from."""
    if not ctx.distributed:
        return x
    if x.requires_grad:
        return _AllToAllRows.apply(x, send_counts, recv_counts)
    return _all_to_all(x, send_counts, recv_counts)


def route_splats(
    splats: list[Splats], grids: list[TileGrid], owners: list[torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Every (splat, rank) pair such that the splat's tile box touches a tile the rank owns, for all the
    cameras of a batch at once (``owners[b]`` [n_tiles] int64: the rank of each tile of camera b). Returns
    (rows into the cameras' splats concatenated, ranks), int64 each, sorted by rank then row (so by rank,
    camera, row), without duplicates: two host synchronisations for the batch."""
    spans = [tile_spans(s, g) for s, g in zip(splats, grids)]
    tx0, tx1, ty0, ty1 = (torch.cat(v) for v in zip(*spans))
    device = tx0.device
    sizes = [len(s) for s in splats]
    nx = torch.cat([torch.full((n,), g.nx, device=device) for n, g in zip(sizes, grids)])
    first_tile = torch.cat([torch.full((n,), t, device=device) for n, t in zip(sizes, part_starts([g.n_tiles for g in grids]))])
    rows, tiles = expand_spans(tx0, tx1, ty0, ty1, nx)
    n = max(sum(sizes), 1)
    key = torch.unique(torch.cat(owners)[first_tile[rows] + tiles] * n + rows)  # sorted: by rank, then row
    return key % n, key // n


def part_starts(sizes: list[int]) -> list[int]:
    """Where each part begins when parts of ``sizes`` are laid end to end."""
    return list(itertools.accumulate(sizes[:-1], initial=0))


def pack_splats(s: Splats) -> torch.Tensor:
    """The float part of each splat on the wire, [N, 12]: means2d, conics, opacity, colour, depth (no
    gradient) and extents (small integers, exact in float)."""
    fields = [s.means2d, s.conics, s.opacities[:, None], s.colors, s.depths.detach()[:, None], s.extents.to(s.means2d.dtype)]
    return torch.cat(fields, dim=1)


@dataclass
class Received:
    """Splats that arrived for each camera slot of the batch, and the bytes this rank sent."""

    per_camera: list[Splats]
    bytes_sent: int


def exchange_splats(
    splats: list[Splats], grids: list[TileGrid], owners: list[torch.Tensor], ctx: DistContext
) -> Received:
    """Send each camera's projected splats to the ranks whose tiles they touch; return what this rank gets.

    ``splats[b]``, ``grids[b]``, ``owners[b]`` describe camera slot b (owners: rank of each tile). Gradients
    with respect to means2d, conics, opacities and colors flow back to the sending rank. On the wire per
    splat: 12 floats (means2d 2, conics 3, opacity 1, colour 3, depth 1, extents 2: small integers, exact in
    float) and 2 int64 (global id, camera slot).
    """
    w, n_slots = ctx.world_size, len(splats)
    rows, ranks = route_splats(splats, grids, owners)  # by destination rank, then camera slot, then row
    device = rows.device
    slot_of = torch.cat([torch.full((len(s),), b, device=device) for b, s in enumerate(splats)])
    slots = slot_of[rows]
    send_f = torch.cat([pack_splats(s) for s in splats])[rows]
    send_i = torch.stack([torch.cat([s.ids for s in splats])[rows], slots], dim=1)
    counts = count_values(ranks * n_slots + slots, w * n_slots)  # rows for each (rank, slot)
    counts_in = exchange_counts(counts, ctx)  # rows from each (rank, slot): W equal chunks of n_slots
    host = torch.cat([counts, counts_in]).view(2, w, n_slots).tolist()  # the one host synchronisation
    send, recv = [sum(c) for c in host[0]], [sum(c) for c in host[1]]
    got_f = all_to_all_rows(send_f, send, recv, ctx)
    got_i = all_to_all_rows(send_i, send, recv, ctx)
    # rows arrive by sending rank, then slot: regroup them by slot
    slot_of_row = torch.repeat_interleave(
        torch.arange(n_slots, device=device).repeat(w), counts_in, output_size=sum(recv)
    )  # fmt: skip
    by_slot = torch.argsort(slot_of_row, stable=True).split([sum(col) for col in zip(*host[1])])
    per_camera = []
    for picked in by_slot:
        f = got_f[picked]
        per_camera.append(
            Splats(
                means2d=f[:, 0:2], conics=f[:, 2:5], opacities=f[:, 5], colors=f[:, 6:9], depths=f[:, 9],
                extents=f[:, 10:12].round().to(torch.int32), ids=got_i[picked, 0],
            )
        )  # fmt: skip
    sent_elsewhere = sum(c for q, c in enumerate(send) if q != ctx.rank)
    bytes_sent = sent_elsewhere * (send_f.shape[1] * send_f.element_size() + 2 * send_i.element_size())
    return Received(per_camera, bytes_sent)
