"""Tests for grendel_py.model.densify: statistics, clone / split / prune on hand-built models, the cap on the
number of Gaussians, schedules in images, opacity reset, ids of new Gaussians and state round trip."""

from __future__ import annotations

import math

import pytest
import torch

from grendel_py.config import DensifyConfig, OptimConfig
from grendel_py.model.densify import DensifyStrategy, screen_grad_norms
from grendel_py.model.gaussians import TRAINABLE, Gaussians
from grendel_py.model.geometry import quats_to_rotmats
from grendel_py.model.optim import GaussianOptimizer
from grendel_py.parallel.ids import IdAllocator
from grendel_py.parallel.runtime import init_distributed
from grendel_py.render.projection import pixel_radii

W, H = 100, 80
HIGH = 1e-5  # pixel gradient: NDC norm 1e-5 * W / 2 = 5e-4 >= the default threshold 2e-4
ID = [1.0, 0.0, 0.0, 0.0]
ROT_Z90 = [math.cos(math.pi / 4), 0.0, 0.0, math.sin(math.pi / 4)]


def _model(rows: list[tuple[list[float], list[float], float]], ids: list[int] | None = None) -> Gaussians:
    """Gaussians from (scales, quat, opacity) rows, means at (i, 0, 0), SH degree 1."""
    n = len(rows)
    opacity = torch.tensor([r[2] for r in rows])
    return Gaussians(
        means=torch.stack([torch.tensor([float(i), 0.0, 0.0]) for i in range(n)]),
        log_scales=torch.log(torch.tensor([r[0] for r in rows])),
        quats=torch.tensor([r[1] for r in rows], dtype=torch.float32),
        opacity_logits=torch.log(opacity / (1 - opacity)),
        sh0=torch.arange(n * 3, dtype=torch.float32).reshape(n, 1, 3),
        shN=torch.arange(n * 9, dtype=torch.float32).reshape(n, 3, 3),
        ids=torch.tensor(ids if ids is not None else list(range(n))),
    )


