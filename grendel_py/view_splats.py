"""What a browser viewer shows of a sharded model: a budgeted selection, gathered on rank 0.

A viewer cannot take tens of millions of Gaussians, and rank 0 must never gather the whole model. Each rank
keeps its share of the budget, ``ceil(budget x n_rank / n_total)`` of its Gaussians, those with the largest
``opacity x footprint`` first (footprint: the product of the two largest scales, the area the Gaussian
covers seen face-on), and sends them to rank 0 in one collective. Ties are broken by global id, so the
selection of a rank does not depend on the order of its rows.

The arrays are what splat viewers take (viser's ``add_gaussian_splats``): centres, covariances
``R diag(s^2) R^T``, colours ``clip(0.5 + C0 f_dc, 0, 1)`` (the view-independent colour) and opacities.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.distributed as dist

from grendel_py.model.gaussians import Gaussians, sh0_to_rgb
from grendel_py.model.geometry import quats_to_rotmats
from grendel_py.parallel.runtime import DistContext

ViewSplats = dict[str, np.ndarray]
"""{"centers" [N, 3], "covariances" [N, 3, 3], "rgbs" [N, 3], "opacities" [N, 1]}, float32."""


def view_score(g: Gaussians) -> torch.Tensor:
    """``opacity x footprint`` per Gaussian [N] (footprint: product of its two largest scales)."""
    top2 = torch.topk(g.log_scales.detach(), 2, dim=1).values.sum(dim=1)
    return torch.sigmoid(g.opacity_logits.detach()) * torch.exp(top2)


def view_order(g: Gaussians, count: int) -> torch.Tensor:
    """The rows of the ``count`` Gaussians of ``g`` with the largest :func:`view_score` (ties: smaller id
    first), in that order (int64, on ``g``'s device)."""
    count = max(0, min(count, len(g)))
    by_id = torch.argsort(g.ids)
    order = torch.argsort(view_score(g)[by_id], descending=True, stable=True)
    return by_id[order[:count]]


def select_for_view(g: Gaussians, count: int) -> Gaussians:
    """The Gaussians of :func:`view_order`."""
    return g.select(view_order(g, count))


def view_splats(g: Gaussians, rows: torch.Tensor | None = None) -> ViewSplats:
    """The viewer's arrays for the Gaussians of ``g`` (those at ``rows`` only), computed on ``g``'s device
    from the fields they need and returned on the host."""
    with torch.no_grad():
        means, quats, log_scales, sh0, logits = (
            t.detach() if rows is None else t.detach()[rows]
            for t in (g.means, g.quats, g.log_scales, g.sh0, g.opacity_logits)
        )
        rot = quats_to_rotmats(torch.nn.functional.normalize(quats, dim=-1))
        cov = (rot * torch.exp(2.0 * log_scales)[:, None, :]) @ rot.transpose(1, 2)  # R diag(s^2) R^T
        arrays = {
            "centers": means,
            "covariances": cov,
            "rgbs": sh0_to_rgb(sh0).clamp(0.0, 1.0),
            "opacities": torch.sigmoid(logits)[:, None],
        }
        return {k: np.ascontiguousarray(v.float().cpu().numpy()) for k, v in arrays.items()}


def share_of_budget(budget: int, local: int, total: int) -> int:
    """How many of a rank's ``local`` Gaussians it sends when the model holds ``total`` and the viewer
    ``budget``: its proportional share, rounded up (so the ranks send at most ``budget + W - 1``)."""
    if total <= 0 or local <= 0:
        return 0
    return min(local, math.ceil(budget * local / total))


def gather_view_splats(shard: Gaussians, total: int, budget: int, ctx: DistContext) -> ViewSplats | None:
    """Every rank's budgeted selection of its ``shard`` (``total``: the Gaussians of all ranks, known to
    every rank), gathered on rank 0 in one collective: the arrays there, None on the other ranks."""
    mine = view_splats(shard, view_order(shard, share_of_budget(budget, len(shard), total)))
    if not ctx.distributed:
        return mine
    parts: list[ViewSplats] | None = [None] * ctx.world_size if ctx.is_main else None  # type: ignore[list-item]
    dist.gather_object(mine, parts, dst=0)
    if not ctx.is_main:
        return None
    return {k: np.concatenate([p[k] for p in parts]) for k in mine}
