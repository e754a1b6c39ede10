"""Which rank owns which Gaussian: spatially compact, weight-balanced shards.

Each of ``world_size`` ranks owns a shard of the Gaussians. Compact shards mean that the Gaussians a camera
sees come from few ranks. Three modes:

- ``"kd"``: recursive bisection. A cell holding ``k`` ranks is cut across the longest axis of its points'
  bounding box into cells of ``k // 2`` and ``k - k // 2`` ranks, at the weighted quantile that gives the
  two halves weight in that proportion.
- ``"morton"``: Z-order codes of the means quantised in their bounding box (21 bits per axis), sorted and
  cut into ``world_size`` runs of equal weight.
- ``"array-order"``: Grendel's split, ``world_size`` runs of equal weight in id order (for default ids and
  weights: contiguous runs of the array of equal count).

Every cut between rank ``r - 1`` and rank ``r`` is placed where the weight of the Gaussians of ranks below
``r`` is nearest to ``r * total / world_size``, so each shard's weight is within the largest single weight of
``total / world_size`` (count within +-1 for unit weights). Ties in position are broken by global id, so
every rank computing this on the same data gets the same answer whatever the row order of its input.
"""

from __future__ import annotations

import torch

from partition.select import Reduce, local_reduce, ordered_key, take_smallest

OWNERSHIP_MODES = ("kd", "morton", "array-order")

MORTON_BITS = 21


