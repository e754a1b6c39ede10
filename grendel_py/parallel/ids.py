"""Global ids for new Gaussians that do not depend on how the model is split among ranks.

New Gaussians are copies of existing ones (clones, split children). Each is keyed by (source id, copy
number); all ranks gather the keys of this densification, sort them, and the new id is the next free id
plus the key's position. One rank or W ranks: the same ids.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from grendel_py.parallel.runtime import DistContext

MAX_COPIES = 64
"""A Gaussian gives at most this many copies per densification (a split makes two children, an MCMC
refinement at most MAX_SHARE - 1 = 50)."""


def _gather(values: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Concatenation over ranks of each rank's int64 ``values`` (sizes may differ)."""
    if not ctx.distributed:
        return values
    size = torch.tensor([values.numel()], dtype=torch.int64)
    sizes = [torch.zeros_like(size) for _ in range(ctx.world_size)]
    dist.all_gather(sizes, size)
    longest = int(max(s.item() for s in sizes))
    padded = torch.zeros(longest, dtype=torch.int64)
    padded[: values.numel()] = values.cpu()
    parts = [torch.zeros_like(padded) for _ in range(ctx.world_size)]
    dist.all_gather(parts, padded)
    return torch.cat([p[: int(s.item())] for p, s in zip(parts, sizes)])


class IdAllocator:
    """Callable ``(sources int64 [n]) -> new ids int64 [n]``; ``next_id`` is the smallest id never used."""

    def __init__(self, next_id: int, ctx: DistContext):
        self.next_id, self.ctx = next_id, ctx

    def __call__(self, sources: torch.Tensor) -> torch.Tensor:
        sources = sources.to(torch.int64).cpu()
        order = torch.argsort(sources, stable=True)
        ranked = sources[order]
        first = torch.ones_like(ranked, dtype=torch.bool)
        first[1:] = ranked[1:] != ranked[:-1]
        starts = torch.cummax(torch.where(first, torch.arange(len(ranked)), torch.zeros_like(ranked)), 0).values
        copy = torch.empty_like(sources)
        copy[order] = torch.arange(len(ranked)) - starts  # 0 for the first copy of a source, 1 for the second
        if len(copy) and int(copy.max()) >= MAX_COPIES:
            raise ValueError(f"a Gaussian was copied more than {MAX_COPIES} times in one densification")
        keys = sources * MAX_COPIES + copy
        everyone = torch.sort(_gather(keys, self.ctx)).values
        ids = self.next_id + torch.searchsorted(everyone, keys)
        self.next_id += len(everyone)
        return ids
