"""Tests for grendel_py.model.optim: Adam per field, Grendel's batch rule, the position lr schedule, and the
resizing ops (keep, append, reset_field) keeping the Adam moments aligned with their Gaussians."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from grendel_py.config import OptimConfig
from grendel_py.host_syncs import HostSyncCounter
from grendel_py.model.gaussians import TRAINABLE, Gaussians
from grendel_py.model.optim import GaussianOptimizer

CFG = OptimConfig()
EXTENT = 2.5


def _gaussians(n: int, seed: int = 0, first_id: int = 0) -> Gaussians:
    g = Gaussians.random_in_box(n, [-1, -1, -1], [1, 1, 1], 1, torch.Generator().manual_seed(seed))
    g.ids = torch.arange(first_id, first_id + n)
    return g


def _loss(g: Gaussians, weights: dict[str, torch.Tensor]) -> torch.Tensor:
    """A loss whose gradient differs per row (so the Adam moments of different rows differ)."""
    return sum(((getattr(g, n) - weights[n][: len(g)]) ** 2 * weights[n][: len(g)]).sum() for n in TRAINABLE)


def _weights(g: Gaussians, rows: int, seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {n: torch.rand((rows, *getattr(g, n).shape[1:]), generator=gen) for n in TRAINABLE}


def _train(opt: GaussianOptimizer, steps: int, seed: int = 1) -> None:
    weights = _weights(opt.gaussians, 64, seed)
    for _ in range(steps):
        _loss(opt.gaussians, weights).backward()
        opt.step()


def _moments_by_id(opt: GaussianOptimizer, name: str) -> dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """id -> (param row, exp_avg row, exp_avg_sq row) for field ``name``."""
    param = getattr(opt.gaussians, name)
    state = opt.optimizer.state[param]
    return {
        int(i): (param[r].detach(), state["exp_avg"][r], state["exp_avg_sq"][r])
        for r, i in enumerate(opt.gaussians.ids)
    }


def test_constructor_makes_the_callers_gaussians_the_model() -> None:
    g = _gaussians(10)
    before = {n: getattr(g, n).clone() for n in TRAINABLE}
    ids = g.ids
    opt = GaussianOptimizer(g, CFG, EXTENT)
    for name, group in zip(TRAINABLE, opt.optimizer.param_groups):
        field = getattr(g, name)
        assert field.is_leaf and field.requires_grad and field.dtype == torch.float32
        assert group["params"] == [field] and group["name"] == name
        assert torch.equal(field.detach(), before[name])
    assert g.ids is ids and not g.ids.requires_grad


@pytest.mark.parametrize("batch_size", [1, 4])
def test_batch_rule_values(batch_size: int) -> None:
    opt = GaussianOptimizer(_gaussians(5), CFG, EXTENT, batch_size)
    s = math.sqrt(batch_size)
    expected = {
        "means": CFG.position_lr_init * EXTENT * s,
        "log_scales": CFG.scaling_lr * s,
        "quats": CFG.rotation_lr * s,
        "opacity_logits": CFG.opacity_lr * s,
        "sh0": CFG.sh0_lr * s,
        "shN": CFG.shN_lr * s,
    }
    for group in opt.optimizer.param_groups:
        assert group["lr"] == pytest.approx(expected[group["name"]], rel=1e-12)
        assert group["betas"] == pytest.approx((0.9**batch_size, 0.999**batch_size), rel=1e-12)
        assert group["eps"] == pytest.approx(CFG.eps / s, rel=1e-12)


@pytest.mark.parametrize("batch_size", [1, 3])
def test_adam_matches_torch_adam_on_a_step_sequence(batch_size: int) -> None:
    g = _gaussians(12)
    ref = {n: getattr(g, n).clone().requires_grad_(True) for n in TRAINABLE}
    opt = GaussianOptimizer(g, CFG, EXTENT, batch_size)
    s = math.sqrt(batch_size)
    lrs = {n: opt.lr(n) for n in TRAINABLE}
    ref_opt = torch.optim.Adam(
        [{"params": [ref[n]], "lr": lrs[n]} for n in TRAINABLE],
        betas=(0.9**batch_size, 0.999**batch_size),
        eps=CFG.eps / s,
        fused=True,  # the trainer's: unfused Adam reads its step counts back to the host (rounds differently)
    )
    weights = _weights(g, 12, seed=3)
    total = 20
    for seen in range(0, total, batch_size):
        opt.update_lr(seen, total)
        ref_opt.param_groups[0]["lr"] = opt.position_lr(seen, total) * s
        _loss(g, weights).backward()
        opt.step()
        ref_loss = sum(((ref[n] - weights[n]) ** 2 * weights[n]).sum() for n in TRAINABLE)
        ref_loss.backward()
        ref_opt.step()
        ref_opt.zero_grad()
        for n in TRAINABLE:
            assert getattr(g, n).grad is None
            torch.testing.assert_close(getattr(g, n).detach(), ref[n].detach(), rtol=0, atol=0)


def test_adam_first_step_is_lr_times_sign() -> None:
    """Adam's first step moves each coordinate by lr * g / (|g| + eps) (bias-corrected), i.e. by lr."""
    g = _gaussians(4)
    opt = GaussianOptimizer(g, CFG, EXTENT, batch_size=4)
    start = g.opacity_logits.detach().clone()
    (g.opacity_logits * torch.tensor([1.0, -2.0, 3.0, -4.0])).sum().backward()
    opt.step()
    step = 2.0 * CFG.opacity_lr
    torch.testing.assert_close(g.opacity_logits.detach() - start, torch.tensor([-step, step, -step, step]))


