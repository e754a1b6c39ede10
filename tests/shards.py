"""Sharded model states gathered from ranks, as one table ordered by global id (for comparing shards)."""

from __future__ import annotations

import torch

from grendel_py.model.gaussians import TRAINABLE


def rows_by_id(opt_states: list[dict], densify_states: list[dict]) -> dict[str, torch.Tensor]:
    """Concatenate per-rank optimizer states (``GaussianOptimizer.state_dict()``: params, ids, Adam moments)
    and densification statistics, rows ordered by id: {"ids", field, "field.exp_avg", "field.exp_avg_sq",
    statistic}."""
    ids = torch.cat([s["ids"] for s in opt_states])
    order = torch.argsort(ids)
    out = {"ids": ids[order]}
    for f in TRAINABLE:
        out[f] = torch.cat([s["params"][f] for s in opt_states])[order]
        for key in ("exp_avg", "exp_avg_sq"):
            out[f"{f}.{key}"] = torch.cat([s["adam"][f][key] for s in opt_states])[order]
    for key in ("grad2d_sum", "count", "max_radius2d"):
        out[key] = torch.cat([d[key] for d in densify_states])[order]
    return out
