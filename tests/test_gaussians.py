"""Tests for grendel_py.model.gaussians: initialisers, accessors, selection and validation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from grendel_py.model.gaussians import C0, MIN_DIST2, Gaussians


def _brute_force_log_scale(xyz: np.ndarray) -> np.ndarray:
    """log(sqrt(mean squared distance to the 3 nearest other points)), by full pairwise distances."""
    d2 = ((xyz[:, None, :] - xyz[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(d2, np.inf)
    k = min(3, xyz.shape[0] - 1)
    nearest = np.sort(d2, axis=1)[:, :k]
    return 0.5 * np.log(np.maximum(nearest.mean(axis=1), MIN_DIST2))


def _random_gaussians(n: int, sh_degree: int, seed: int = 0) -> Gaussians:
    gen = torch.Generator().manual_seed(seed)
    return Gaussians.random_in_box(n, [-1, -2, -3], [1, 2, 3], sh_degree, gen)


def test_from_points_fields() -> None:
    xyz = np.random.default_rng(0).normal(size=(50, 3))
    rgb = np.random.default_rng(1).integers(0, 256, size=(50, 3), dtype=np.uint8)
    g = Gaussians.from_points(xyz, rgb, sh_degree=2, init_opacity=0.25)
    g.validate()
    assert len(g) == 50 and g.sh_degree == 2
    assert torch.equal(g.means, torch.from_numpy(xyz).float())
    assert g.shN.shape == (50, 8, 3) and not g.shN.any()
    expected_sh0 = (rgb.astype(np.float64) / 255.0 - 0.5) / C0
    np.testing.assert_allclose(g.sh0[:, 0].numpy(), expected_sh0, rtol=1e-6)
    np.testing.assert_allclose(g.sh0[:, 0].numpy() * C0 + 0.5, rgb / 255.0, atol=1e-6)
    assert torch.equal(g.quats, torch.tensor([[1.0, 0.0, 0.0, 0.0]]).repeat(50, 1))
    torch.testing.assert_close(g.opacities(), torch.full((50,), 0.25))
    assert torch.equal(g.ids, torch.arange(50))
    assert torch.equal(g.log_scales[:, 0], g.log_scales[:, 1]) and torch.equal(g.log_scales[:, 0], g.log_scales[:, 2])
    np.testing.assert_allclose(g.log_scales[:, 0].numpy(), _brute_force_log_scale(xyz.astype(np.float32)), rtol=1e-5)


def test_from_points_grey_without_colours() -> None:
    g = Gaussians.from_points(torch.rand(5, 3), None, sh_degree=0)
    assert torch.equal(g.sh0, torch.zeros(5, 1, 3))
    assert g.shN.shape == (5, 0, 3) and g.sh_degree == 0


@pytest.mark.parametrize("sh_degree", [0, 1, 2, 3])
def test_sh_layout(sh_degree: int) -> None:
    g = Gaussians.from_points(torch.rand(4, 3), None, sh_degree)
    k = (sh_degree + 1) ** 2
    assert g.shN.shape == (4, k - 1, 3) and g.sh().shape == (4, k, 3) and g.sh_degree == sh_degree


def test_duplicate_points_clamp_and_few_points() -> None:
    xyz = torch.tensor([[1.0, 2.0, 3.0]] * 4 + [[5.0, 2.0, 3.0]])
    g = Gaussians.from_points(xyz, None, 0)
    np.testing.assert_allclose(g.log_scales[:4, 0].numpy(), 0.5 * math.log(MIN_DIST2), rtol=1e-6)
    # The lone point's 3 nearest others are all at distance 4.
    assert g.log_scales[4, 0].item() == pytest.approx(math.log(4.0))
    two = Gaussians.from_points(torch.tensor([[0.0, 0.0, 0.0], [0.0, 3.0, 0.0]]), None, 0)
    torch.testing.assert_close(two.scales(), torch.full((2, 3), 3.0))


@pytest.mark.parametrize(
    ("xyz", "rgb", "kwargs", "match"),
    [
        (torch.zeros(1, 3), None, {}, "at least 2"),
        (torch.zeros(4, 2), None, {}, "xyz"),
        (torch.tensor([[0.0, 0, 0], [math.nan, 0, 0]]), None, {}, "non-finite"),
        (torch.rand(4, 3), None, {"sh_degree": 4}, "sh_degree"),
        (torch.rand(4, 3), None, {"init_opacity": 1.0}, "init_opacity"),
        (torch.rand(4, 3), torch.zeros(4, 3), {}, "rgb"),
    ],
)
def test_from_points_rejects(xyz: torch.Tensor, rgb: torch.Tensor | None, kwargs: dict, match: str) -> None:
    args = {"sh_degree": 1, **kwargs}
    with pytest.raises(ValueError, match=match):
        Gaussians.from_points(xyz, rgb, **args)


def test_random_in_box_deterministic_and_inside() -> None:
    a = _random_gaussians(200, 1, seed=3)
    b = _random_gaussians(200, 1, seed=3)
    c = _random_gaussians(200, 1, seed=4)
    a.validate()
    assert torch.equal(a.means, b.means) and torch.equal(a.sh0, b.sh0) and torch.equal(a.log_scales, b.log_scales)
    assert not torch.equal(a.means, c.means)
    lo, hi = torch.tensor([-1.0, -2.0, -3.0]), torch.tensor([1.0, 2.0, 3.0])
    assert bool(((a.means >= lo) & (a.means <= hi)).all())
    np.testing.assert_allclose(a.log_scales[:, 0].numpy(), _brute_force_log_scale(a.means.numpy()), rtol=1e-5)
    with pytest.raises(ValueError, match="lo <= hi"):
        Gaussians.random_in_box(10, [0, 0, 1], [1, 1, 0], 0, torch.Generator())
    with pytest.raises(ValueError, match="at least 2"):
        Gaussians.random_in_box(1, [0, 0, 0], [1, 1, 1], 0, torch.Generator())


def test_activations() -> None:
    g = _random_gaussians(10, 0)
    g.quats = torch.randn(10, 4)
    torch.testing.assert_close(g.scales(), torch.exp(g.log_scales))
    torch.testing.assert_close(g.opacities(), torch.sigmoid(g.opacity_logits))
    torch.testing.assert_close(g.rotations().norm(dim=-1), torch.ones(10))
    torch.testing.assert_close(g.rotations(), g.quats / g.quats.norm(dim=-1, keepdim=True))


def test_select_cat_to() -> None:
    g = _random_gaussians(10, 2)
    mask = torch.arange(10) % 3 == 0
    picked = g.select(mask)
    assert len(picked) == 4 and torch.equal(picked.ids, torch.tensor([0, 3, 6, 9]))
    assert torch.equal(picked.shN, g.shN[mask])
    by_index = g.select(torch.tensor([9, 0]))
    assert torch.equal(by_index.means, g.means[[9, 0]])
    joined = Gaussians.cat([g.select(slice(0, 4)), g.select(slice(4, 10))])
    for name in ("means", "log_scales", "quats", "opacity_logits", "sh0", "shN", "ids"):
        assert torch.equal(getattr(joined, name), getattr(g, name))
    moved = g.to("cpu")
    moved.validate()
    assert moved.device == torch.device("cpu")
    with pytest.raises(ValueError, match="SH degrees"):
        Gaussians.cat([g, _random_gaussians(3, 1)])
    with pytest.raises(ValueError, match="at least one"):
        Gaussians.cat([])


def _break_shape(g: Gaussians) -> None:
    g.means = g.means[:, :2]


def _break_finite(g: Gaussians) -> None:
    g.sh0[1, 0, 2] = math.inf


def _break_dtype(g: Gaussians) -> None:
    g.ids = g.ids.float()


def _break_unique(g: Gaussians) -> None:
    g.ids[1] = g.ids[0]


def _break_sh_rows(g: Gaussians) -> None:
    g.shN = torch.zeros(len(g), 5, 3)


def _break_opacity(g: Gaussians) -> None:
    g.opacity_logits = g.opacity_logits[:-1]


def _break_scales_nan(g: Gaussians) -> None:
    g.log_scales[0, 0] = math.nan


@pytest.mark.parametrize(
    ("breaker", "field"),
    [
        (_break_shape, "means"),
        (_break_finite, "sh0"),
        (_break_dtype, "ids"),
        (_break_unique, "ids"),
        (_break_sh_rows, "shN"),
        (_break_opacity, "opacity_logits"),
        (_break_scales_nan, "log_scales"),
    ],
)
def test_validate_names_field(breaker, field: str) -> None:
    g = _random_gaussians(6, 1)
    breaker(g)
    with pytest.raises(ValueError, match=f"^{field}:"):
        g.validate()
