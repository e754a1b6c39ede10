"""The step's stage clock (grendel_py/parallel/stage_clock.py): with a clock the step marks every forward stage
and autograd every backward stage, in order, and counts what drives them (the counts equal what the step did);
without one the step hooks nothing."""

from __future__ import annotations

import pytest
import torch

from grendel_py.parallel.runtime import single_process
from grendel_py.parallel.stage_clock import BACKWARD, FORWARD, StageClock
from grendel_py.parallel.step import Batch, StepOptions, batch_loss
from partition.balancer import TileBalancer
from tests.dist_util import run_ranks
from tests.test_dist_step import BG, _leaves, _setup


def _clocked(ctx) -> dict:
    g, cams, images = _setup()
    model = _leaves(g.select(g.ids % ctx.world_size == ctx.rank))  # as tests/test_dist_step.py shards
    clock = StageClock(torch.device("cpu"))
    options = StepOptions(BG, balancer=TileBalancer("locality", ctx.world_size, calibrate=False), clock=clock)
    clock.start()
    loss, rendered = batch_loss(model, Batch(cams, images, 1), options, ctx)
    loss.backward()
    clock.mark("project_backward")
    return {
        "order": [stage for stage, _ in clock._marks[1:]],
        "seconds": clock.seconds(),
        "counts": clock.counts,
        "parts": rendered.parts,
        "pixels": sum(c.width * c.height for c in cams),
        "cameras": len(cams),
        "gaussians": len(model),
    }


def _check_order(order: list[str]) -> None:
    firsts = list(dict.fromkeys(order))
    assert firsts == [*FORWARD, *BACKWARD], firsts


def test_one_rank_marks_every_stage_and_counts_its_work() -> None:
    out = _clocked(single_process("cpu"))
    _check_order(out["order"])
    assert all(s >= 0 for s in out["seconds"].values())
    counts = out["counts"]
    assert counts["gaussian_cameras"] == out["gaussians"] * out["cameras"]
    assert counts["visible"] == counts["received"] == sum(out["parts"]) > 0
    assert counts["loss_pixels"] == out["pixels"] and counts["halo_pixels"] == 0 and counts["bytes_sent"] == 0
    assert counts["pairs"] > counts["visible"] and counts["pixels"] >= out["pixels"]


def test_two_ranks_mark_every_stage_and_split_the_work() -> None:
    world = 2
    ranks = run_ranks(world, _clocked)
    one = _clocked(single_process("cpu"))
    for r in ranks:
        _check_order(r["order"])
    total = {k: sum(r["counts"][k] for r in ranks) for k in ("gaussian_cameras", "loss_pixels", "pairs")}
    assert total["gaussian_cameras"] == one["counts"]["gaussian_cameras"]  # the shards make up the model
    assert total["loss_pixels"] >= one["counts"]["loss_pixels"]  # the regions' boxes cover every pixel
    assert total["pairs"] == one["counts"]["pairs"]  # every (splat, tile) pair is rasterized by one rank
    assert all(r["counts"]["halo_pixels"] > 0 and r["counts"]["bytes_sent"] > 0 for r in ranks)


def test_no_clock_no_hooks() -> None:
    g, cams, images = _setup()
    model = _leaves(g)
    registered = []
    original = torch.Tensor.register_hook

    def spy(self, hook):
        registered.append(hook)
        return original(self, hook)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch.Tensor, "register_hook", spy)
        batch_loss(model, Batch(cams, images, 1), StepOptions(BG), single_process("cpu"))
    assert len(registered) == 1  # densification's own hook on means2d, no clock's
