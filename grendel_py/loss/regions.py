"""The loss of a batch over a rank's regions: what each rank scores of the pixels it rendered.

A rank holds, per camera of the batch, a :class:`Region`: the bounding box of its tiles plus the SSIM halo of
``HALO`` pixels, filled with its rendered pixels and the halo pixels the other ranks rendered (zeros
elsewhere, as SSIM's padding). :func:`regions_loss` scores the rank's own pixels against the photo, each
camera normalised by its full pixel count, so the sum over ranks is the single-rank loss summed over the
batch; it works in bands of :data:`LOSS_ROWS` rows (plus the halo), each checkpointed, so SSIM's maps are
recomputed in the backward pass one band at a time rather than kept (a sum of per-pixel terms: the bands
change only the order of the sum), unless the maps of all the rank's regions take at most
:data:`~grendel_py.backward_state.KEEP_BYTES`: then they are kept (the same bands, the same bits). :func:`expose_regions` puts each camera's render through its learned
colour transform first; :func:`squared_error_sums` and :func:`ssim_sums` are what the logs and the
evaluation all-reduce.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch.utils.checkpoint import checkpoint

from grendel_py import backward_state
from grendel_py.data.cameras import Camera
from grendel_py.loss.fused import Launch, fused_loss
from grendel_py.loss.pixels import HALO, region_loss, ssim_map_valid, window_with_halo
from grendel_py.model.exposure import apply_exposure

LOSS_ROWS = 128
"""Rows of a region whose loss is computed at a time (plus the SSIM halo above and below): the backward pass
recomputes SSIM's maps for one band at a time, not for a whole camera."""


@dataclass
class Region:
    """What a rank holds of one camera: ``canvas`` [h + 2 HALO, w + 2 HALO, C] covers the bounding box of its
    pixels plus the halo (image coordinates of its top-left pixel: ``y0 - HALO``, ``x0 - HALO``); it holds the
    rank's rendered pixels, the halo pixels received from other ranks and zeros elsewhere (also outside the
    image, like SSIM's zero padding). ``owned`` [h, w] marks the rank's own pixels inside the box."""

    canvas: torch.Tensor
    owned: torch.Tensor
    y0: int
    x0: int


def ground_truth_region(region: Region, gt) -> torch.Tensor:
    """The ground truth under ``region.canvas`` (zeros outside the image): the region's crop of the photo,
    padded only where the canvas reaches past the photo's edges. ``gt``: the photo, float32 [H, W, 3] on the
    device, or a :class:`grendel_py.train.images.Photo`, which reads only the crop."""
    h, w = region.owned.shape
    return window_with_halo(gt, region.y0, region.y0 + h, region.x0, region.x0 + w)


class Scores(NamedTuple):
    """What :func:`regions_loss` gives: the ``loss`` (float32, differentiable; 0.0 when the rank holds no
    region) and the ``squared_error`` of the rank's owned pixels summed over cameras, as
    :func:`squared_error_sums` (float64, for the logs)."""

    loss: torch.Tensor | float
    squared_error: torch.Tensor


