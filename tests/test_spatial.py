"""Ownership of Gaussians by rank: balance, determinism, compactness, degenerate inputs."""

from __future__ import annotations

import itertools

import pytest
import torch

from partition.spatial import OWNERSHIP_MODES, assign_owners, morton_codes, shard_stats

WORLD_SIZES = (1, 2, 3, 4, 7, 8, 64)


def random_points(n: int, seed: int) -> torch.Tensor:
    return torch.rand(n, 3, generator=torch.Generator().manual_seed(seed))


def shard_weights(owners: torch.Tensor, weights: torch.Tensor, world_size: int) -> torch.Tensor:
    return torch.zeros(world_size, dtype=torch.float64).index_add_(0, owners, weights.double())


@pytest.mark.parametrize("mode", OWNERSHIP_MODES)
@pytest.mark.parametrize("world_size", WORLD_SIZES)
def test_unit_weights_balance_counts(mode: str, world_size: int) -> None:
    means = random_points(1000, seed=world_size)
    owners = assign_owners(means, world_size, mode)
    assert owners.dtype == torch.int64 and owners.shape == (1000,)
    assert int(owners.min()) >= 0 and int(owners.max()) < world_size
    counts = torch.bincount(owners, minlength=world_size)
    assert (counts - 1000 / world_size).abs().max() < 1


@pytest.mark.parametrize("mode", OWNERSHIP_MODES)
@pytest.mark.parametrize("world_size", WORLD_SIZES)
def test_weighted_balance_within_largest_weight(mode: str, world_size: int) -> None:
    g = torch.Generator().manual_seed(100 + world_size)
    means = torch.rand(2000, 3, generator=g)
    weights = torch.rand(2000, generator=g)
    weights[torch.randperm(2000, generator=g)[:5]] = 40.0  # a few heavy Gaussians
    owners = assign_owners(means, world_size, mode, weights=weights)
    per_rank = shard_weights(owners, weights, world_size)
    share = float(weights.double().sum()) / world_size
    assert (per_rank - share).abs().max() <= 40.0 + 1e-9


@pytest.mark.parametrize("mode", OWNERSHIP_MODES)
def test_heavy_gaussians_shrink_their_shards(mode: str) -> None:
    means = random_points(1003, seed=3)
    weights = torch.ones(1003)
    weights[:3] = 300.0  # total 1900, 475 per rank
    owners = assign_owners(means, 4, mode, weights=weights)
    per_rank = shard_weights(owners, weights, 4)
    assert (per_rank - 475).abs().max() <= 300
    assert int(torch.bincount(owners, minlength=4).max()) > 400  # a shard without a heavy one: ~475, not 251


@pytest.mark.parametrize("mode", OWNERSHIP_MODES)
@pytest.mark.parametrize("world_size", (3, 8))
def test_row_order_does_not_matter(mode: str, world_size: int) -> None:
    g = torch.Generator().manual_seed(7)
    means = torch.rand(600, 3, generator=g).mul(4).round().div(4)  # many ties in every coordinate
    means[300:400] = means[:100]  # and duplicate points
    weights = torch.rand(600, generator=g)
    ids = torch.randperm(10_000, generator=g)[:600]
    perm = torch.randperm(600, generator=g)
    owners = assign_owners(means, world_size, mode, weights=weights, ids=ids)
    permuted = assign_owners(means[perm], world_size, mode, weights=weights[perm], ids=ids[perm])
    assert torch.equal(permuted, owners[perm])


def test_array_order_is_contiguous_in_id_order() -> None:
    owners = assign_owners(random_points(10, seed=0), 3, "array-order")
    assert owners.tolist() == [0, 0, 0, 1, 1, 1, 1, 2, 2, 2]
    ids = torch.tensor([5, 3, 9, 0])
    assert assign_owners(random_points(4, seed=0), 2, "array-order", ids=ids).tolist() == [1, 0, 1, 0]


@pytest.mark.parametrize("world_size", (8, 64))
def test_kd_and_morton_are_compact(world_size: int) -> None:
    means = random_points(4000, seed=world_size)
    compactness = {}
    for mode in OWNERSHIP_MODES:
        compactness[mode] = shard_stats(means, assign_owners(means, world_size, mode), world_size)["compactness"]
    assert compactness["array-order"] > 0.95
    assert compactness["kd"] < 0.55 * (8 / world_size) ** (1 / 3)  # cubes of 1/W of the volume: 0.5 for W = 8
    assert compactness["morton"] < 0.7 * compactness["array-order"]


