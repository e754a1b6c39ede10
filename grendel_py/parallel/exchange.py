"""The sparse all-to-all: rows of a tensor go to the ranks that need them, gradients come back the same way.

:func:`all_to_all_rows` is the differentiable primitive (one ``all_to_all_single`` with split sizes, whose
backward is the reverse all-to-all); :func:`exchange_splats` sends each splat to the ranks whose tiles it
reaches (for the whole batch at once, from the batch's (splat, tile) pairs: ``Pairs.reach``), packs, moves
and unpacks them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from grendel_py.backward_state import load, save
from grendel_py.parallel.runtime import DistContext
from grendel_py.render.interface import Pairs
from grendel_py.render.intersect import part_starts
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


WIRE = (("means2d", 2), ("conics", 3), ("opacities", 1), ("colors", 3), ("depths", 1), ("extents", 2))
"""The float columns of a splat on the wire, in this order: 12 floats (extents are integers of at most 2^24,
exact in float32, so they come back to int32 by a plain conversion); the first four fields (9 floats) carry
gradients back."""
GRAD_FIELDS = 4
GRAD_COLUMNS = sum(w for _, w in WIRE[:GRAD_FIELDS])


def _columns(table: torch.Tensor, widths: list[int]) -> list[torch.Tensor]:
    """Views of ``table``'s columns, ``widths`` at a time (a width of 1 gives a vector)."""
    out, col = [], 0
    for width in widths:
        out.append(table[:, col] if width == 1 else table[:, col : col + width])
        col += width
    return out


def _pack(fields: list[torch.Tensor], widths: list[int], rows: torch.Tensor) -> torch.Tensor:
    """The rows ``rows`` of the splat ``fields`` (``widths`` columns each) as one float table: the fields side
    by side (one concatenation), then one gather of the rows."""
    n = fields[0].shape[0]
    return torch.cat([f.detach().view(n, w) for f, w in zip(fields, widths)], 1).index_select(0, rows)


class _SendSplats(torch.autograd.Function):
    """Forward: the routed rows of the splats, packed (one gather per table), sent and regrouped by camera slot
    (one gather per table), as one tensor per field (views of two received tables: the fields with gradients,
    and depths and extents, which the step frees once it has binned them), one table after the other, each
    packed copy freed once sent. Backward: the gradients of the four differentiable fields side by side in 9
    columns, put in arrival order (one scatter), sent back the reverse way and added to the rows they came
    from (one scatter; a splat sent to several ranks gets the sum), as views of that one table."""

    @staticmethod
    def forward(ctx, route, *fields):
        rows, send, recv, by_slot, dist_ctx = route
        widths = [w for _, w in WIRE]
        outs = []
        for part in (slice(0, GRAD_FIELDS), slice(GRAD_FIELDS, None)):  # one table at a time
            arrived = all_to_all_rows(_pack(fields[part], widths[part], rows), send, recv, dist_ctx)
            outs += _columns(arrived[by_slot], widths[part])
            del arrived
        save(ctx, (), route=route, n=fields[0].shape[0])
        ctx.mark_non_differentiable(*outs[GRAD_FIELDS:])
        return tuple(outs)

    @staticmethod
    def backward(ctx, *grads):
        _, state = load(ctx)
        rows, send, recv, by_slot, dist_ctx = state["route"]
        ref = next(g for g in grads[:GRAD_FIELDS] if g is not None)
        widths = [w for _, w in WIRE[:GRAD_FIELDS]]
        m = by_slot.shape[0]
        grad = torch.cat(
            [ref.new_zeros(m, w) if g is None else g.reshape(m, w) for g, w in zip(grads[:GRAD_FIELDS], widths)], 1
        )
        buf = torch.empty_like(grad).index_copy_(0, by_slot, grad)  # in arrival order: one scatter
        del grad
        back = all_to_all_rows(buf, recv, send, dist_ctx)
        del buf
        # added to the rows they came from (a splat sent to several ranks gets the sum): one scatter
        out = _columns(ref.new_zeros(state["n"], GRAD_COLUMNS).index_add_(0, rows, back), widths)
        return (None, *out, None, None)


