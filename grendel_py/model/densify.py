"""Adaptive density control (INRIA 3DGS): clone, split and prune Gaussians, and reset opacities.

Statistics are gathered per rendered camera by :meth:`DensifyStrategy.observe` and acted on by
:meth:`DensifyStrategy.step`, whose schedules count training images (INRIA's iteration = images seen), so
the batch size can change without moving the events:

- densify and prune at every multiple m of ``every_images`` with ``start_images < m < stop_images``;
- reset opacities at every multiple m of ``reset_opacity_every`` with ``m < stop_images`` (after densifying
  when both are due).

Unlike INRIA (whose ``densification_postfix`` zeroes the screen radii before pruning, so the screen-size test
never fires), the screen-size prune here uses the radii observed since the last densification: clones
inherit their parent's radius, split children start at 0.

Everything here is a function of global Gaussian ids, never of array positions or of which rank holds a
Gaussian: split offsets are drawn from a counter-based hash of (seed, densification, parent id, child), and
new ids come from ``allocate_ids`` given the ids of their sources. So W ranks densify exactly as one does.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from grendel_py.config import DensifyConfig
from grendel_py.counter_rng import hashed_normal
from grendel_py.model.gaussians import Gaussians
from grendel_py.model.geometry import quats_to_rotmats
from grendel_py.model.mcmc import MCMCStrategy
from grendel_py.model.optim import GaussianOptimizer
from grendel_py.model.schedule import last_multiple
from partition.select import Reduce, local_reduce, ordered_key, take_smallest

RESET_OPACITY = 0.01
"""Opacity ceiling applied by an opacity reset."""

SPLIT_CHILDREN = 2
SPLIT_SCALE_DIVISOR = 0.8 * SPLIT_CHILDREN
"""Split children get the parent's scales divided by this (INRIA: 0.8 N with N = 2)."""


