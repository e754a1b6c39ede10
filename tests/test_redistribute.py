"""Re-partitioning a sharded model moves every Gaussian with its Adam state and statistics, changes no
result, and the model-size cap holds for the whole model, whichever rank holds what."""

from __future__ import annotations

import pytest
import torch

from grendel_py.config import DensifyConfig, OptimConfig
from grendel_py.model.densify import DensifyStrategy
from grendel_py.model.gaussians import TRAINABLE
from grendel_py.model.optim import GaussianOptimizer
from grendel_py.parallel.ids import IdAllocator
from grendel_py.parallel.redistribute import imbalance, redistribute, shard_sizes
from grendel_py.parallel.runtime import single_process
from grendel_py.parallel.step import Batch, StepOptions, batch_loss
from partition.balancer import TileBalancer
from partition.spatial import assign_owners
from tests.dist_util import run_ranks
from tests.render_scenes import random_gaussians
from tests.shards import rows_by_id
from tests.test_dist_step import BG
from tests.test_dist_step import _setup as dist_step_scene


def _snapshot(opt: GaussianOptimizer, densify: DensifyStrategy) -> dict:
    state = opt.state_dict()
    return {"ids": state["ids"], "params": state["params"], "adam": state["adam"], "densify": densify.state_dict()}


def _stepped_shard(ctx, n: int = 300):
    """This rank's rows of a random model (scattered by id: far from compact), after two Adam steps with
    gradients that depend on the values, and with densification statistics set from the ids."""
    g = random_gaussians(n, seed=5, sh_degree=1, dtype=torch.float32)
    shard = g.select(g.ids % ctx.world_size == ctx.rank)
    opt = GaussianOptimizer(shard, OptimConfig(), extent=2.0, batch_size=2)
    for _ in range(2):
        for name in TRAINABLE:
            p = getattr(shard, name)
            p.grad = torch.sin(3.0 * p.detach() + 1.0)
        opt.step()
    densify = DensifyStrategy(DensifyConfig(), 2.0, 0, ctx.reduce)
    ids = shard.ids
    densify.load_state_dict({"grad2d_sum": ids * 0.25, "count": (ids % 5).int(), "max_radius2d": (ids % 7).float()})
    return opt, densify


def _move_job(ctx) -> dict:
    opt, densify = _stepped_shard(ctx)
    before = _snapshot(opt, densify)
    sent = redistribute(opt, densify, "kd", ctx)
    return {
        "before": before,
        "after": _snapshot(opt, densify),
        "sent": sent,
        "sizes": shard_sizes(len(opt.gaussians), ctx),
    }


def _by_id(parts: list[dict]) -> dict:
    """Concatenate per-rank snapshots, rows ordered by id, with the set of Adam step counts per field."""
    out = rows_by_id(parts, [p["densify"] for p in parts])
    for f in TRAINABLE:
        out[f"{f}.step"] = {float(p["adam"][f]["step"]) for p in parts}
    return out


def test_redistribution_moves_rows_with_adam_state_and_statistics() -> None:
    results = run_ranks(3, _move_job)
    before, after = _by_id([r["before"] for r in results]), _by_id([r["after"] for r in results])
    for key, value in before.items():
        if isinstance(value, set):
            assert value == after[key] == {2.0}, key
        else:
            assert torch.equal(value, after[key]), key
    # the new shards are the kd partition of the whole model, each sorted by id and balanced to one row
    expected = assign_owners(after["means"], 3, "kd", ids=after["ids"])
    for rank, r in enumerate(results):
        ids = r["after"]["ids"]
        assert torch.equal(ids, torch.sort(ids).values)
        assert bool((expected[torch.searchsorted(after["ids"], ids)] == rank).all())
    sizes = results[0]["sizes"]
    assert int(sizes.max() - sizes.min()) <= 1 and imbalance(sizes) < 1.01
    assert sum(r["sent"] for r in results) > 0


