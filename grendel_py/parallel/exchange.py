"""The sparse all-to-all: rows of a tensor go to the ranks that need them, gradients come back the same way.

:func:`all_to_all_rows` is the differentiable primitive (one ``all_to_all_single`` with split sizes, whose
backward is the reverse all-to-all); :func:`route_keys` decides which rank receives which splat of which
camera (for the whole batch at once, from the batch's (splat, tile) pairs); :func:`exchange_splats` packs,
moves and unpacks them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from grendel_py.parallel.runtime import DistContext
from grendel_py.render.intersect import count_values, distinct_sorted, per_row
from grendel_py.render.projection import Splats


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


def route_keys(pairs: tuple[torch.Tensor, torch.Tensor], n: int, owners: list[torch.Tensor], world_size: int) -> torch.Tensor:
    """Every (splat, rank) pair such that the splat reaches a tile the rank owns, for all the cameras of a
    batch at once: ``pairs`` from :func:`grendel_py.render.intersect.tile_pairs` over the batch's ``n`` rows,
    ``owners[b]`` [n_tiles] int64 the rank of each tile of camera b. As keys ``rank * n + row``: sorted,
    without duplicates, then padded with ``world_size * n`` to the number of pairs (a length that does not
    depend on the owners or the culling). No host synchronisation; the caller learns the number of real keys
    from counts it reads anyway."""
    rows, tiles = pairs
    n = max(n, 1)
    owner = torch.cat(owners)
    culled = tiles >= owner.shape[0]
    keys = torch.where(culled, world_size * n, owner[tiles.clamp_max(owner.shape[0] - 1)] * n + rows)
    return distinct_sorted(keys, world_size * n)  # by rank, then row


def pack_splats(s: Splats) -> torch.Tensor:
    """The float part of each splat on the wire, [N, 12]: means2d, conics, opacity, colour, depth (no
    gradient) and extents (small integers, exact in float)."""
    fields = [s.means2d, s.conics, s.opacities[:, None], s.colors, s.depths.detach()[:, None], s.extents.to(s.means2d.dtype)]
    return torch.cat(fields, dim=1)


@dataclass
class Received:
    """Splats that arrived for the batch, camera slot by camera slot (``parts[b]`` rows for slot b), and the
    bytes this rank sent."""

    splats: Splats
    parts: list[int]
    bytes_sent: int


def exchange_splats(
    splats: Splats, parts: list[int], pairs: tuple[torch.Tensor, torch.Tensor], owners: list[torch.Tensor], ctx: DistContext
) -> Received:
    """Send each camera's projected splats to the ranks whose tiles they reach; return what this rank gets.

    ``splats`` holds ``parts[b]`` rows for camera slot b, one slot after another; ``pairs`` are their
    (splat, tile) pairs (:func:`grendel_py.render.intersect.tile_pairs`); ``owners[b]``: the rank of each
    tile of slot b. Gradients with respect to means2d, conics, opacities and colors flow back to the sending
    rank. On the wire per splat: 12 floats (means2d 2, conics 3, opacity 1, colour 3, depth 1, extents 2:
    small integers, exact in float) and 2 int64 (global id, camera slot). One host synchronisation: the read
    of the split sizes.
    """
    w, n_slots = ctx.world_size, len(parts)
    n = max(len(splats), 1)
    keys = route_keys(pairs, len(splats), owners, w)  # by destination rank, then camera slot, then row
    device = keys.device
    rows, ranks = keys % n, keys // n
    slots = per_row(parts, list(range(n_slots)), device)[rows]
    counts = count_values(ranks * n_slots + slots, w * n_slots)  # rows for each (rank, slot); padding: none
    counts_in = exchange_counts(counts, ctx)  # rows from each (rank, slot): W equal chunks of n_slots
    host = torch.cat([counts, counts_in]).view(2, w, n_slots).tolist()  # the one read of sizes
    send, recv = [sum(c) for c in host[0]], [sum(c) for c in host[1]]
    rows, slots = rows[: sum(send)], slots[: sum(send)]
    send_f = pack_splats(splats.select(rows))
    send_i = torch.stack([splats.ids[rows], slots], dim=1)
    got_f = all_to_all_rows(send_f, send, recv, ctx)
    got_i = all_to_all_rows(send_i, send, recv, ctx)
    # rows arrive by sending rank, then slot: regroup them by slot
    slot_of_row = torch.repeat_interleave(
        torch.arange(n_slots, device=device).repeat(w), counts_in, output_size=sum(recv)
    )  # fmt: skip
    by_slot = torch.argsort(slot_of_row, stable=True)
    f, ids = got_f[by_slot], got_i[by_slot, 0]
    received = Splats(
        means2d=f[:, 0:2], conics=f[:, 2:5], opacities=f[:, 5], colors=f[:, 6:9], depths=f[:, 9],
        extents=f[:, 10:12].round().to(torch.int32), ids=ids,
    )  # fmt: skip
    sent_elsewhere = sum(c for q, c in enumerate(send) if q != ctx.rank)
    bytes_sent = sent_elsewhere * (send_f.shape[1] * send_f.element_size() + 2 * send_i.element_size())
    return Received(received, [sum(col) for col in zip(*host[1])], bytes_sent)
