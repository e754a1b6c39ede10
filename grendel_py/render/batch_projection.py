"""Projection of a model for a batch of cameras, keeping for autograd nothing per Gaussian but the parameters.

:func:`project_rows` projects chosen rows of the model for each camera of a batch into one table of splats
(:class:`~grendel_py.render.projection.Splats`, one camera after another). Autograd keeps the model's
parameters (the leaves themselves, not copies) and the row indices; everything in between (activated
scales and opacities, the SH coefficients side by side, covariances, the SH basis) is recomputed in the
backward pass one piece of :data:`PROJECT_ROWS` Gaussians at a time, to the bits the forward computed, and
each piece's parameter gradients are added into one buffer per field, which becomes the parameter's
``.grad``. So the backward needs the parameters' gradients once, plus one piece's intermediates, however
many cameras and Gaussians the batch has. (A checkpoint per piece, as before, also allocated a zero-filled
gradient of the whole field for every piece: the backward of the gather.) A small projection, whose graphs
take at most ``keep_bytes`` (:data:`~grendel_py.backward_state.KEEP_BYTES`), keeps every piece's graph from
the forward instead: the same pieces and operations, so the same bits, without the second projection.

:func:`visible_rows` finds, without autograd, which Gaussians each camera gives a non-zero extent, so that
only those are projected with autograd.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import fields

import torch

from grendel_py import backward_state
from grendel_py.backward_state import load, save
from grendel_py.data.cameras import Camera
from grendel_py.model.gaussians import TRAINABLE, Gaussians
from grendel_py.render.interface import Renderer
from grendel_py.render.projection import Splats

KEPT_BYTES_PER_ROW = 1024
"""What a projected row's autograd graph takes (its intermediates: see :data:`PROJECT_ROWS`), for deciding
whether a pass keeps it (:data:`~grendel_py.backward_state.KEEP_BYTES`)."""

PROJECT_ROWS = 1 << 15
"""Gaussians per piece: the backward pass recomputes one piece at a time. Its intermediates take about 1 KB
a Gaussian, so 2^15 of them about 32 MB (8 B a Gaussian at 4M); on the CPU smaller pieces are no slower
(1M Gaussians at SH degree 3, one camera, one thread: forward 1.5 s and backward 3.9-4.2 s at 2^15 against
1.6-1.7 s and 4.7-5.4 s at 2^17)."""

_OUTPUTS = ("means2d", "conics", "depths", "opacities", "colors")
"""The differentiable fields of :class:`Splats`."""

Rows = torch.Tensor | None
"""Model rows a camera projects: int32 or int64 indices, or None for all of them."""


def _pieces(n: int, rows: Rows) -> list[slice | torch.Tensor]:
    """Selections of at most :data:`PROJECT_ROWS` Gaussians covering all ``n`` (``rows`` None) or ``rows``;
    one empty selection when there is nothing."""
    if rows is None:
        return [slice(r, r + PROJECT_ROWS) for r in range(0, n, PROJECT_ROWS)] or [slice(0, 0)]
    return [rows[r : r + PROJECT_ROWS] for r in range(0, rows.shape[0], PROJECT_ROWS)] or [rows]


def _project_piece(
    model: Gaussians, piece: slice | torch.Tensor, camera: Camera, degree: int, ops: Renderer, antialiased: bool
) -> Splats:
    g = model.select(piece)
    return ops.project(
        g.means, g.quats, g.scales(), g.opacities(), g.sh(), degree, camera, g.ids, antialiased=antialiased
    )


def _project_all(
    model: Gaussians,
    rows: list[Rows],
    counts: list[int],
    cameras: list[Camera],
    degree: int,
    ops: Renderer,
    antialiased: bool,
) -> Splats:
    """The splats of every camera, piece by piece, written into one table (no concatenation of copies)."""
    work = [(cam, piece) for cam, r in zip(cameras, rows) for piece in _pieces(len(model), r)]
    return _table((_project_piece(model, piece, cam, degree, ops, antialiased) for cam, piece in work), counts)


def _table(pieces: Iterable[Splats], counts: list[int]) -> Splats:
    """The splats of ``pieces`` (``sum(counts)`` rows in all) as one table, detached from autograd: a lone
    piece as it is, several written one after another into a new table."""
    table, start = None, 0
    for s in pieces:
        if table is None and len(s) == sum(counts):
            return Splats(**{f.name: getattr(s, f.name).detach() for f in fields(Splats)})
        if table is None:
            table = {
                f.name: getattr(s, f.name).new_empty((sum(counts),) + getattr(s, f.name).shape[1:])
                for f in fields(Splats)
            }
        for name, t in table.items():
            t[start : start + len(s)] = getattr(s, name).detach()
        start += len(s)
    return Splats(**table)


def _piece_graphs(params, wanted, ids, rows, cameras, degree, ops, antialiased) -> Iterator[tuple]:
    """(piece, leaves, splats) of every camera's pieces in order, each projected with autograd from detached
    leaves of the parameters' rows (``wanted``: which need a gradient)."""
    for cam, r in zip(cameras, rows):
        for piece in _pieces(len(ids), r):
            with torch.enable_grad():
                leaves = [p[piece].detach().requires_grad_(w) for p, w in zip(params, wanted)]
                model = Gaussians(*leaves, ids=ids[piece])
                yield piece, leaves, _project_piece(model, slice(None), cam, degree, ops, antialiased)


