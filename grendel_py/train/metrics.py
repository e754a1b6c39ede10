"""Image quality metrics for evaluation, as INRIA's eval: the render is clamped to [0, 1] first.

Images are [H, W, C] in [0, 1]. No LPIPS: it needs pretrained network weights.
"""

from __future__ import annotations

import math

import torch

from grendel_py.loss.pixels import ssim_map


def psnr(image: torch.Tensor, gt: torch.Tensor) -> float:
    """PSNR in dB, -10 log10(MSE) over all pixels and channels (inf for identical images)."""
    mse = float(((image.clamp(0.0, 1.0) - gt) ** 2).mean())
    return -10.0 * math.log10(mse) if mse > 0 else math.inf


def ssim(image: torch.Tensor, gt: torch.Tensor) -> float:
    """Mean SSIM (INRIA's: 11x11 Gaussian window, zero-padded border) over all pixels and channels."""
    return float(ssim_map(image.clamp(0.0, 1.0), gt).mean())
