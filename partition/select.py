"""Exact order statistics over rows spread across ranks, by radix selection with all-reduced histograms.

Rows are ordered by (key, id), both int64, ids unique over all ranks. :func:`take_smallest` marks, in each
group of rows, the ``take[g]`` rows that come first in that order, whichever rank holds them, using 16
all-reduces of a [groups, 256] histogram (one per byte of key, then of id) and no gathering of rows. With
``reduce`` = :func:`local_reduce` (one holder of all rows) it is an ordinary selection.

``reduce(tensor, op)`` returns the element-wise ``op`` ("sum", "min" or "max") of ``tensor`` over every
holder of rows, the same result on each; :meth:`grendel_py.parallel.runtime.DistContext.reduce` is one.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Reduce = Callable[[torch.Tensor, str], torch.Tensor]

_SIGN = -(1 << 63)  # int64 with only the sign bit set
_LOW63 = (1 << 63) - 1


def local_reduce(tensor: torch.Tensor, op: str) -> torch.Tensor:
    """The reduction over a single holder: ``tensor`` itself."""
    return tensor


def ordered_key(x: torch.Tensor) -> torch.Tensor:
    """int64 keys [N] that sort like the floats ``x`` [N] (finite; -0.0 equals 0.0)."""
    bits = (x.to(torch.float64) + 0.0).view(torch.int64)
    return torch.where(bits < 0, bits ^ _LOW63, bits)


def take_smallest(
    keys: torch.Tensor, ids: torch.Tensor, groups: torch.Tensor, take: torch.Tensor, reduce: Reduce = local_reduce
) -> torch.Tensor:
    """Bool [N]: the rows that are among the first ``take[g]`` of their group g in (key, id) order.

    ``keys``, ``ids`` int64 [N]; ``groups`` int64 [N] in 0..G-1; ``take`` int64 [G], the same on every
    holder (clamped to the group's size: rows of a group that do not exist cannot be taken). ids must be
    unique over all holders; rows outside any group of interest can be given take 0.
    """
    n_groups = take.shape[0]
    remaining = take.to(torch.int64).clone()
    chosen = torch.zeros(keys.shape[0], dtype=torch.bool, device=keys.device)
    active = torch.ones_like(chosen)
    for word in (keys ^ _SIGN, ids):  # unsigned byte order of the sign-flipped key is signed order
        for shift in range(56, -8, -8):
            digit = (word >> shift) & 0xFF
            hist = torch.zeros(n_groups * 256, dtype=torch.int64, device=keys.device)
            hist.index_add_(0, (groups * 256 + digit)[active], torch.ones_like(digit[active]))
            cum = reduce(hist, "sum").view(n_groups, 256).cumsum(1)
            bucket = (cum <= remaining[:, None]).sum(1)  # first digit whose rows cannot all be taken
            below = torch.where(bucket > 0, cum.gather(1, (bucket - 1).clamp_min(0)[:, None])[:, 0], 0)
            row_bucket = bucket[groups]
            chosen |= active & (digit < row_bucket)
            active &= digit == row_bucket
            remaining -= below
    return chosen
