"""The viewer's budgeted selection of a sharded model, gathered on rank 0."""

from __future__ import annotations

import math

import numpy as np
import torch

from grendel_py.model.gaussians import C0, Gaussians
from grendel_py.parallel.runtime import single_process
from grendel_py.view_splats import gather_view_splats, select_for_view, share_of_budget, view_score, view_splats
from tests.dist_util import run_ranks


def _model(n: int, seed: int = 0) -> Gaussians:
    gen = torch.Generator().manual_seed(seed)
    return Gaussians(
        means=torch.randn(n, 3, generator=gen),
        log_scales=torch.randn(n, 3, generator=gen) - 2,
        quats=torch.randn(n, 4, generator=gen),
        opacity_logits=torch.randn(n, generator=gen),
        sh0=torch.randn(n, 1, 3, generator=gen),
        shN=torch.zeros(n, 3, 3),
        ids=torch.randperm(n, generator=gen) * 3,
    )


def test_the_largest_opacity_times_footprint_first_whatever_the_row_order() -> None:
    g = _model(200)
    g.log_scales[7] = torch.tensor([3.0, 3.0, -9.0])  # flat but wide: footprint e^6, the largest by far
    g.opacity_logits[7] = 5.0
    g.log_scales[9] = torch.tensor([5.0, 5.0, 5.0])
    g.opacity_logits[9] = -30.0  # huge but transparent: last
    picked = select_for_view(g, 50)
    score = view_score(g)
    assert len(picked) == 50 and int(picked.ids[0]) == int(g.ids[7])
    assert float(view_score(picked).min()) >= float(torch.topk(score, 50).values.min())
    shuffled = g.select(torch.randperm(200, generator=torch.Generator().manual_seed(3)))
    assert torch.equal(select_for_view(shuffled, 50).ids, picked.ids)
    tied = _model(10)
    tied.log_scales[:] = -1.0
    tied.opacity_logits[:] = 0.0
    assert select_for_view(tied, 4).ids.tolist() == sorted(tied.ids.tolist())[:4]  # ties: smaller id first
    assert len(select_for_view(g, 0)) == 0 and len(select_for_view(g, 10**6)) == 200


def test_viewer_arrays() -> None:
    g = _model(3)
    g.quats[0] = torch.tensor([math.cos(math.pi / 4), 0.0, 0.0, math.sin(math.pi / 4)])  # 90 degrees about z
    g.log_scales[0] = torch.log(torch.tensor([1.0, 2.0, 3.0]))
    g.sh0[0, 0] = torch.tensor([0.0, 10.0, -10.0])
    a = view_splats(g)
    assert {k: v.shape for k, v in a.items()} == {
        "centers": (3, 3),
        "covariances": (3, 3, 3),
        "rgbs": (3, 3),
        "opacities": (3, 1),
    }
    assert all(v.dtype == np.float32 for v in a.values())
    assert np.allclose(a["covariances"][0], np.diag([4.0, 1.0, 9.0]), atol=1e-5)  # x and y swap under the rotation
    assert np.allclose(a["rgbs"][0], [0.5, 1.0, 0.0])
    assert np.allclose(a["rgbs"][1], np.clip(0.5 + C0 * g.sh0[1, 0].numpy(), 0, 1))
    assert np.allclose(a["opacities"][:, 0], torch.sigmoid(g.opacity_logits).numpy())


def test_share_of_budget() -> None:
    assert share_of_budget(100, 60, 180) == 34  # ceil(33.3)
    assert share_of_budget(100, 30, 60) == 30  # the whole shard when the model is within the budget
    assert share_of_budget(100, 0, 60) == 0 and share_of_budget(100, 5, 0) == 0
    assert len(gather_view_splats(_model(40), 40, 25, single_process("cpu"))["centers"]) == 25


def _gather_job(ctx, budget: int) -> dict | None:
    g = _model(300)
    mine = g.select(torch.arange(300)[(torch.arange(300) % 3 == 0) == (ctx.rank == 0)])  # 100 and 200 rows
    out = gather_view_splats(mine, 300, budget, ctx)
    return None if out is None else {k: v.tolist() for k, v in out.items()}


def test_each_rank_sends_its_share_to_rank_zero() -> None:
    zero, one = run_ranks(2, _gather_job, 60)
    assert one is None
    g = _model(300)
    rows = torch.arange(300)
    first = select_for_view(g.select(rows[rows % 3 == 0]), 20)  # 60 x 100 / 300
    second = select_for_view(g.select(rows[rows % 3 != 0]), 40)
    want = view_splats(Gaussians.cat([first, second]))
    for k, v in want.items():
        # sigmoid's SIMD tail may differ
        assert np.allclose(np.array(zero[k], dtype=np.float32), v, rtol=0, atol=1e-6), k