class _ProjectRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, plan, *params):
        ids, rows, counts, cameras, degree, ops, antialiased, into_grad, keep_bytes = plan
        ctx.leaves = params if into_grad else None  # leaves only (checked by project_rows): no reference cycle
        ctx.kept = None
        if sum(counts) * KEPT_BYTES_PER_ROW <= keep_bytes:  # keep every piece's graph: nothing recomputed
            wanted = ctx.needs_input_grad[1:]
            ctx.kept = list(_piece_graphs(params, wanted, ids, rows, cameras, degree, ops, antialiased))
            s = _table([splats for _, _, splats in ctx.kept], counts)
        else:
            s = _project_all(Gaussians(*params, ids=ids), rows, counts, cameras, degree, ops, antialiased)
        save(ctx, params, plan=plan)
        ctx.mark_non_differentiable(s.extents, s.ids)
        return tuple(getattr(s, f.name) for f in fields(Splats))

    @staticmethod
    def backward(ctx, *grads):
        params, state = load(ctx)
        ids, rows, counts, cameras, degree, ops, antialiased, _, _ = state["plan"]
        wanted = ctx.needs_input_grad[1:]
        if ctx.leaves is not None:  # add into .grad itself, allocating it only when there is none yet
            for leaf, w in zip(ctx.leaves, wanted):
                if w and leaf.grad is None:
                    leaf.grad = torch.zeros_like(leaf)
            out = [leaf.grad if w else None for leaf, w in zip(ctx.leaves, wanted)]
        else:
            out = [torch.zeros_like(p) if w else None for p, w in zip(params, wanted)]
        by_name = dict(zip([f.name for f in fields(Splats)], grads))
        graphs = ctx.kept or _piece_graphs(params, wanted, ids, rows, cameras, degree, ops, antialiased)
        ctx.kept = None
        start = 0
        for piece, leaves, s in graphs:
            end = start + len(s)
            pairs = [
                (getattr(s, n), by_name[n][start:end])
                for n in _OUTPUTS
                if by_name[n] is not None and getattr(s, n).requires_grad
            ]
            inputs = [leaf for leaf in leaves if leaf.requires_grad]
            got = (
                torch.autograd.grad([o for o, _ in pairs], inputs, [g for _, g in pairs], allow_unused=True)
                if pairs
                else []
            )
            for buf, g in zip([b for b in out if b is not None], got):
                if g is None:
                    continue
                if isinstance(piece, slice):
                    buf[piece] += g
                else:
                    buf.index_add_(0, piece, g)
            start = end
        return (None, *([None] * len(out) if ctx.leaves is not None else out))


def project_rows(
    model: Gaussians,
    rows: list[Rows],
    counts: list[int],
    cameras: list[Camera],
    degree: int,
    ops: Renderer,
    into_grad: bool = False,
    antialiased: bool = False,
    keep_bytes: int | None = None,
) -> Splats:
    """The projection at SH degree ``degree`` with the renderer ``ops`` of the model rows ``rows[b]``
    (``counts[b]`` of them; None: all, in order) for camera b, one camera after another (``antialiased``: see
    :func:`~grendel_py.render.projection.project`). When autograd records, only the parameters and ``rows``
    are kept, unless the pieces' graphs take at most ``keep_bytes`` (None:
    :data:`~grendel_py.backward_state.KEEP_BYTES`); see the module's description.

    ``into_grad``: the backward pass adds the parameters' gradients into their ``.grad`` itself (allocated
    when None) and hands autograd none, so that a backward after another (gradients accumulating over the
    passes of a batch) needs no second gradient-sized buffer; ``torch.autograd.grad`` then sees no
    gradient for them. The parameters must be leaves."""
    if not cameras:
        raise ValueError("project_rows: no cameras")
    params = [getattr(model, name) for name in TRAINABLE]
    if not (torch.is_grad_enabled() and any(p.requires_grad for p in params)):
        return _project_all(model, rows, counts, cameras, degree, ops, antialiased)
    if into_grad and not all(p.is_leaf for p in params):
        raise ValueError("project_rows: into_grad needs parameters that are leaves of autograd")
    keep = backward_state.KEEP_BYTES if keep_bytes is None else keep_bytes
    plan = (model.ids, rows, counts, cameras, degree, ops, antialiased, into_grad, keep)
    return Splats(*_ProjectRows.apply(plan, *params))


def visible_rows(
    model: Gaussians, cameras: list[Camera], ops: Renderer, antialiased: bool = False
) -> tuple[list[torch.Tensor], list[int]]:
    """Per camera, the rows (int32, ascending) of the Gaussians the projection gives a non-zero extent, and
    their numbers (one read to the host for all cameras). Found without autograd by the same projection
    without colours (SH degree 0), in the same pieces of :data:`PROJECT_ROWS`."""
    masks = []
    with torch.no_grad():
        for cam in cameras:
            parts = []
            for piece in _pieces(len(model), None):
                g = model.select(piece)
                parts.append(
                    ops.project(
                        g.means, g.quats, g.scales(), g.opacities(), g.sh0, 0, cam, g.ids, antialiased=antialiased
                    ).visible
                )
            masks.append(torch.cat(parts))
    counts = torch.stack([m.sum() for m in masks]).tolist() if masks else []
    return [_true_rows(m, c) for m, c in zip(masks, counts)], counts


def _true_rows(mask: torch.Tensor, count: int) -> torch.Tensor:
    """The indices (int32) of the ``count`` true entries of ``mask``, ascending, without a host
    synchronisation."""
    if mask.shape[0] > torch.iinfo(torch.int32).max:
        raise ValueError(f"visible_rows: {mask.shape[0]} Gaussians on one rank is more than int32 rows can index")
    slot = torch.where(mask, torch.cumsum(mask, 0) - 1, count)  # the false entries all land in slot ``count``
    rows = torch.empty(count + 1, dtype=torch.int32, device=mask.device)
    rows.scatter_(0, slot, torch.arange(mask.shape[0], dtype=torch.int32, device=mask.device))
    return rows[:count]