def test_position_lr_schedule() -> None:
    opt = GaussianOptimizer(_gaussians(3), CFG, EXTENT, batch_size=4)
    total = 1000
    assert opt.position_lr(0, total) == pytest.approx(CFG.position_lr_init * EXTENT, rel=1e-12)
    assert opt.position_lr(total, total) == pytest.approx(CFG.position_lr_final * EXTENT, rel=1e-12)
    assert opt.position_lr(2 * total, total) == pytest.approx(CFG.position_lr_final * EXTENT, rel=1e-12)
    mid = math.sqrt(CFG.position_lr_init * CFG.position_lr_final) * EXTENT
    assert opt.position_lr(total // 2, total) == pytest.approx(mid, rel=1e-12)
    values = [opt.position_lr(i, total) for i in range(0, total + 1, 10)]
    assert all(a > b for a, b in itertools.pairwise(values))
    opt.update_lr(250, total)
    assert opt.lr("means") == pytest.approx(opt.position_lr(250, total) * 2.0, rel=1e-12)
    assert opt.lr("sh0") == pytest.approx(CFG.sh0_lr * 2.0, rel=1e-12)


def test_keep_and_append_keep_adam_rows_with_their_gaussians() -> None:
    g = _gaussians(10)
    opt = GaussianOptimizer(g, CFG, EXTENT)
    _train(opt, 3)
    before = {n: _moments_by_id(opt, n) for n in TRAINABLE}
    steps = {n: opt.optimizer.state[getattr(g, n)]["step"].item() for n in TRAINABLE}

    mask = torch.tensor([True, False, True, True, False, False, True, True, False, True])
    opt.keep(mask)
    assert g.ids.tolist() == [0, 2, 3, 6, 7, 9]
    new = _gaussians(3, seed=5, first_id=100)
    opt.append(new)
    assert g.ids.tolist() == [0, 2, 3, 6, 7, 9, 100, 101, 102]

    for name in TRAINABLE:
        param = getattr(g, name)
        assert param.is_leaf and param.requires_grad
        assert opt.optimizer.param_groups[TRAINABLE.index(name)]["params"] == [param]
        state = opt.optimizer.state[param]
        assert state["exp_avg"].shape == param.shape == state["exp_avg_sq"].shape
        assert state["step"].item() == steps[name]
        after = _moments_by_id(opt, name)
        for i in [0, 2, 3, 6, 7, 9]:
            for a, b in zip(after[i], before[name][i]):
                assert torch.equal(a, b)
        for r, i in enumerate([100, 101, 102]):
            assert torch.equal(after[i][0], getattr(new, name)[r])
            assert not after[i][1].any() and not after[i][2].any()

    _train(opt, 2, seed=7)  # the resized model keeps training
    assert len(opt.optimizer.state) == len(TRAINABLE)
    assert all(opt.optimizer.state[getattr(g, n)]["step"].item() == steps[n] + 2 for n in TRAINABLE)
    assert bool(opt.optimizer.state[g.means]["exp_avg"][-3:].ne(0).all())


def test_keep_and_append_before_any_step() -> None:
    g = _gaussians(4)
    opt = GaussianOptimizer(g, CFG, EXTENT)
    opt.keep(torch.tensor([True, False, True, True]))
    opt.append(_gaussians(2, seed=1, first_id=10))
    assert g.ids.tolist() == [0, 2, 3, 10, 11] and len(opt.optimizer.state) == 0
    _train(opt, 1)
    assert opt.optimizer.state[g.quats]["exp_avg"].shape == (5, 4)


def test_resize_ops_reject_bad_input() -> None:
    g = _gaussians(4)
    opt = GaussianOptimizer(g, CFG, EXTENT)
    with pytest.raises(ValueError, match="mask"):
        opt.keep(torch.tensor([True, False]))
    with pytest.raises(ValueError, match="SH degree"):
        opt.append(Gaussians.random_in_box(2, [0, 0, 0], [1, 1, 1], 2, torch.Generator().manual_seed(0)))
    with pytest.raises(ValueError, match="trainable"):
        opt.reset_field("ids", g.ids)
    with pytest.raises(ValueError, match="shape"):
        opt.reset_field("opacity_logits", torch.zeros(3))


def test_reset_field_sets_values_and_zeroes_only_its_moments() -> None:
    g = _gaussians(6)
    opt = GaussianOptimizer(g, CFG, EXTENT)
    _train(opt, 2)
    means_avg = opt.optimizer.state[g.means]["exp_avg"].clone()
    value = torch.full((6,), -4.0)
    opt.reset_field("opacity_logits", value)
    value.fill_(1.0)  # the model does not alias the caller's tensor
    assert torch.equal(g.opacity_logits.detach(), torch.full((6,), -4.0)) and g.opacity_logits.is_leaf
    state = opt.optimizer.state[g.opacity_logits]
    assert not state["exp_avg"].any() and not state["exp_avg_sq"].any() and state["step"].item() == 2
    assert torch.equal(opt.optimizer.state[g.means]["exp_avg"], means_avg)


def test_state_dict_round_trip() -> None:
    g = _gaussians(8)
    opt = GaussianOptimizer(g, CFG, EXTENT, batch_size=2)
    _train(opt, 3)
    opt.keep(torch.tensor([True, True, False, True, True, True, False, True]))
    opt.append(_gaussians(2, seed=4, first_id=50))
    _train(opt, 1)
    state = opt.state_dict()

    other = _gaussians(3, seed=9)
    opt2 = GaussianOptimizer(other, CFG, EXTENT, batch_size=2)
    opt2.load_state_dict(state)
    assert torch.equal(other.ids, g.ids)
    for n in TRAINABLE:
        assert torch.equal(getattr(other, n).detach(), getattr(g, n).detach())
        assert getattr(other, n).is_leaf and getattr(other, n).requires_grad
        s1, s2 = opt.optimizer.state[getattr(g, n)], opt2.optimizer.state[getattr(other, n)]
        assert s1.keys() == s2.keys() and all(torch.equal(s1[k], s2[k]) for k in s1)
    for o in (opt, opt2):
        o.update_lr(10, 20)
        _train(o, 2, seed=11)
    for n in TRAINABLE:
        assert torch.equal(getattr(other, n).detach(), getattr(g, n).detach())
    state["params"]["means"].add_(1.0)  # the state dict holds copies
    assert not torch.equal(state["params"]["means"], g.means.detach())


def test_adam_step_costs_no_host_synchronisation() -> None:
    """Fused Adam keeps its step counts on the model's device: a step reads nothing back (the unfused one
    calls ``item`` once per field)."""
    g = _gaussians(16)
    opt = GaussianOptimizer(g, CFG, EXTENT, batch_size=2)
    weights = _weights(g, 16, seed=5)
    for _ in range(2):
        _loss(g, weights).backward()
        with HostSyncCounter() as counter:
            opt.step()
        assert counter.total == 0, counter.sites
    assert all(opt.optimizer.state[getattr(g, n)]["step"].device == g.means.device for n in TRAINABLE)
