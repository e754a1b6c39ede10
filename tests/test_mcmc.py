"""densify.strategy: mcmc (grendel_py.model.mcmc): the sharing rule, draws proportional to opacity that do not
depend on the ranks, relocation and growth under a global budget with their Adam state, noise and
regularisers."""

from __future__ import annotations

import math

import pytest
import torch

from grendel_py.config import DensifyConfig, OptimConfig
from grendel_py.model.gaussians import TRAINABLE, Gaussians
from grendel_py.model.geometry import covariances_3d
from grendel_py.model.mcmc import MAX_SHARE, MCMCStrategy, draw_counts, share
from grendel_py.model.optim import GaussianOptimizer
from grendel_py.parallel.ids import IdAllocator
from grendel_py.parallel.runtime import init_distributed
from tests.dist_util import run_ranks
from tests.render_scenes import random_gaussians


@pytest.mark.parametrize("parts", [1, 2, 3, 7, MAX_SHARE])
def test_shares_keep_the_alpha_at_the_centre_and_the_integral_along_a_line(parts: int) -> None:
    o = torch.tensor([0.02, 0.3, 0.7, 0.95], dtype=torch.float64)
    scales = torch.tensor([[1.0, 2.0, 0.5]] * 4, dtype=torch.float64)
    new_o, new_s = share(o, scales, torch.full((4,), parts), min_opacity=0.0)
    torch.testing.assert_close(1 - (1 - new_o) ** parts, o)  # k + 1 copies on top of each other: the same alpha
    t = torch.linspace(-12, 12, 24001, dtype=torch.float64)[:, None]  # along an axis, in units of the old scale
    old = o * torch.exp(-0.5 * t**2)
    g = torch.exp(-0.5 * (t * scales[:, 0] / new_s[:, 0]) ** 2)
    together = 1 - (1 - new_o * g) ** parts
    torch.testing.assert_close(
        torch.trapezoid(together, t[:, 0], dim=0), torch.trapezoid(old, t[:, 0], dim=0), rtol=1e-6, atol=0
    )
    torch.testing.assert_close(new_s / new_s[:, :1], scales / scales[:, :1])  # every axis by the same factor
    if parts == 1:
        torch.testing.assert_close(new_s, scales)


def test_draws_are_exactly_n_and_proportional_to_weight() -> None:
    gen = torch.Generator().manual_seed(0)
    weights = torch.rand(4000, generator=gen) ** 2
    ids = torch.randperm(10_000, generator=gen)[:4000]
    counts = draw_counts(weights, ids, 20_000, key=5)
    assert int(counts.sum()) == 20_000 and int(counts.min()) >= 0
    expected = 20_000 * weights.double() / weights.double().sum()
    order = torch.argsort(weights)
    for part in order.chunk(8):  # eight bands of weight: the draws within 4 standard deviations of n w / W
        mean = float(expected[part].sum())
        assert abs(float(counts[part].sum()) - mean) <= 4 * math.sqrt(mean)
    assert torch.equal(draw_counts(weights, ids, 20_000, key=5), counts)
    assert not torch.equal(draw_counts(weights, ids, 20_000, key=6), counts)
    assert int(draw_counts(weights, ids, 0, key=5).sum()) == 0
    assert int(draw_counts(torch.zeros(10), torch.arange(10), 5, key=5).sum()) == 0


def _draw_job(ctx, n: int):
    gen = torch.Generator().manual_seed(1)
    weights, ids = torch.rand(3000, generator=gen), torch.randperm(3000, generator=gen)
    mine = ids % ctx.world_size == ctx.rank
    return ids[mine], draw_counts(weights[mine], ids[mine], n, key=11, reduce=ctx.reduce)


@pytest.mark.parametrize("n", [40, 2500])
def test_draws_do_not_depend_on_the_ranks(n: int) -> None:
    one_ids, one = _draw_job(init_distributed(env={}), n)
    per_id = dict(zip(one_ids.tolist(), one.tolist()))
    results = run_ranks(3, _draw_job, n)
    assert sum(int(c.sum()) for _, c in results) == n == int(one.sum())
    for ids, counts in results:
        assert counts.tolist() == [per_id[i] for i in ids.tolist()]


def _optimizer(g: Gaussians) -> GaussianOptimizer:
    """An optimizer over ``g`` whose Adam moments are non-zero (one step on made-up gradients)."""
    opt = GaussianOptimizer(g, OptimConfig(), extent=1.0)
    gen = torch.Generator().manual_seed(3)
    for name in TRAINABLE:
        getattr(g, name).grad = torch.randn(getattr(g, name).shape, generator=gen)
    opt.step()
    return opt


def _moments(opt: GaussianOptimizer, name: str) -> torch.Tensor:
    return opt.optimizer.state[getattr(opt.gaussians, name)]["exp_avg"]


