"""The loss of a batch's regions on the CUDA kernels of cuda/loss.cu: L1 and D-SSIM forward in one launch and
backward in one launch for all regions of the batch, the torch loss (:mod:`grendel_py.loss.pixels`) being
their spec.

The regions' canvases, ground truths and owned masks are laid end to end in one array each; a table (int64
[R, 6]: first canvas pixel, first core pixel, h, w, first forward block, first backward block) and the
regions' weights (float32 [R, 2]: (1 - l) / (3 N) and l / N, N the camera's pixels) tell the kernels where
each region lies. The forward pass keeps 9 floats per core pixel for the backward pass (the derivatives of
SSIM by the window moments, cuda/loss.cuh), so SSIM's maps are never recomputed.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from grendel_py.loss.pixels import HALO

TILE = 16
MAPS = 9  # cuda/loss.cuh MAPS

Launch = Callable[..., None]
"""A kernel launcher, ``launch(name, size, *args)`` (grendel_py.render.cuda_kernels)."""


def _blocks(n: int) -> int:
    return -(-n // TILE)


class _FusedLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, canvases, truth, owned, table, weights, blocks, launch):
        n_regions, (n_forward, n_backward) = table.shape[0], blocks
        sums = canvases.new_empty(2, n_forward)  # per block: loss, squared error
        maps = canvases.new_empty(owned.shape[0] * MAPS)
        launch("loss_forward", n_forward, table, n_regions, canvases, truth, owned, weights, sums[0], sums[1], maps)
        ctx.save_for_backward(canvases, truth, owned, table, weights, maps)
        ctx.n_backward, ctx.launch = n_backward, launch
        squared = sums[1].sum(dtype=torch.float64)
        ctx.mark_non_differentiable(squared)
        return sums[0].sum(), squared

    @staticmethod
    def backward(ctx, grad, _grad_squared):
        canvases, truth, owned, table, weights, maps = ctx.saved_tensors
        grad_canvases = torch.empty_like(canvases)
        ctx.launch(
            "loss_backward",
            ctx.n_backward,
            table,
            table.shape[0],
            canvases,
            truth,
            owned,
            weights,
            maps,
            grad.reshape(1).float().contiguous(),
            grad_canvases,
        )
        return grad_canvases, None, None, None, None, None, None


def fused_loss(
    canvases: list[torch.Tensor],
    truths: list[torch.Tensor],
    owned: list[torch.Tensor],
    pixels: list[int],
    lambda_dssim: float,
    launch: Launch,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The loss of regions (each: its canvas and ground truth [h + 2 HALO, w + 2 HALO, 3] float32, its owned
    mask [h, w] and its camera's pixel count), as :func:`grendel_py.loss.pixels.region_loss` summed over
    them, on the kernels behind ``launch``; and their squared error, float64, as
    :func:`grendel_py.loss.regions.squared_error_sums` summed over them (the blocks' float32 sums added in
    float64)."""
    rows, weights, canvas, core, forward, backward = [], [], 0, 0, 0, 0
    for mask, n in zip(owned, pixels):
        h, w = mask.shape
        rows.append([canvas, core, h, w, forward, backward])
        weights.append([(1.0 - lambda_dssim) / (3 * n), lambda_dssim / n])
        canvas += (h + 2 * HALO) * (w + 2 * HALO)
        core += h * w
        forward += _blocks(h) * _blocks(w)
        backward += _blocks(h + 2 * HALO) * _blocks(w + 2 * HALO)
    device = canvases[0].device
    table = torch.tensor(rows, dtype=torch.int64).to(device, non_blocking=True)
    weights = torch.tensor(weights, dtype=torch.float32).to(device, non_blocking=True)
    return _FusedLoss.apply(
        torch.cat([c.reshape(-1) for c in canvases]),
        torch.cat([t.reshape(-1) for t in truths]),
        torch.cat([m.reshape(-1) for m in owned]).to(torch.int32),
        table,
        weights,
        (forward, backward),
        launch,
    )