def assign_owners(
    means: torch.Tensor,
    world_size: int,
    mode: str = "kd",
    weights: torch.Tensor | None = None,
    ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """Owner rank (0..world_size-1) of each Gaussian, int64 [N].

    ``means`` [N, 3]; ``weights`` [N], finite and >= 0 (default 1; all zero counts as all 1); ``ids`` [N]
    int64, unique global ids that break ties (default ``arange(N)``). Ranks may get nothing when N < world_size.
    """
    _check_partition_args(means, world_size, mode)
    n = means.shape[0]
    device = means.device
    if not bool(torch.isfinite(means).all()):
        raise ValueError("means: not all finite")
    if ids is None:
        ids = torch.arange(n, device=device)
    elif ids.shape != (n,) or ids.dtype != torch.int64:
        raise ValueError(f"ids must be int64 [{n}], got {ids.dtype} {list(ids.shape)}")
    if weights is None:
        weights = torch.ones(n, dtype=torch.float64, device=device)
    elif weights.shape != (n,):
        raise ValueError(f"weights must be [{n}], got {list(weights.shape)}")
    elif not bool((torch.isfinite(weights) & (weights >= 0)).all()):
        raise ValueError("weights: not all finite and >= 0")
    if n == 0 or world_size == 1:
        return torch.zeros(n, dtype=torch.int64, device=device)

    by_id = torch.sort(ids).indices
    sorted_ids = ids.index_select(0, by_id)
    if bool((sorted_ids[1:] == sorted_ids[:-1]).any()):
        raise ValueError("ids: not unique")
    weights = weights.to(torch.float64)
    if float(weights.index_select(0, by_id).sum()) == 0.0:
        weights = torch.ones_like(weights)

    if mode == "kd":
        return _kd_owners(means, world_size, weights, by_id)
    if mode == "morton":
        codes = morton_codes(means).index_select(0, by_id)
        seq = by_id.index_select(0, torch.sort(codes, stable=True).indices)
    else:
        seq = by_id
    return _runs_owners(seq, world_size, weights)


def sharded_owners(
    means: torch.Tensor, ids: torch.Tensor, world_size: int, mode: str = "kd", reduce: Reduce = local_reduce
) -> torch.Tensor:
    """Owner rank of each row held here, int64 [n], when the Gaussians are spread over the holders that
    ``reduce`` spans (see :mod:`partition.select`): exactly the owners :func:`assign_owners` with unit weights
    gives for all rows gathered in one place, but no row leaves its holder. ``means`` [n, 3], ``ids`` int64
    [n], unique over all holders.

    The recursion's cells depend only on ``world_size``, so each of the ceil(log2 W) levels is: all-reduce
    the cell sizes (and for kd the cell boxes), then one :func:`~partition.select.take_smallest` per level
    for every cell at once.
    """
    _check_partition_args(means, world_size, mode)
    n, device = means.shape[0], means.device
    if ids.shape != (n,) or ids.dtype != torch.int64:
        raise ValueError(f"ids must be int64 [{n}], got {ids.dtype} {list(ids.shape)}")
    if not bool(torch.isfinite(means).all()):
        raise ValueError("means: not all finite")
    total = int(reduce(torch.tensor([n], device=device), "sum")[0])
    lo = torch.zeros(n, dtype=torch.int64, device=device)
    if world_size == 1 or total == 0:
        return lo
    share = total / world_size
    starts = torch.arange(world_size, device=device)
    if mode == "morton":
        inf = torch.full((3,), float("inf"), dtype=means.dtype, device=device)
        box = (reduce(means.amin(0) if n else inf, "min"), reduce(means.amax(0) if n else -inf, "max"))
        keys = morton_codes(means, box)
    elif mode == "array-order":
        keys = ids
    for cell_hi in _bisection_levels(world_size, device):
        size = cell_hi - starts  # valid at cell starts
        mid = starts + size // 2
        counts = reduce(torch.bincount(lo, minlength=world_size), "sum")
        before = counts.cumsum(0) - counts
        target = mid.to(torch.float64) * share
        cut = target.ceil().to(torch.int64).clamp(1, total)
        cut = torch.where(target - (cut - 1) <= cut - target, cut - 1, cut)  # nearest count, ties below
        take = torch.where(size > 1, torch.minimum(torch.maximum(cut - before, torch.zeros_like(cut)), counts), 0)
        if mode == "kd":
            index = lo[:, None].expand(-1, 3)
            box_lo = means.new_full((world_size, 3), float("inf")).scatter_reduce(0, index, means, "amin")
            box_hi = means.new_full((world_size, 3), float("-inf")).scatter_reduce(0, index, means, "amax")
            axis = (reduce(box_hi, "max") - reduce(box_lo, "min")).argmax(1)
            keys = ordered_key(means.gather(1, axis[lo][:, None])[:, 0])
        left = take_smallest(keys, ids, lo, take, reduce)
        lo = torch.where((size > 1)[lo] & ~left, mid[lo], lo)
    return lo


def _check_partition_args(means: torch.Tensor, world_size: int, mode: str) -> None:
    """ValueError unless ``mode`` is known, ``world_size`` >= 1 and ``means`` is [N, 3]."""
    if mode not in OWNERSHIP_MODES:
        raise ValueError(f"ownership mode {mode!r} is not one of {OWNERSHIP_MODES}")
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    if means.dim() != 2 or means.shape[1] != 3:
        raise ValueError(f"means must be [N, 3], got {list(means.shape)}")


def _bisection_levels(world_size: int, device: torch.device) -> list[torch.Tensor]:
    """Per level of the recursive bisection of ranks [0, world_size), the end of the cell that starts at
    each rank (int64 [W]; meaningful at cell starts). A cell [lo, hi) splits at lo + (hi - lo) // 2."""
    cells, levels = [(0, world_size)], []
    while any(hi - lo > 1 for lo, hi in cells):
        table = torch.arange(1, world_size + 1, device=device)
        for lo, hi in cells:
            table[lo] = hi
        levels.append(table)
        cells = [
            c
            for lo, hi in cells
            for c in (((lo, lo + (hi - lo) // 2), (lo + (hi - lo) // 2, hi)) if hi - lo > 1 else ((lo, hi),))
        ]
    return levels


def morton_codes(means: torch.Tensor, box: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """63-bit Z-order codes, int64 [N], of ``means`` [N, 3] quantised to 21 bits per axis in ``box`` (its
    min and max corners, [3] each; default: the bounding box of ``means``)."""
    box_lo, box_hi = (means.amin(0), means.amax(0)) if box is None else box
    lo = box_lo.to(torch.float64)
    extent = box_hi.to(torch.float64) - lo
    top = (1 << MORTON_BITS) - 1
    scale = torch.where(extent > 0, top / extent, torch.zeros_like(extent))
    q = ((means.to(torch.float64) - lo) * scale).floor().clamp(0, top).to(torch.int64)
    return _spread_bits(q[:, 0]) | (_spread_bits(q[:, 1]) << 1) | (_spread_bits(q[:, 2]) << 2)


def shard_stats(means: torch.Tensor, owners: torch.Tensor, world_size: int) -> dict[str, torch.Tensor | float]:
    """Shard sizes and compactness of an assignment.

    Returns ``counts`` int64 [W]; ``diagonal`` [W], the bounding-box diagonal of each shard divided by that
    of all ``means`` [N, 3] (0 for empty shards, or when the whole box is a point); ``compactness``, the mean
    of ``diagonal`` over non-empty shards (about 1 for shards spread over the whole box; lower is more compact).
    """
    if owners.shape != means.shape[:1]:
        raise ValueError(f"owners must be [{means.shape[0]}], got {list(owners.shape)}")
    if owners.numel() and not (int(owners.min()) >= 0 and int(owners.max()) < world_size):
        raise ValueError(f"owners must be in 0..{world_size - 1}")
    counts = torch.bincount(owners, minlength=world_size)
    if means.shape[0] == 0:
        return {"counts": counts, "diagonal": means.new_zeros(world_size), "compactness": 0.0}
    index = owners[:, None].expand(-1, 3)
    lo = means.new_full((world_size, 3), float("inf")).scatter_reduce(0, index, means, "amin")
    hi = means.new_full((world_size, 3), float("-inf")).scatter_reduce(0, index, means, "amax")
    diagonal = torch.where(counts > 0, (hi - lo).norm(dim=1), 0.0)
    whole = float((means.amax(0) - means.amin(0)).norm())
    diagonal = diagonal / whole if whole > 0 else torch.zeros_like(diagonal)
    return {"counts": counts, "diagonal": diagonal, "compactness": float(diagonal[counts > 0].mean())}


def _spread_bits(x: torch.Tensor) -> torch.Tensor:
    """Spread the low 21 bits of int64 ``x`` so that bit i moves to bit 3i."""
    x = x & 0x1FFFFF
    x = (x | (x << 32)) & 0x1F00000000FFFF
    x = (x | (x << 16)) & 0x1F0000FF0000FF
    x = (x | (x << 8)) & 0x100F00F00F00F00F
    x = (x | (x << 4)) & 0x10C30C30C30C30C3
    return (x | (x << 2)) & 0x1249249249249249


def _nearest_cuts(prefix: torch.Tensor, targets: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """Positions p in [lo, hi] where ``prefix[p]`` is nearest to ``targets`` (ties: the lower p), int64.

    ``prefix`` [M + 1] float64 is non-decreasing; ``targets``, ``lo``, ``hi`` have one shape.
    """
    q = torch.searchsorted(prefix, targets).clamp(1, prefix.shape[0] - 1)
    q = torch.where(targets - prefix[q - 1] <= prefix[q] - targets, q - 1, q)
    return torch.minimum(torch.maximum(q, lo), hi)


def _prefix(weights: torch.Tensor) -> torch.Tensor:
    """Exclusive running sum of ``weights`` [M] float64: [M + 1], starting at 0."""
    return torch.cat([weights.new_zeros(1), weights.cumsum(0)])


def _runs_owners(seq: torch.Tensor, world_size: int, weights: torch.Tensor) -> torch.Tensor:
    """Owners int64 [N] when the Gaussians in order ``seq`` [N] are cut into ``world_size`` runs of equal weight."""
    n = seq.shape[0]
    prefix = _prefix(weights.index_select(0, seq))
    ranks = torch.arange(1, world_size, device=seq.device)
    targets = ranks.to(torch.float64) * (prefix[-1] / world_size)
    cuts = _nearest_cuts(prefix, targets, torch.zeros_like(ranks), torch.full_like(ranks, n))
    owner_at = torch.zeros(n + 1, dtype=torch.int64, device=seq.device).index_add_(0, cuts, torch.ones_like(cuts))
    return torch.empty_like(seq).scatter_(0, seq, owner_at[:n].cumsum(0))


def _kd_owners(means: torch.Tensor, world_size: int, weights: torch.Tensor, by_id: torch.Tensor) -> torch.Tensor:
    """Owners int64 [N] by recursive bisection; ``by_id`` [N] is the order of the Gaussians by id.

    Each Gaussian carries the rank range [lo, hi) of its cell. ``perms`` [3, N] holds, for each axis, the
    Gaussians grouped by cell (cells by ``lo``) and sorted by (coordinate, id) inside a cell; a level picks
    each cell's row, cuts it, and splits every row stably, so one sort per axis serves all levels: O(N log N)
    once, then O(N) per level for ceil(log2 W) levels.
    """
    n = means.shape[0]
    device = means.device
    pos = torch.arange(n, device=device)
    by_axis = torch.sort(means.index_select(0, by_id), dim=0, stable=True).indices
    perms = by_id.index_select(0, by_axis.T.reshape(-1)).view(3, n)
    lo = torch.zeros(n, dtype=torch.int64, device=device)
    hi = torch.full((n,), world_size, dtype=torch.int64, device=device)
    share = float(weights.index_select(0, by_id).sum()) / world_size
    while bool((hi - lo > 1).any()):
        cell_lo, cell_of_pos, counts = torch.unique_consecutive(
            lo.index_select(0, perms[0]), return_inverse=True, return_counts=True
        )
        n_cells = cell_lo.shape[0]
        starts = counts.cumsum(0) - counts
        ends = starts + counts
        cell_hi = hi.index_select(0, perms[0].index_select(0, starts))

        points = means.index_select(0, perms[0])
        index = cell_of_pos[:, None].expand(-1, 3)
        box_lo = means.new_full((n_cells, 3), float("inf")).scatter_reduce(0, index, points, "amin")
        box_hi = means.new_full((n_cells, 3), float("-inf")).scatter_reduce(0, index, points, "amax")
        axis = (box_hi - box_lo).argmax(1)
        seq = perms.gather(0, axis.index_select(0, cell_of_pos)[None])[0]

        k = cell_hi - cell_lo
        mid = cell_lo + k // 2
        cut = _nearest_cuts(_prefix(weights.index_select(0, seq)), mid.to(torch.float64) * share, starts, ends)
        cut = torch.where(k > 1, cut, ends)

        right_pos = pos >= cut.index_select(0, cell_of_pos)
        right = torch.empty_like(right_pos).scatter_(0, seq, right_pos)
        cell = torch.empty_like(seq).scatter_(0, seq, cell_of_pos)
        lo = torch.where(right, mid.index_select(0, cell), lo)
        hi = torch.where(~right & (k > 1).index_select(0, cell), mid.index_select(0, cell), hi)

        left = ~right.index_select(0, perms.reshape(-1)).view(3, n)
        lefts_before = left.long().cumsum(1) - left.long()
        start = starts.index_select(0, cell_of_pos).expand(3, -1)
        in_cell = lefts_before - lefts_before.gather(1, start)
        n_left = (cut - starts).index_select(0, cell_of_pos)
        new_pos = torch.where(left, start + in_cell, n_left + pos - in_cell)
        perms = torch.empty_like(perms).scatter_(1, new_pos, perms)
    return lo
