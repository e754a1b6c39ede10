"""Re-partition the Gaussians among ranks and move each one with everything that belongs to it.

Densification grows shards unevenly (the Gaussians that split and clone sit where the scene is detailed).
:func:`redistribute` computes fresh spatial shards over all ranks (:func:`partition.spatial.sharded_owners`:
all-reduces only, no rank sees the whole model) and moves every Gaussian to its new owner together with its
Adam moments and its densification statistics: one ``all_to_all_single`` of packed float rows and one of ids.
A shard arrives sorted by global id. Nothing a Gaussian carries changes on the way, so the next step is the
one the old shards would have taken (rendering orders splats by depth and id, never by rank or row).
"""

from __future__ import annotations

import math

import torch

from grendel_py.model.densify import Strategy
from grendel_py.model.gaussians import TRAINABLE
from grendel_py.model.optim import GaussianOptimizer
from grendel_py.parallel.exchange import all_to_all_rows, exchange_counts
from grendel_py.parallel.runtime import DistContext
from partition.spatial import sharded_owners


def shard_sizes(n_local: int, ctx: DistContext) -> torch.Tensor:
    """The number of Gaussians on every rank, int64 [W] (one all-reduce)."""
    sizes = torch.zeros(ctx.world_size, dtype=torch.int64)
    sizes[ctx.rank] = n_local
    return ctx.reduce(sizes, "sum")


def imbalance(sizes: torch.Tensor) -> float:
    """Largest shard over the mean shard (1.0 for an empty model)."""
    total = int(sizes.sum())
    return float(sizes.max()) * len(sizes) / total if total else 1.0


def redistribute(optimizer: GaussianOptimizer, densify: Strategy, mode: str, ctx: DistContext) -> int:
    """New ``mode`` shards ("kd", "morton", "array-order") for all ranks; moves this rank's Gaussians there.
    Returns how many Gaussians this rank sent to other ranks. Every rank must call it."""
    model = optimizer.gaussians
    owners = sharded_owners(model.means.detach(), model.ids, ctx.world_size, mode, ctx.reduce)
    return move_gaussians(optimizer, densify, owners, ctx)


def move_gaussians(optimizer: GaussianOptimizer, densify: Strategy, owners: torch.Tensor, ctx: DistContext) -> int:
    """Send each Gaussian of this rank to rank ``owners[i]`` (int64 [N]) with its parameters, Adam moments
    and densification statistics; the shard that arrives is sorted by id. Adam step counts are per field and
    the same on every rank that has stepped (the largest is kept). Returns the rows sent to other ranks."""
    model = optimizer.gaussians
    n = len(model)
    if owners.shape != (n,):
        raise ValueError(f"owners must be [{n}], got {list(owners.shape)}")
    state = optimizer.state_dict()
    adam = state["adam"]
    steps = ctx.reduce(torch.tensor([float(adam[f]["step"]) if adam[f] else 0.0 for f in TRAINABLE]), "max")
    moving = [f for f, s in zip(TRAINABLE, steps.tolist()) if s > 0]

    columns = [_rows(state["params"][f]) for f in TRAINABLE]
    for f in moving:
        for key in ("exp_avg", "exp_avg_sq"):
            local = adam[f][key] if adam[f] else torch.zeros_like(state["params"][f])
            columns.append(_rows(local))
    stats = densify.state_dict()  # one row per Gaussian; none yet (0 rows) counts as zeros
    names = sorted(stats)
    dtypes = {k: stats[k].dtype for k in names}
    columns += [stats[k].reshape(n, 1).float() if len(stats[k]) == n else model.means.new_zeros(n, 1) for k in names]
    widths = [c.shape[1] for c in columns]
    rows = torch.cat([c.float() for c in columns], dim=1)

    order = torch.argsort(owners, stable=True)
    send = torch.bincount(owners, minlength=ctx.world_size)
    recv = exchange_counts(send, ctx)
    got = all_to_all_rows(rows[order], send.tolist(), recv.tolist(), ctx)
    ids = all_to_all_rows(model.ids[order], send.tolist(), recv.tolist(), ctx)
    by_id = torch.argsort(ids)
    parts = iter(got[by_id].split(widths, dim=1))
    m = len(ids)

    params = {f: next(parts).reshape((m,) + state["params"][f].shape[1:]).contiguous() for f in TRAINABLE}
    new_adam = {f: {} for f in TRAINABLE}
    for f in moving:
        new_adam[f] = {
            "step": steps[TRAINABLE.index(f)].clone(),
            "exp_avg": next(parts).reshape(params[f].shape).contiguous(),
            "exp_avg_sq": next(parts).reshape(params[f].shape).contiguous(),
        }
    optimizer.load_state_dict({"params": params, "ids": ids[by_id], "adam": new_adam})
    moved = {k: next(parts)[:, 0].contiguous() for k in names}
    densify.load_state_dict(
        {k: v if dtypes[k].is_floating_point else v.round().to(dtypes[k]) for k, v in moved.items()}
    )
    return int(send.sum() - send[ctx.rank]) if ctx.distributed else 0


def _rows(t: torch.Tensor) -> torch.Tensor:
    """``t`` [N, ...] as a matrix [N, prod(...)] (also for N = 0)."""
    return t.reshape(t.shape[0], math.prod(t.shape[1:]))


def should_redistribute(n_local: int, threshold: float | None, ctx: DistContext) -> bool:
    """True when ``threshold`` is set and the largest shard exceeds ``threshold`` x the mean shard."""
    if threshold is None or not ctx.distributed:
        return False
    return imbalance(shard_sizes(n_local, ctx)) > threshold