def regions_loss(
    regions: list[Region | None],
    photos: list,
    cameras: list[Camera],
    lambda_dssim: float,
    device: torch.device,
    launch: Launch | None = None,
) -> Scores:
    """This rank's share of the batch's loss (summed over cameras): (1 - l) L1 + l D-SSIM over its own pixels
    of each camera's region (None: it holds none of that camera), l = ``lambda_dssim``, and their squared
    error. ``photos``: each camera's photo, a tensor or a :class:`~grendel_py.train.images.Photo` (which reads
    only the region). ``launch``: a kernel launcher (grendel_py.render.cuda_kernels) to compute both with the
    fused kernels of cuda/loss.cu (:func:`grendel_py.loss.fused.fused_loss`), else the torch spec below."""
    held = [(r, gt, cam) for r, gt, cam in zip(regions, photos, cameras) if r is not None]
    if not held:
        return Scores(0.0, torch.zeros((), dtype=torch.float64, device=device))
    if launch is not None:
        return Scores(
            *fused_loss(
                [r.canvas for r, _, _ in held],
                [ground_truth_region(r, gt) for r, gt, _ in held],
                [r.owned for r, _, _ in held],
                [cam.width * cam.height for _, _, cam in held],
                lambda_dssim,
                launch,
            )
        )
    loss: torch.Tensor | float = 0.0
    # checkpointed bands: autograd keeps the canvas and the photo, not SSIM's maps (some 40 per pixel and
    # channel), and recomputes them band by band in the backward pass, to the same bits; kept when small
    keep = sum(r.canvas.numel() for r, _, _ in held) * 40 * 4 <= backward_state.KEEP_BYTES
    checkpointed = torch.is_grad_enabled() and not keep
    for region, gt, cam in held:
        gt_halo = ground_truth_region(region, gt)
        height = region.owned.shape[0]
        for r0 in range(0, height, LOSS_ROWS):  # bands of rows, each with the halo its windows read
            r1 = min(r0 + LOSS_ROWS, height)
            rows = slice(r0, r1 + 2 * HALO)
            args = (region.canvas[rows], gt_halo[rows], lambda_dssim, cam.width * cam.height, region.owned[r0:r1])
            band = checkpoint(region_loss, *args, use_reentrant=False) if checkpointed else region_loss(*args)
            loss = loss + band
    return Scores(loss, squared_error_sums(regions, photos, device).sum())


def expose_region(region: Region, transform: torch.Tensor, height: int, width: int) -> Region:
    """``region`` with its canvas through the affine colour ``transform`` [3, 4] inside the image of
    ``height`` x ``width`` (outside it stays 0, as SSIM's padding)."""
    canvas = apply_exposure(region.canvas, transform)
    h, w = canvas.shape[:2]
    ys = torch.arange(h, device=canvas.device) + (region.y0 - HALO)
    xs = torch.arange(w, device=canvas.device) + (region.x0 - HALO)
    inside = ((ys >= 0) & (ys < height))[:, None] & ((xs >= 0) & (xs < width))[None, :]
    return dataclasses.replace(region, canvas=torch.where(inside[..., None], canvas, 0.0))


def expose_regions(
    regions: list[Region | None], transforms: torch.Tensor, cameras: list[Camera]
) -> list[Region | None]:
    """Each camera's region through its colour transform (``transforms`` [B, 3, 4]), see :func:`expose_region`."""
    return [
        None if r is None else expose_region(r, t, cam.height, cam.width)
        for r, t, cam in zip(regions, transforms, cameras)
    ]


def _owned_pairs(regions: list[Region | None], photos: list) -> Iterator[tuple]:
    """(camera slot, render canvas clamped to [0, 1], ground truth canvas, owned mask) per camera this rank holds."""
    for b, (region, gt) in enumerate(zip(regions, photos)):
        if region is not None:
            yield b, region.canvas.detach().clamp(0.0, 1.0), ground_truth_region(region, gt), region.owned


def squared_error_sums(regions: list[Region | None], photos: list, device: torch.device) -> torch.Tensor:
    """Per camera, the squared error summed over this rank's pixels and channels, float64 [B] on ``device``
    (all-reduce over ranks and divide by 3 H W for the whole image's MSE)."""
    sums = torch.zeros(len(photos), dtype=torch.float64, device=device)
    core = (slice(HALO, -HALO), slice(HALO, -HALO))
    for b, canvas, gt_halo, owned in _owned_pairs(regions, photos):
        sums[b] = torch.where(owned, ((canvas[core] - gt_halo[core]) ** 2).sum(-1), 0.0).double().sum()
    return sums


def ssim_sums(regions: list[Region | None], photos: list, device: torch.device) -> torch.Tensor:
    """Per camera, SSIM summed over this rank's pixels, float64 [B] on ``device`` (all-reduce, divide by H W)."""
    sums = torch.zeros(len(photos), dtype=torch.float64, device=device)
    for b, canvas, gt_halo, owned in _owned_pairs(regions, photos):
        sums[b] = torch.where(owned, ssim_map_valid(canvas, gt_halo), 0.0).double().sum()
    return sums