def kd_boxes_disjoint(means: torch.Tensor, owners: torch.Tensor, world_size: int) -> bool:
    boxes = [(means[owners == r].amin(0), means[owners == r].amax(0)) for r in range(world_size)]
    for (lo_a, hi_a), (lo_b, hi_b) in itertools.combinations(boxes, 2):
        if bool((torch.minimum(hi_a, hi_b) > torch.maximum(lo_a, lo_b)).all()):
            return False
    return True


@pytest.mark.parametrize("world_size", (3, 7, 8))
def test_kd_shards_are_disjoint_boxes(world_size: int) -> None:
    means = random_points(2000, seed=world_size)
    assert kd_boxes_disjoint(means, assign_owners(means, world_size, "kd"), world_size)


def test_kd_flat_cloud() -> None:
    means = random_points(2000, seed=5)
    means[:, 2] = 1.5  # a flat box: z is never the longest axis
    owners = assign_owners(means, 8, "kd")
    assert torch.bincount(owners, minlength=8).tolist() == [250] * 8
    flat = torch.cat([means[:, :2], torch.zeros(2000, 1)], 1)
    assert kd_boxes_disjoint(flat, owners, 8)  # the cuts are in x and y
    assert shard_stats(means, owners, 8)["compactness"] < 0.45  # 2 x 4 or 4 x 2 cells: ~0.4


def test_kd_on_a_line_follows_the_line() -> None:
    x = random_points(300, seed=6)[:, 0]
    means = torch.stack([x, torch.zeros_like(x), torch.zeros_like(x)], 1)
    owners = assign_owners(means, 7, "kd")
    assert torch.equal(owners[x.argsort()], owners.sort().values)  # rank order is the order along the line


@pytest.mark.parametrize("mode", OWNERSHIP_MODES)
def test_fewer_gaussians_than_ranks(mode: str) -> None:
    means = random_points(5, seed=8)
    owners = assign_owners(means, 8, mode)
    assert owners.unique().numel() == 5 and int(owners.max()) < 8
    one = assign_owners(means[:1], 64, mode)
    assert one.shape == (1,) and 0 <= int(one) < 64
    empty = assign_owners(torch.zeros(0, 3), 8, mode)
    assert empty.shape == (0,) and empty.dtype == torch.int64


@pytest.mark.parametrize("mode", OWNERSHIP_MODES)
def test_identical_points_split_by_id(mode: str) -> None:
    means = torch.ones(10, 3)
    ids = torch.arange(10).flip(0)
    owners = assign_owners(means, 3, mode, ids=ids)
    assert owners.tolist() == [2, 2, 2, 1, 1, 1, 1, 0, 0, 0]
    assert shard_stats(means, owners, 3)["compactness"] == 0.0


def test_zero_weights_count_as_unit_weights() -> None:
    means = random_points(100, seed=9)
    for mode in OWNERSHIP_MODES:
        owners = assign_owners(means, 4, mode, weights=torch.zeros(100))
        assert torch.equal(owners, assign_owners(means, 4, mode))


def test_morton_codes_interleave_bits() -> None:
    means = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 1.0, 1.0]])
    codes = morton_codes(means)
    x_bits = int(sum(1 << (3 * i) for i in range(21)))
    assert codes.tolist() == [0, x_bits, x_bits << 1, x_bits << 2, (1 << 63) - 1]


def test_shard_stats() -> None:
    means = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 2.0, 2.0]])
    stats = shard_stats(means, torch.tensor([0, 0, 2, 2]), 3)
    assert stats["counts"].tolist() == [2, 0, 2]
    torch.testing.assert_close(stats["diagonal"], torch.tensor([1 / 3, 0.0, 2 / 3]))
    assert stats["compactness"] == pytest.approx(0.5)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"mode": "octree"}, "ownership mode"),
        ({"world_size": 0}, "world_size"),
        ({"ids": torch.tensor([0, 1, 1, 2])}, "not unique"),
        ({"ids": torch.tensor([0, 1, 2, 3], dtype=torch.int32)}, "ids must be"),
        ({"weights": torch.tensor([1.0, -1.0, 1.0, 1.0])}, "weights"),
        ({"means": torch.full((4, 3), float("nan"))}, "finite"),
        ({"means": torch.zeros(4, 2)}, r"\[N, 3\]"),
    ],
)
def test_bad_input(kwargs: dict, match: str) -> None:
    args = {"means": torch.zeros(4, 3), "world_size": 2, **kwargs}
    with pytest.raises(ValueError, match=match):
        assign_owners(**args)
