"""3D Gaussian Splatting as Markov Chain Monte Carlo (Kheradmand et al. 2024, as gsplat's ``MCMCStrategy``)
over a model sharded across ranks: ``densify.strategy: mcmc``.

At every multiple m of ``every_images`` with ``start_images < m < stop_images`` (images, as the INRIA
strategy counts them):

1. relocate: the dead Gaussians (opacity <= ``min_opacity``) are removed, and as many copies are made of
   live ones drawn with probability proportional to their opacity (with replacement);
2. grow: copies of ``min(budget, floor(growth_rate x N)) - N`` Gaussians drawn the same way from the whole
   model of N, so the model never holds more than ``budget`` Gaussians (over all ranks).

A Gaussian drawn k times becomes k + 1 Gaussians at its place (itself and k copies) that share its
contribution: opacity 1 - (1 - o)^(1/(k+1)) (the same alpha where they all overlap) and scales times
o / sum_{j=1..k+1} C(k+1, j) (-1)^(j+1) o'^j / sqrt(j) (the same integral of opacity along any line through the
centre: the paper's rule), with k + 1 at most :data:`MAX_SHARE`. Its Adam moments are zeroed, and the copies
start at zero (gsplat zeroes those of relocation's sources only, keeps a grown source's, and leaves a dead
slot's stale moments to the copy written into it). After every step, positions get noise N(0, Sigma) x (means learning rate) x ``noise_lr``, gated
by sigmoid(100 (1 - o - 0.995)) so that only nearly transparent Gaussians wander; before every step, the
regularisers ``opacity_reg`` x mean opacity + ``scale_reg`` x mean scale (per image, over the whole model)
add their gradients.

Distribution does not change the model. Draws are counter-based, from global ids (:mod:`grendel_py.counter_rng`):
a Gaussian's number of copies is a Poisson draw with mean (n + margin) w / W, W the all-reduced sum of the
weights in fixed point (so exactly the same on every rank), and then exactly n of all the copies are kept
by an exact distributed selection on hashed keys (:func:`partition.select.take_smallest`): n independent
draws proportional to weight, whichever rank holds what. Relocation stays rank-local by construction: a copy
is made on the rank holding its source (which has the parameters and Adam state it starts from), and a dead
Gaussian is removed where it lies, so no state crosses ranks; shard sizes drift and the redistribution
(``dist.rebalance_threshold``) evens them as after any densification. gsplat writes a copy into a dead
Gaussian's slot; here a copy gets a new global id from its source's (:class:`~grendel_py.parallel.ids.IdAllocator`)
and the dead one's id retires: the same model, up to ids.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from grendel_py.config import DensifyConfig
from grendel_py.counter_rng import hashed_bits, hashed_normal, hashed_uniform
from grendel_py.model.gaussians import Gaussians
from grendel_py.model.geometry import covariances_3d
from grendel_py.model.optim import GaussianOptimizer
from grendel_py.model.schedule import last_multiple
from partition.select import Reduce, local_reduce, take_smallest

MAX_SHARE = 51
"""The most Gaussians one is split into by a refinement (itself and 50 copies; gsplat's N_MAX)."""

FIXED_POINT = 2.0**32
"""Weights (opacities in [0, 1]) are summed over ranks as integers of this scale: exact in any order."""

_COPY_BITS = 20  # a copy's selection id: source id << 20 | copy number


def share(
    opacities: torch.Tensor, scales: torch.Tensor, parts: torch.Tensor, min_opacity: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Opacity [M] and scales [M, 3] of each of ``parts`` [M] (int, >= 1) Gaussians that together replace
    one of opacity ``opacities`` and scales ``scales`` (the module's rule; float64 inside; the opacity is
    kept in [min_opacity, 1 - float32 eps])."""
    n = parts.clamp(1, MAX_SHARE).to(torch.float64)
    o = opacities.to(torch.float64)
    new = 1.0 - (1.0 - o) ** (1.0 / n)
    j = torch.arange(1, MAX_SHARE + 1, dtype=torch.float64, device=o.device)
    choose = torch.exp(torch.lgamma(n[:, None] + 1) - torch.lgamma(j + 1) - torch.lgamma(n[:, None] - j + 1))
    terms = torch.where(j <= n[:, None], choose * (-1.0) ** (j + 1) * new[:, None] ** j / j.sqrt(), 0.0)
    factor = o / terms.sum(dim=1)
    eps = torch.finfo(torch.float32).eps
    return new.clamp(min_opacity, 1.0 - eps).to(opacities.dtype), (scales.to(torch.float64) * factor[:, None]).to(
        scales.dtype
    )


def draw_counts(
    weights: torch.Tensor, ids: torch.Tensor, n: int, key: int, reduce: Reduce = local_reduce
) -> torch.Tensor:
    """How many times each row is drawn, int64 [N], in n draws with replacement and probability proportional
    to ``weights`` [N] (in [0, 1]) over the rows of every rank (``reduce`` spans them); a row is drawn at
    most MAX_SHARE - 1 times. A function of (``key``, global id, weight, n) only, so the same on any number
    of ranks. Fewer than n draws only when the weights leave too few (all zero, or a handful of rows)."""
    counts = torch.zeros(weights.shape[0], dtype=torch.int64, device=weights.device)
    if n <= 0:
        return counts
    fixed = (weights.detach().to(torch.float64).clamp(0.0, 1.0) * FIXED_POINT).round().to(torch.int64)
    total = int(reduce(fixed.sum().reshape(1), "sum")[0])
    if total == 0:
        return counts
    mean_draws = n + math.ceil(6.0 * math.sqrt(n)) + 10  # Poisson counts short of n with odds below 1e-9
    counts = _poisson(fixed.to(torch.float64) * (mean_draws / total), hashed_uniform(ids, key, 1)[:, 0], MAX_SHARE - 1)
    drawn = int(reduce(counts.sum().reshape(1), "sum")[0])
    if drawn <= n:
        return counts
    if len(ids) and int(ids.max()) >= 1 << (63 - _COPY_BITS):
        raise ValueError(f"draw_counts: ids must be below 2^{63 - _COPY_BITS}")
    # Keep exactly n of the copies, uniformly at random (so they are n draws): the n smallest hashed keys.
    rows = torch.repeat_interleave(torch.arange(counts.shape[0], device=counts.device), counts)
    copy = torch.arange(rows.shape[0], device=rows.device) - (torch.cumsum(counts, 0) - counts)[rows]
    copy_ids = (ids[rows] << _COPY_BITS) | copy
    keys = hashed_bits(copy_ids, key ^ 0x5E1EC7)
    keep = take_smallest(keys, copy_ids, torch.zeros_like(copy_ids), torch.tensor([n], device=rows.device), reduce)
    return torch.bincount(rows[keep], minlength=counts.shape[0])


def _poisson(lam: torch.Tensor, u: torch.Tensor, most: int) -> torch.Tensor:
    """Inverse-CDF Poisson draws capped at ``most``, int64: the number of k in 0..most-1 with CDF(k; lam) < u
    (float64 [N] each). A fixed number of terms: no host read, and the same on every rank."""
    counts = torch.zeros(lam.shape[0], dtype=torch.int64, device=lam.device)
    p = torch.exp(-lam)
    cdf = p.clone()
    for k in range(1, most + 1):
        counts += cdf < u
        p = p * lam / k
        cdf = cdf + p
    return counts


def _gate(opacities: torch.Tensor) -> torch.Tensor:
    """gsplat's noise gate: ~1 for opacity below 0.005, ~0 above 0.05."""
    return torch.sigmoid(100.0 * (1.0 - opacities - 0.995))


class MCMCStrategy:
    """The MCMC refinement of a model sharded over the ranks ``reduce`` spans (:meth:`step`, :meth:`regularise`,
    the statistics-free ``observe``), driven by ``seed``. No per-Gaussian state."""

    def __init__(self, cfg: DensifyConfig, extent: float, seed: int, reduce: Reduce = local_reduce):
        if not extent > 0.0:
            raise ValueError(f"extent: expected a number > 0, got {extent}")
        self.cfg, self.extent, self.seed, self.reduce = cfg, extent, seed, reduce
        self._total: int | None = None  # Gaussians over all ranks, known after the first reduce

    def observe(self, radii, grad_norms, rows, n_gaussians: int) -> None:
        """MCMC uses no screen-space statistics (the interface of :class:`~grendel_py.model.densify.DensifyStrategy`)."""

    def total(self, gaussians: Gaussians) -> int:
        """The number of Gaussians over all ranks (one all-reduce, then remembered until the model changes)."""
        if self._total is None:
            self._total = int(self.reduce(torch.tensor([len(gaussians)], device=gaussians.device), "sum")[0])
        return self._total

    @torch.no_grad()
    def regularise(self, gaussians: Gaussians, images: int) -> None:
        """Add to ``.grad`` the gradients of ``images`` x (opacity_reg x mean opacity + scale_reg x mean scale)
        over the whole model (the regularisers of each image of the step)."""
        c, n = self.cfg, self.total(gaussians)
        if n == 0 or (c.opacity_reg == 0 and c.scale_reg == 0):
            return
        o = torch.sigmoid(gaussians.opacity_logits)
        _add_grad(gaussians.opacity_logits, o * (1.0 - o) * (c.opacity_reg * images / n))
        _add_grad(gaussians.log_scales, torch.exp(gaussians.log_scales) * (c.scale_reg * images / (3 * n)))

    def step(
        self,
        images_seen_before: int,
        images_seen_after: int,
        gaussians: Gaussians,
        optimizer: GaussianOptimizer,
        allocate_ids: Callable[[torch.Tensor], torch.Tensor],
    ) -> dict[str, Any]:
        """After the optimizer's step for the images (before, after]: relocate and grow when due, then the
        position noise. Returns {"densified" (bool), "relocated", "added"} (counts over all ranks)."""
        if optimizer.gaussians is not gaussians:
            raise ValueError("step: gaussians is not the model of optimizer")
        c = self.cfg
        result: dict[str, Any] = {"densified": False, "relocated": 0, "added": 0}
        at = last_multiple(images_seen_before, images_seen_after, c.every_images, c.start_images + 1, c.stop_images - 1)
        if at is not None:
            result.update(self._refine(at, gaussians, optimizer, allocate_ids), densified=True)
        self._noise(images_seen_after, optimizer)
        return result

    @torch.no_grad()
    def _refine(self, images: int, gaussians: Gaussians, optimizer: GaussianOptimizer, allocate_ids) -> dict[str, int]:
        c = self.cfg
        key, before = self._key(images, 0), self.total(gaussians)
        dead = gaussians.opacities() <= c.min_opacity
        n_dead = int(self.reduce(dead.sum().reshape(1), "sum")[0])
        weights = torch.where(dead, 0.0, gaussians.opacities())
        relocated = self._replicate(
            draw_counts(weights, gaussians.ids, n_dead, key, self.reduce), optimizer, allocate_ids
        )
        optimizer.keep(torch.cat([~dead, dead.new_ones(len(gaussians) - len(dead))]))
        total = before - n_dead + relocated
        n_add = max(0, min(c.budget, math.floor(c.growth_rate * total)) - total)
        added = self._replicate(
            draw_counts(gaussians.opacities(), gaussians.ids, n_add, self._key(images, 1), self.reduce),
            optimizer,
            allocate_ids,
        )
        self._total = total + added
        return {"relocated": relocated, "added": added}

    def _replicate(self, counts: torch.Tensor, optimizer: GaussianOptimizer, allocate_ids) -> int:
        """Split each Gaussian drawn k times (``counts``) into k + 1 sharing its contribution; returns the
        copies made over all ranks."""
        made = int(self.reduce(counts.sum().reshape(1), "sum")[0])
        if made == 0:
            return 0
        model = optimizer.gaussians
        drawn = counts > 0
        opacities, scales = share(
            model.opacities()[drawn], model.scales()[drawn], counts[drawn] + 1, self.cfg.min_opacity
        )
        logits, log_scales = model.opacity_logits.detach().clone(), model.log_scales.detach().clone()
        logits[drawn] = torch.logit(opacities.to(torch.float64)).to(logits.dtype)
        log_scales[drawn] = torch.log(scales)
        optimizer.reset_rows(drawn, {"opacity_logits": logits, "log_scales": log_scales})
        sources = torch.repeat_interleave(torch.arange(len(model), device=counts.device), counts)
        copies = model.select(sources)
        copies = Gaussians(**{k: v.detach() for k, v in vars(copies).items()})
        copies.ids = allocate_ids(copies.ids).to(model.device, torch.int64)
        if len(copies):
            optimizer.append(copies)
        return made

    @torch.no_grad()
    def _noise(self, images: int, optimizer: GaussianOptimizer) -> None:
        """Move the means by N(0, Sigma) x lr(means) x noise_lr x gate(opacity), a draw per (step, global id)."""
        model = optimizer.gaussians
        if self.cfg.noise_lr == 0 or len(model) == 0:
            return
        z = hashed_normal(model.ids, self._key(images, 2), 3).to(model.means.dtype)
        scale = _gate(model.opacities()) * (optimizer.lr("means") * self.cfg.noise_lr)
        covariances = covariances_3d(model.quats, model.scales())
        model.means.add_(torch.einsum("nij,nj->ni", covariances, z) * scale[:, None])

    def _key(self, images: int, stream: int) -> int:
        """The counter-based draws' seed for an event at ``images``: 0 relocation, 1 growth, 2 noise."""
        return (self.seed * 1_000_003 + images) * 4 + stream

    def state_dict(self, device: torch.device | None = None) -> dict[str, Any]:
        """Nothing per Gaussian: the draws are counter-based."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._total = None


def _add_grad(param: torch.Tensor, grad: torch.Tensor) -> None:
    if param.grad is None:
        param.grad = grad.to(param.dtype)
    else:
        param.grad.add_(grad)