def _two_steps_job(ctx, move_between: bool) -> dict:
    """Two training steps on a shard scattered by id, redistributing between them or not."""
    g, cams, images = dist_step_scene()
    shard = g.select(g.ids % ctx.world_size == ctx.rank)
    opt = GaussianOptimizer(shard, OptimConfig(), extent=3.0, batch_size=len(cams))
    densify = DensifyStrategy(DensifyConfig(), 3.0, 0, ctx.reduce)
    losses = []
    # A tile assignment blind to ownership: `locality` would render other tiles after the move, which changes
    # the float summation order of the gradients (the math, not the bits, is the same).
    balancer = TileBalancer("balanced", ctx.world_size, calibrate=False)
    for step in range(2):
        loss, rendered = batch_loss(opt.gaussians, Batch(cams, images, 1), StepOptions(BG, balancer=balancer), ctx)
        loss.backward()
        densify.observe(*rendered.statistics(), len(opt.gaussians))
        opt.step()
        losses.append(float(loss.detach()))
        if step == 0 and move_between:
            redistribute(opt, densify, "kd", ctx)
    return {**_snapshot(opt, densify), "losses": losses}


def test_redistribution_does_not_change_the_next_step() -> None:
    kept = run_ranks(2, _two_steps_job, False)
    moved = run_ranks(2, _two_steps_job, True)
    for step in range(2):
        assert sum(r["losses"][step] for r in moved) == pytest.approx(sum(r["losses"][step] for r in kept), rel=1e-6)
    a, b = _by_id(kept), _by_id(moved)
    assert torch.equal(a["ids"], b["ids"])
    for key, value in a.items():
        if isinstance(value, set):
            assert value == b[key], key
        else:
            assert torch.allclose(value.float(), b[key].float(), rtol=1e-5, atol=1e-7), key
    assert not torch.equal(kept[0]["ids"], moved[0]["ids"])  # the shards really changed


CAP_CFG = DensifyConfig(start_images=0, stop_images=1000, every_images=10, reset_opacity_every=5000, budget=131)


def _cap_job(ctx) -> dict:
    """One densification of a 100-Gaussian model (grads from the ids, with ties) capped at 131 in all (the cap falls between two equal gradients)."""
    g = random_gaussians(100, seed=9, sh_degree=0, dtype=torch.float32, opacity_shift=4.0)
    shard = g.select(g.ids % ctx.world_size == ctx.rank)
    opt = GaussianOptimizer(shard, OptimConfig(), extent=1.0)
    densify = DensifyStrategy(CAP_CFG, 1.0, 0, ctx.reduce)
    grads = (shard.ids // 2).float() * 1e-4  # pairs of ids share a gradient
    densify.load_state_dict(
        {
            "grad2d_sum": grads,
            "count": torch.ones(len(grads), dtype=torch.int32),
            "max_radius2d": torch.zeros(len(grads)),
        }
    )
    result = densify.step(5, 10, shard, opt, IdAllocator(1000, ctx))
    return {"ids": shard.ids.clone(), "means": shard.means.detach().clone(), "result": result}


def test_model_size_cap_is_global_and_rank_invariant() -> None:
    one = _cap_job(single_process())
    two = run_ranks(2, _cap_job)
    ids_one = torch.sort(one["ids"]).values
    ids_two = torch.sort(torch.cat([r["ids"] for r in two])).values
    assert len(ids_one) == CAP_CFG.budget  # grown to the cap, not to a per-rank share of it
    assert torch.equal(ids_one, ids_two)
    means_two = torch.cat([r["means"] for r in two])[torch.argsort(torch.cat([r["ids"] for r in two]))]
    assert torch.equal(one["means"][torch.argsort(one["ids"])], means_two)
    grown = sum(r["result"]["cloned"] + r["result"]["split"] for r in two)
    assert grown == one["result"]["cloned"] + one["result"]["split"] == 31