def test_a_refinement_relocates_the_dead_grows_to_the_budget_and_resets_adam_state() -> None:
    g = random_gaussians(300, seed=4, sh_degree=1, dtype=torch.float32)
    g.opacity_logits[:40] = -8.0  # dead: opacity 3e-4
    cfg = DensifyConfig(strategy="mcmc", start_images=0, stop_images=1000, every_images=10, budget=310, noise_lr=0.0)
    opt = _optimizer(g)
    dead = set(g.ids[g.opacities() <= cfg.min_opacity].tolist())
    assert len(dead) >= 40
    before = {name: dict(zip(g.ids.tolist(), _moments(opt, name))) for name in TRAINABLE}
    params = {name: dict(zip(g.ids.tolist(), getattr(g, name).detach())) for name in TRAINABLE}
    strategy = MCMCStrategy(cfg, extent=1.0, seed=2)
    allocate = IdAllocator(1000, init_distributed(env={}))
    events = strategy.step(5, 10, g, opt, allocate)
    # 300 -> floor(1.05 x 300) = 315 > budget 310
    assert events == {"densified": True, "relocated": len(dead), "added": 10}
    assert len(g) == 310 == strategy.total(g) and len(set(g.ids.tolist())) == 310
    assert bool((g.opacities() > cfg.min_opacity).all())  # no dead left
    ids = g.ids.tolist()
    new = [k for k, i in enumerate(ids) if i >= 1000]
    kept = [k for k, i in enumerate(ids) if i < 1000]
    assert len(new) == len(dead) + 10 and not dead & {ids[k] for k in kept}  # the dead are gone
    changed = [k for k in kept if not torch.equal(g.opacity_logits[k].detach(), params["opacity_logits"][ids[k]])]
    assert changed  # the drawn sources now share their contribution with their copies...
    for name in TRAINABLE:
        m = _moments(opt, name)
        for k in kept:  # ...and start over in Adam, while the others keep their moments
            assert torch.equal(m[k], torch.zeros_like(m[k]) if k in changed else before[name][ids[k]]), (name, ids[k])
        assert bool((m[new] == 0).all()), name  # copies start at zero
    sources = {tuple(g.means[k].tolist()): k for k in changed}
    for k in new:  # each copy sits on a drawn source, with its orientation and colour (opacity and scales are
        source = sources[tuple(g.means[k].tolist())]  # shared, the last time either was drawn)
        for name in ("quats", "sh0", "shN"):
            assert torch.equal(getattr(g, name)[k].detach(), getattr(g, name)[source].detach()), name
    # nothing due: nothing changes
    assert strategy.step(10, 19, g, opt, allocate) == {"densified": False, "relocated": 0, "added": 0} and len(g) == 310


def test_noise_moves_only_nearly_transparent_gaussians_by_their_covariance() -> None:
    g = random_gaussians(200, seed=5, sh_degree=0, dtype=torch.float32)
    g.opacity_logits[:100] = -7.0  # opacity 9e-4: the noise gate is open
    g.opacity_logits[100:] = 1.0  # opacity 0.73: shut
    opt = GaussianOptimizer(g, OptimConfig(), extent=1.0)
    strategy = MCMCStrategy(DensifyConfig(strategy="mcmc", start_images=1000), extent=1.0, seed=0)
    means = g.means.detach().clone()
    strategy.step(0, 4, g, opt, lambda s: s)
    moved = (g.means.detach() - means).norm(dim=1)
    assert bool((moved[:100] > 0).all()) and float(moved[100:].max()) < 1e-12
    with torch.no_grad():  # the step is Sigma z x gate(opacity) x lr x noise_lr with z standard normal
        o = g.opacities()[:100].double()
        scale = torch.sigmoid(100 * (1 - o - 0.995)) * opt.lr("means") * 5e5
        cov = covariances_3d(g.quats[:100].double(), g.scales()[:100].double())
        z = torch.linalg.solve(cov, (g.means[:100] - means[:100]).double() / scale[:, None])
    assert abs(float(z.mean())) < 0.2 and 0.85 < float(z.std()) < 1.15
    again = g.means.detach().clone()
    strategy.step(0, 4, g, opt, lambda s: s)  # the same step again: the same draw (counter-based)
    torch.testing.assert_close(g.means.detach() - again, again - means)


def test_regularisers_add_the_gradient_of_the_mean_opacity_and_scale_per_image() -> None:
    g = random_gaussians(50, seed=6, sh_degree=0, dtype=torch.float64)
    cfg = DensifyConfig(strategy="mcmc", opacity_reg=0.02, scale_reg=0.03)
    leaves = {k: getattr(g, k).detach().clone().requires_grad_(True) for k in ("opacity_logits", "log_scales")}
    reg = 4 * (0.02 * torch.sigmoid(leaves["opacity_logits"]).mean() + 0.03 * torch.exp(leaves["log_scales"]).mean())
    reg.backward()
    for k, v in leaves.items():
        setattr(g, k, v.detach().clone().requires_grad_(True))
    MCMCStrategy(cfg, extent=1.0, seed=0).regularise(g, images=4)
    torch.testing.assert_close(g.opacity_logits.grad, leaves["opacity_logits"].grad)
    torch.testing.assert_close(g.log_scales.grad, leaves["log_scales"].grad)