@dataclass
class Received:
    """Splats that arrived for the batch, camera slot by camera slot (``parts[b]`` rows for slot b), and the
    bytes this rank sent to other ranks and received from them."""

    splats: Splats
    parts: list[int]
    bytes_sent: int
    bytes_received: int = 0


def exchange_splats(
    splats: Splats, parts: list[int], pairs: Pairs, owners: list[torch.Tensor], ctx: DistContext
) -> Received:
    """Send each camera's projected splats to the ranks whose tiles they reach; return what this rank gets.

    ``splats`` holds ``parts[b]`` rows for camera slot b, one slot after another; ``pairs`` are their
    (splat, tile) pairs (:class:`grendel_py.render.interface.Pairs`); ``owners[b]``: the rank of each
    tile of slot b. Gradients with respect to means2d, conics, opacities and colors flow back to the sending
    rank. On the wire per splat: 12 floats (means2d 2, conics 3, opacity 1, colour 3, depth 1, extents 2:
    small integers, exact in float) and 1 int64 (global id); the receiver knows each row's camera slot from
    the counts. One host synchronisation: the read of the split sizes. Autograd keeps no copy of the splats
    sent; the gradients go back as 9 floats per splat.

    On one rank nothing moves: what it receives is ``splats`` itself, with no routing and no copy (the splats
    that reach none of its tiles are never binned, so they add nothing and get no gradient).
    """
    if not ctx.distributed:
        return Received(splats, parts, 0)
    w, n_slots = ctx.world_size, len(parts)
    n = max(len(splats), 1)
    reach = pairs.reach(torch.cat(owners), w)
    device = reach.device
    counts = torch.stack([reach[:, r : r + k].sum(1) for r, k in zip(part_starts(parts), parts)], 1)  # [w, slot]
    counts_in = exchange_counts(counts.flatten(), ctx)  # rows from each (rank, slot): W equal chunks of n_slots
    host = torch.cat([counts.flatten(), counts_in]).view(2, w, n_slots).tolist()  # the one read of sizes
    send, recv = [sum(c) for c in host[0]], [sum(c) for c in host[1]]
    # the true entries of reach, as rank * n + row: by destination rank, then camera slot, then row
    # (int32: 4 bytes a row for as long as the backward pass needs them)
    rows = torch.nonzero_static(reach.reshape(-1), size=sum(send)).squeeze(1).remainder_(n).to(torch.int32)
    del reach
    # rows arrive by sending rank, then slot: regroup them by slot
    slot_of_row = torch.repeat_interleave(
        torch.arange(n_slots, device=device).repeat(w), counts_in, output_size=sum(recv)
    )
    by_slot = torch.argsort(slot_of_row, stable=True)
    received = send_splats(splats, rows, send, recv, by_slot, ctx)
    splat_bytes = sum(w for _, w in WIRE) * splats.means2d.element_size() + splats.ids.element_size()
    sent_elsewhere = sum(c for q, c in enumerate(send) if q != ctx.rank)
    from_elsewhere = sum(c for q, c in enumerate(recv) if q != ctx.rank)
    return Received(
        received, [sum(col) for col in zip(*host[1])], sent_elsewhere * splat_bytes, from_elsewhere * splat_bytes
    )


def send_splats(
    splats: Splats, rows: torch.Tensor, send: list[int], recv: list[int], by_slot: torch.Tensor, ctx: DistContext
) -> Splats:
    """The splats ``rows`` (grouped by destination rank, ``send[q]`` for rank q) sent, and what arrives
    (``recv[q]`` from rank q) reordered by ``by_slot``; differentiable in means2d, conics,
    opacities and colors (see :class:`_SendSplats`)."""
    fields = [getattr(splats, name) for name, _ in WIRE]
    means2d, conics, opacities, colors, depths, extents = _SendSplats.apply((rows, send, recv, by_slot, ctx), *fields)
    ids = all_to_all_rows(splats.ids[rows], send, recv, ctx)
    return Splats(
        means2d=means2d,
        conics=conics,
        opacities=opacities,
        colors=colors,
        depths=depths,
        extents=extents.to(torch.int32),
        ids=ids[by_slot],
    )