class DensifyStrategy:
    """Densification state and schedule for a scene of ``extent``; ``seed`` drives split sampling.

    With the model sharded over ranks, ``reduce`` (:meth:`~grendel_py.parallel.runtime.DistContext.reduce`)
    spans them: ``cfg.budget`` then caps the whole model, and when the cap binds the Gaussians with
    the largest gradients (ties: lowest id) grow, whichever rank holds them.

    State, one row per Gaussian of the model: grad2d_sum [N] (sum of view-space gradient norms in NDC units),
    count [N] int32 (cameras in which the Gaussian was visible), max_radius2d [N] (largest pixel half
    extent seen). Empty (0 rows) until the first :meth:`observe` or :meth:`step`.
    """

    def __init__(self, cfg: DensifyConfig, extent: float, seed: int, reduce: Reduce = local_reduce):
        if not extent > 0.0:
            raise ValueError(f"extent: expected a number > 0, got {extent}")
        self.cfg = cfg
        self.extent = extent
        self.seed = seed
        self.reduce = reduce
        self.grad2d_sum = torch.zeros(0)
        self.count = torch.zeros(0, dtype=torch.int32)
        self.max_radius2d = torch.zeros(0)

    def _reset_stats(self, n: int, device: torch.device) -> None:
        self.grad2d_sum = torch.zeros(n, device=device)
        self.count = torch.zeros(n, dtype=torch.int32, device=device)
        self.max_radius2d = torch.zeros(n, device=device)

    def _check_size(self, n: int, device: torch.device) -> None:
        """Allocate the state for ``n`` Gaussians if it is empty; ValueError if it has another size."""
        if len(self.count) == 0:
            self._reset_stats(n, device)
        elif len(self.count) != n:
            raise ValueError(f"densify state has {len(self.count)} rows but the model has {n} Gaussians")

    def observe(
        self, radii: torch.Tensor, grad_norms: torch.Tensor | None, rows: torch.Tensor, n_gaussians: int
    ) -> None:
        """Accumulate rendered cameras' statistics, after backward.

        ``radii`` [S] are the pixel radii (:func:`~grendel_py.render.projection.pixel_radii`) of S splats of a
        model of ``n_gaussians``: ``rows`` [S] (int32 or int64) gives each splat's row in the model; a row
        repeats when several cameras of a batch see it (each counts, in order). ``grad_norms`` [S] are the
        norms of their ``means2d`` gradients in NDC units (:func:`screen_grad_norms`; None: no gradient
        reached them). For visible splats (radius > 0): grad2d_sum += norm, count += 1, max_radius2d =
        max(max_radius2d, radius).
        """
        device = radii.device
        self._check_size(n_gaussians, device)
        visible = radii > 0
        if grad_norms is not None:
            self.grad2d_sum.index_add_(0, rows, torch.where(visible, grad_norms, torch.zeros_like(grad_norms)))
        self.count.index_add_(0, rows, visible.to(torch.int32))
        # radii are 0 where not visible, and the maxima start at 0
        self.max_radius2d.scatter_reduce_(0, rows.long(), radii, reduce="amax")

    def regularise(self, gaussians: Gaussians, images: int) -> None:
        """The INRIA strategy adds no regulariser (the interface of :class:`~grendel_py.model.mcmc.MCMCStrategy`)."""

    def step(
        self,
        images_seen_before: int,
        images_seen_after: int,
        gaussians: Gaussians,
        optimizer: GaussianOptimizer,
        allocate_ids: Callable[[torch.Tensor], torch.Tensor],
    ) -> dict[str, Any]:
        """Run what is due for the images (images_seen_before, images_seen_after]: densify + prune, then an
        opacity reset. ``gaussians`` must be the optimizer's model; ``allocate_ids(sources)`` gives int64 ids
        for new Gaussians copied from the Gaussians with ids ``sources`` (a split parent appears once per child). Returns {"densified" (bool), "cloned", "split" (parents split, 2 children each), "pruned"
        (not counting split parents), "reset_opacity" (bool)}."""
        if optimizer.gaussians is not gaussians:
            raise ValueError("step: gaussians is not the model of optimizer")
        self._check_size(len(gaussians), gaussians.device)
        result: dict[str, Any] = {"densified": False, "cloned": 0, "split": 0, "pruned": 0, "reset_opacity": False}
        c, before, after = self.cfg, images_seen_before, images_seen_after
        densify_at = last_multiple(before, after, c.every_images, c.start_images + 1, c.stop_images - 1)
        if densify_at is not None:
            result.update(self._densify_and_prune(densify_at, gaussians, optimizer, allocate_ids), densified=True)
        if last_multiple(before, after, c.reset_opacity_every, 1, c.stop_images - 1) is not None:
            reset_opacity(optimizer)
            result["reset_opacity"] = True
        return result

    @torch.no_grad()
    def _densify_and_prune(
        self,
        images: int,
        gaussians: Gaussians,
        optimizer: GaussianOptimizer,
        allocate_ids: Callable[[torch.Tensor], torch.Tensor],
    ) -> dict[str, int]:
        """Clone, split, then prune at the densification due at ``images``; stats are reset to the new size."""
        c = self.cfg
        seen = self.count > 0
        grads = torch.where(seen, self.grad2d_sum / self.count.clamp_min(1), torch.zeros_like(self.grad2d_sum))
        small = gaussians.scales().max(dim=1).values <= c.percent_dense * self.extent
        grow = self._cap(grads >= c.grad_threshold, grads, gaussians.ids)
        clone, split = grow & small, grow & ~small

        children = _split_children(gaussians.select(split), self.seed * 1_000_003 + images)
        new = Gaussians.cat([gaussians.select(clone), children])
        new.ids = allocate_ids(new.ids).to(gaussians.device, torch.int64)  # from the sources' ids
        if len(new):
            optimizer.append(new)

        child_radius = torch.zeros(len(new) - int(clone.sum()), device=grads.device)
        radius = torch.cat([self.max_radius2d, self.max_radius2d[clone], child_radius])
        split_parents = torch.cat([split, torch.zeros(len(new), dtype=torch.bool, device=split.device)])
        prune = self._prune_mask(images, gaussians, radius) & ~split_parents
        removed = prune | split_parents
        if removed.any():
            optimizer.keep(~removed)
        self._reset_stats(len(gaussians), gaussians.device)
        return {"cloned": int(clone.sum()), "split": int(split.sum()), "pruned": int(prune.sum())}

    def _cap(self, candidates: torch.Tensor, grads: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """``candidates`` (bool [N]) limited so that the whole model grows by at most budget minus its
        size: those with the largest ``grads``, ties by lowest id, over all ranks."""
        counts = self.reduce(torch.tensor([len(ids), int(candidates.sum())], device=ids.device), "sum")
        budget = max(self.cfg.budget - int(counts[0]), 0)
        if int(counts[1]) <= budget:
            return candidates
        group = (~candidates).to(torch.int64)  # candidates compete in group 0; group 1 takes nothing
        take = torch.tensor([budget, 0], device=ids.device)
        return candidates & take_smallest(ordered_key(-grads), ids, group, take, self.reduce)

    def _prune_mask(self, images: int, gaussians: Gaussians, max_radius2d: torch.Tensor) -> torch.Tensor:
        """Bool [N]: transparent Gaussians, and once past the first opacity reset also those too big on
        screen (``max_radius2d`` [N] pixels) or in the world."""
        c = self.cfg
        prune = gaussians.opacities() < c.min_opacity
        if images > c.reset_opacity_every:
            too_big_world = gaussians.scales().max(dim=1).values > c.max_world_size * self.extent
            prune |= (max_radius2d > c.max_screen_size) | too_big_world
        return prune

    def state_dict(self, device: torch.device | None = None) -> dict[str, Any]:
        """Copies of the statistics on ``device`` (default: where they live); the split sampling is stateless."""
        stats = {"grad2d_sum": self.grad2d_sum, "count": self.count, "max_radius2d": self.max_radius2d}
        return {k: v.to(device or v.device, copy=True) for k, v in stats.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output ({}: none yet)."""
        if not state:
            self.grad2d_sum, self.count, self.max_radius2d = (
                torch.zeros(0),
                torch.zeros(0, dtype=torch.int32),
                torch.zeros(0),
            )
            return
        self.grad2d_sum = state["grad2d_sum"].clone()
        self.count = state["count"].clone()
        self.max_radius2d = state["max_radius2d"].clone()


def reset_opacity(optimizer: GaussianOptimizer) -> None:
    """Clamp every opacity to at most RESET_OPACITY (as logits) and zero the opacity Adam moments."""
    logits = optimizer.gaussians.opacity_logits.detach()
    ceiling = math.log(RESET_OPACITY / (1.0 - RESET_OPACITY))
    optimizer.reset_field("opacity_logits", logits.clamp_max(ceiling))


def _split_children(parents: Gaussians, event_key: int) -> Gaussians:
    """SPLIT_CHILDREN Gaussians per parent (all first children, then all second ones): means drawn from the
    parent's Gaussian, N(0, diag(scale^2)) rotated by its rotation around its mean; log scales
    log(scale / SPLIT_SCALE_DIVISOR); every other field copied. ids are the parents' (replace them). The
    draws depend only on (``event_key``, parent id, child), not on where the parent sits in the array."""
    k = len(parents)
    scales = parents.scales().repeat(SPLIT_CHILDREN, 1)
    child = torch.arange(SPLIT_CHILDREN, device=parents.ids.device).repeat_interleave(k)
    noise = hashed_normal(parents.ids.repeat(SPLIT_CHILDREN) * SPLIT_CHILDREN + child, event_key, 3)
    offsets = noise.to(scales) * scales
    rotations = quats_to_rotmats(parents.quats).repeat(SPLIT_CHILDREN, 1, 1)
    children = Gaussians.cat([parents] * SPLIT_CHILDREN)
    children.means = children.means + torch.einsum("nij,nj->ni", rotations, offsets)
    children.log_scales = torch.log(scales / SPLIT_SCALE_DIVISOR)
    return children


def screen_grad_norms(means2d_grad: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """|grad x (width / 2, height / 2)| [S] of the gradient [S, 2] of a camera's splat ``means2d`` (in pixels):
    INRIA's view-space gradient in NDC units, which :meth:`DensifyStrategy.observe` accumulates."""
    return ndc_grad_norms(means2d_grad, torch.tensor([width / 2.0, height / 2.0], device=means2d_grad.device))


def ndc_grad_norms(means2d_grad: torch.Tensor, half_size: torch.Tensor) -> torch.Tensor:
    """:func:`screen_grad_norms` with the half image size (width / 2, height / 2) given as float32 [2], or
    [S, 2] for splats of several cameras (each its own camera's)."""
    return torch.linalg.vector_norm(means2d_grad.detach().float() * half_size, dim=-1)


Strategy = DensifyStrategy | MCMCStrategy
"""A densification strategy: ``observe``, ``regularise``, ``step`` and per-Gaussian ``state_dict`` (moved with
the Gaussians by the redistribution, saved in checkpoints)."""


def densify_strategy(cfg: DensifyConfig, extent: float, seed: int, reduce: Reduce = local_reduce) -> Strategy:
    """The strategy ``cfg.strategy`` names, for a scene of ``extent`` (``reduce`` spans the ranks)."""
    kind = {"inria": DensifyStrategy, "mcmc": MCMCStrategy}[cfg.strategy]
    return kind(cfg, extent, seed, reduce)
