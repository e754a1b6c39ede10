"""Exact order statistics across holders (partition.select) and the sharded spatial partition built on them."""

from __future__ import annotations

import pytest
import torch

from partition.select import ordered_key, take_smallest
from partition.spatial import OWNERSHIP_MODES, assign_owners, sharded_owners
from tests.dist_util import run_ranks


def test_ordered_key_sorts_like_floats() -> None:
    x = torch.tensor([3.5, -0.0, 0.0, -2.0, 1e-30, -1e30, 7.0, -1e-30, float("inf"), -float("inf")])
    keys = ordered_key(x)
    assert torch.equal(torch.argsort(keys, stable=True), torch.argsort(x, stable=True))
    assert keys[1] == keys[2]  # -0.0 and 0.0 are one value


@pytest.mark.parametrize("seed", range(5))
def test_take_smallest_is_a_sort_by_key_then_id(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    n, groups = 500, 4
    keys = torch.randint(-5, 5, (n,), generator=g) * (1 << 40)  # many ties, high bytes used
    ids = torch.randperm(10 * n, generator=g)[:n]
    group = torch.randint(0, groups, (n,), generator=g)
    take = torch.tensor([0, 7, 130, 1000])  # none, some, most or all of a group (more than it has)
    chosen = take_smallest(keys, ids, group, take)
    for c in range(groups):
        rows = torch.nonzero(group == c).squeeze(1)
        order = sorted(rows.tolist(), key=lambda i: (int(keys[i]), int(ids[i])))
        expected = set(order[: int(take[c])])
        assert set(torch.nonzero(chosen & (group == c)).squeeze(1).tolist()) == expected


@pytest.mark.parametrize("mode", OWNERSHIP_MODES)
@pytest.mark.parametrize("world_size", [1, 2, 3, 5, 8, 13])
def test_sharded_owners_on_one_holder_equal_assign_owners(mode: str, world_size: int) -> None:
    g = torch.Generator().manual_seed(world_size)
    for n in (0, 1, world_size - 1, 37, 1500):
        means = torch.randn(n, 3, generator=g) * torch.tensor([4.0, 1.0, 0.3])
        if n > 20:
            means[:8] = means[8:16]  # coincident means: ties broken by id
        ids = torch.randperm(3 * n + 1, generator=g)[:n]
        assert torch.equal(
            sharded_owners(means, ids, world_size, mode), assign_owners(means, world_size, mode, ids=ids)
        )


def _owners_job(ctx, means: torch.Tensor, ids: torch.Tensor, holder: torch.Tensor, parts: int, mode: str):
    mine = holder == ctx.rank
    return torch.nonzero(mine).squeeze(1), sharded_owners(means[mine], ids[mine], parts, mode, ctx.reduce)


@pytest.mark.parametrize("mode", OWNERSHIP_MODES)
def test_sharded_owners_over_three_ranks_equal_the_gathered_partition(mode: str) -> None:
    g = torch.Generator().manual_seed(11)
    n = 900
    means = torch.rand(n, 3, generator=g) * torch.tensor([10.0, 3.0, 1.0])
    means[:50] = means[50:100]
    ids = torch.randperm(5 * n, generator=g)[:n]
    holder = torch.randint(0, 3, (n,), generator=g)
    holder[:200] = 1  # uneven holdings
    expected = assign_owners(means, 5, mode, ids=ids)
    got = torch.full((n,), -1)
    for rows, owners in run_ranks(3, _owners_job, means, ids, holder, 5, mode):
        got[rows] = owners
    assert torch.equal(got, expected)