def _extents(extents: list[int]) -> torch.Tensor:
    """Splat extents [n, 2] (x, y): ``extents`` and half of it (0 stays 0: not visible)."""
    ext = torch.tensor(extents, dtype=torch.int32)
    return torch.stack([ext, ext // 2], dim=1)


class _Ids:
    """allocate_ids that records its calls."""

    def __init__(self, start: int = 100):
        self.next, self.calls = start, []

    def __call__(self, sources: torch.Tensor) -> torch.Tensor:
        n = len(sources)
        self.calls.append(n)
        ids = torch.arange(self.next, self.next + n)
        self.next += n
        return ids


def _setup(g: Gaussians, cfg: DensifyConfig, seed: int = 0) -> tuple[GaussianOptimizer, DensifyStrategy]:
    opt = GaussianOptimizer(g, OptimConfig(), extent=1.0)
    return opt, DensifyStrategy(cfg, 1.0, seed)


def _observe(strategy: DensifyStrategy, grads_x: list[float], extents: list[int], times: int = 1) -> None:
    grad = torch.tensor([[gx, 0.0] for gx in grads_x])
    for _ in range(times):
        strategy.observe(
            pixel_radii(_extents(extents)), screen_grad_norms(grad, W, H), torch.arange(len(extents)), len(extents)
        )


CFG = DensifyConfig(start_images=0, stop_images=1000, every_images=10, reset_opacity_every=3000)
SMALL, LARGE = [0.005, 0.004, 0.003], [0.05, 0.02, 0.01]  # percent_dense * extent = 0.01


def test_observe_accumulates_ndc_gradient_norms_for_visible_extents() -> None:
    s = DensifyStrategy(CFG, 1.0, 0)
    grad = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    rows = torch.arange(3)
    s.observe(pixel_radii(_extents([4, 0, 7])), screen_grad_norms(grad, 200, 100), rows, 3)
    s.observe(pixel_radii(_extents([9, 3, 2])), screen_grad_norms(grad, 200, 100), rows, 3)
    expected = [2 * math.hypot(100, 100), math.hypot(300, 200), 2 * math.hypot(500, 300)]
    torch.testing.assert_close(s.grad2d_sum, torch.tensor(expected))
    assert s.count.tolist() == [2, 1, 2]
    assert s.max_radius2d.tolist() == [9.0, 3.0, 7.0]
    s.observe(pixel_radii(_extents([0, 0, 0])), None, rows, 3)  # a camera that sees nothing
    assert s.count.tolist() == [2, 1, 2]
    # splats of some rows only (the step projects what each camera sees): the others are left as they were
    s.observe(
        pixel_radii(_extents([5, 2])), screen_grad_norms(grad[:2], 200, 100), torch.tensor([2, 0], dtype=torch.int32), 3
    )
    expected = [expected[0] + math.hypot(300, 200), expected[1], expected[2] + math.hypot(100, 100)]
    torch.testing.assert_close(s.grad2d_sum, torch.tensor(expected))
    assert s.count.tolist() == [3, 1, 3]
    assert s.max_radius2d.tolist() == [9.0, 3.0, 7.0]


def test_clone_split_prune_on_a_hand_built_model() -> None:
    # small high-grad -> cloned; large high-grad -> split; transparent -> pruned; normal -> unchanged
    g = _model([(SMALL, ID, 0.5), (LARGE, ROT_Z90, 0.5), (SMALL, ID, 0.001), (SMALL, ID, 0.5)])
    opt, s = _setup(g, CFG)
    for name in TRAINABLE:
        getattr(g, name).grad = torch.ones_like(getattr(g, name))
    opt.step()  # so there is Adam state to keep aligned
    stepped = g.select(torch.arange(4))
    _observe(s, [HIGH, 2 * HIGH, 0.0, HIGH / 10], [5, 5, 5, 5], times=3)
    ids = _Ids()

    result = s.step(9, 10, g, opt, ids)

    assert result == {"densified": True, "cloned": 1, "split": 1, "pruned": 1, "reset_opacity": False}
    assert ids.calls == [3]
    assert g.ids.tolist() == [0, 3, 100, 101, 102]
    row = {int(i): r for r, i in enumerate(g.ids)}
    for name in TRAINABLE:  # the clone is an exact copy; the normal Gaussian is untouched
        field = getattr(g, name).detach()
        assert torch.equal(field[row[100]], field[row[0]]) and torch.equal(field[row[0]], getattr(stepped, name)[0])
        assert torch.equal(field[row[3]], getattr(stepped, name)[3])
        assert opt.optimizer.state[getattr(g, name)]["exp_avg"].shape == field.shape
    parent = stepped.select(torch.tensor([1]))
    rot = quats_to_rotmats(parent.quats)[0]
    for i in (101, 102):
        child = g.select(torch.tensor([row[i]]))
        torch.testing.assert_close(child.scales()[0], parent.scales()[0] / 1.6)
        local = rot.T @ (child.means[0] - parent.means[0]).detach()
        assert bool((local.abs() <= 3 * parent.scales()[0]).all())
        for name in ("quats", "opacity_logits", "sh0", "shN"):
            assert torch.equal(getattr(child, name).detach(), getattr(parent, name))
    assert not torch.equal(g.means[row[101]], g.means[row[102]])
    assert s.grad2d_sum.shape == (5,) and not s.grad2d_sum.any() and not s.count.any() and not s.max_radius2d.any()


def test_mean_gradient_is_zero_for_never_seen_gaussians() -> None:
    g = _model([(SMALL, ID, 0.5), (LARGE, ID, 0.5)])
    opt, s = _setup(g, CFG)
    _observe(s, [HIGH, HIGH], [5, 0])  # the second is never visible: no count, no gradient
    result = s.step(0, 10, g, opt, _Ids())
    assert (result["cloned"], result["split"], result["pruned"]) == (1, 0, 0)
    assert len(g) == 3


@pytest.mark.parametrize("budget, cloned", [(4, 0), (5, 1), (6, 2), (100, 3)])
def test_the_budget_caps_growth_by_largest_gradients(budget: int, cloned: int) -> None:
    cfg = DensifyConfig(start_images=0, stop_images=1000, every_images=10, budget=budget)
    g = _model([(SMALL, ID, 0.5)] * 4)
    opt, s = _setup(g, cfg)
    _observe(s, [2 * HIGH, 4 * HIGH, 0.0, 3 * HIGH], [5] * 4)
    result = s.step(0, 10, g, opt, _Ids())
    assert result["cloned"] == cloned and len(g) == 4 + cloned
    largest_grads = sorted([1, 3, 0][:cloned])  # clones follow their parents' order
    assert g.means[4:, 0].tolist() == largest_grads


def test_cap_counts_a_split_as_one_more_gaussian() -> None:
    cfg = DensifyConfig(start_images=0, stop_images=1000, every_images=10, budget=3)
    g = _model([(LARGE, ID, 0.5), (LARGE, ID, 0.5)])
    opt, s = _setup(g, cfg)
    _observe(s, [HIGH, 2 * HIGH], [5, 5])
    result = s.step(0, 10, g, opt, _Ids())
    assert result["split"] == 1 and len(g) == 3
    assert g.ids.tolist() == [0, 100, 101]


def test_size_prunes_only_after_the_first_opacity_reset() -> None:
    cfg = DensifyConfig(start_images=0, stop_images=1000, every_images=10, reset_opacity_every=10)
    rows = [(SMALL, ID, 0.5), (SMALL, ID, 0.5), ([0.2, 0.01, 0.01], ID, 0.5)]
    for images, pruned in [(10, 0), (20, 2)]:
        g = _model(rows)
        opt, s = _setup(g, cfg)
        _observe(s, [0.0, 0.0, 0.0], [5, 21, 5])  # 21 px > max_screen_size; 0.2 > max_world_size * extent
        result = s.step(images - 1, images, g, opt, _Ids())
        assert result["pruned"] == pruned
        assert g.ids.tolist() == ([0, 1, 2] if pruned == 0 else [0])


def _events(batch_size: int, total: int, cfg: DensifyConfig) -> tuple[list[int], list[int]]:
    """The images at which densification and opacity resets ran, training ``total`` images in batches."""
    g = _model([(SMALL, ID, 0.5)] * 2)
    opt, s = _setup(g, cfg)
    densified, resets = [], []
    for after in range(batch_size, total + 1, batch_size):
        result = s.step(after - batch_size, after, g, opt, _Ids())
        if result["densified"]:
            densified.append(after // cfg.every_images * cfg.every_images)
        if result["reset_opacity"]:
            resets.append(after // cfg.reset_opacity_every * cfg.reset_opacity_every)
    return densified, resets


def test_schedule_counts_images_not_steps() -> None:
    cfg = DensifyConfig(start_images=20, stop_images=200, every_images=10, reset_opacity_every=50)
    expected = (list(range(30, 200, 10)), [50, 100, 150])
    assert _events(1, 240, cfg) == expected
    assert _events(4, 240, cfg) == expected
    assert _events(3, 240, cfg) == expected


def test_opacity_reset() -> None:
    cfg = DensifyConfig(start_images=100, stop_images=1000, reset_opacity_every=30)
    g = _model([(SMALL, ID, o) for o in (0.5, 0.005, 0.9)])
    opt, s = _setup(g, cfg)
    for name in TRAINABLE:
        getattr(g, name).grad = torch.ones_like(getattr(g, name))
    opt.step()
    assert s.step(0, 29, g, opt, _Ids())["reset_opacity"] is False
    result = s.step(29, 33, g, opt, _Ids())
    assert result == {"densified": False, "cloned": 0, "split": 0, "pruned": 0, "reset_opacity": True}
    opacities = g.opacities().detach()
    torch.testing.assert_close(opacities, torch.tensor([0.01, opacities[1].item(), 0.01]))
    assert opacities[1] < 0.01
    state = opt.optimizer.state[g.opacity_logits]
    assert not state["exp_avg"].any() and not state["exp_avg_sq"].any() and state["step"].item() == 1
    assert opt.optimizer.state[g.means]["exp_avg"].any()


def test_no_events_outside_the_schedule() -> None:
    cfg = DensifyConfig(start_images=20, stop_images=100, every_images=10, reset_opacity_every=50)
    g = _model([(SMALL, ID, 0.001)])
    opt, s = _setup(g, cfg)
    for before, after in [(0, 20), (100, 110), (145, 155)]:  # at start, at stop, past stop
        result = s.step(before, after, g, opt, _Ids())
        assert not result["densified"] and not result["reset_opacity"] and len(g) == 1


def test_step_rejects_a_model_other_than_the_optimizers() -> None:
    g = _model([(SMALL, ID, 0.5)])
    opt, s = _setup(g, CFG)
    with pytest.raises(ValueError, match="model"):
        s.step(0, 10, _model([(SMALL, ID, 0.5)]), opt, _Ids())


def test_state_dict_round_trip_reproduces_splits() -> None:
    rows = [(LARGE, ROT_Z90, 0.5), (SMALL, ID, 0.5)]
    results = []
    for restore in (False, True):
        g = _model(rows)
        opt, s = _setup(g, CFG, seed=7)
        _observe(s, [HIGH, 0.0], [6, 3])
        if restore:
            state = s.state_dict()
            fresh = DensifyStrategy(CFG, 1.0, 7)
            fresh.load_state_dict(state)
            s.grad2d_sum.zero_()  # the loaded strategy must not share tensors with the saved one
            s = fresh
            assert s.count.tolist() == [1, 1] and s.max_radius2d.tolist() == [6.0, 3.0]
        s.step(0, 10, g, opt, _Ids())
        results.append(g.means.detach().clone())
    assert torch.equal(results[0], results[1])


def test_split_draws_depend_on_ids_not_positions() -> None:
    """The same Gaussians in another order (or split among ranks) get the same children."""
    rows = [(LARGE, ROT_Z90, 0.5), (LARGE, ID, 0.5), (SMALL, ID, 0.5)]
    children = []
    for perm in ([0, 1, 2], [2, 0, 1]):
        g = _model(rows).select(torch.tensor(perm))
        opt, s = _setup(g, CFG, seed=3)
        _observe(s, [HIGH if rows[i][0] is LARGE else 0.0 for i in perm], [6, 3, 3])
        s.step(0, 10, g, opt, IdAllocator(100, init_distributed(env={})))
        order = torch.argsort(g.ids)
        children.append((g.ids[order], g.means.detach()[order]))
    assert len(set(children[0][0].tolist())) == 5  # 1 kept + 2 x 2 children, all ids distinct
    assert torch.equal(children[0][0], children[1][0])
    assert torch.equal(children[0][1], children[1][1])
