"""The 3DGS photometric loss, (1 - l) * L1 + l * (1 - SSIM), on whole images or on pixel regions.

SSIM is INRIA's: an 11x11 Gaussian window (sigma 1.5), C1 = 0.01^2, C2 = 0.03^2, per channel (depthwise),
the image zero-padded by 5 pixels at its border, averaged over channels and pixels. Images are [H, W, C].

For the distributed engine an image is split into rectangles: a rank holds its region plus a halo of
``HALO`` pixels on each side (zeros outside the image, as the zero padding gives), and the sum over regions
of :func:`region_loss` equals :func:`photometric_loss` of the whole image, values and gradients.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

WINDOW_SIZE = 11
SIGMA = 1.5
HALO = WINDOW_SIZE // 2
C1 = 0.01**2
C2 = 0.03**2


def gaussian_window(
    size: int = WINDOW_SIZE,
    sigma: float = SIGMA,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """The normalised 2D Gaussian window [size, size] (outer product of the 1D one, as INRIA)."""
    x = torch.arange(size, dtype=torch.float64) - size // 2
    g = torch.exp(-(x**2) / (2.0 * sigma**2))
    g = g / g.sum()
    return torch.outer(g, g).to(dtype=dtype, device=device)


def ssim_map_valid(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """SSIM map [H - 2 HALO, W - 2 HALO] (mean over channels) of ``x``, ``y`` [H, W, C] that already carry
    their halo: the windows are not padded, so only pixels whose whole window is inside are computed."""
    c = x.shape[-1]
    a, b = x.permute(2, 0, 1)[None], y.permute(2, 0, 1)[None]
    stats = torch.cat([a, b, a * a, b * b, a * b], dim=1)
    window = gaussian_window(dtype=x.dtype, device=x.device).expand(5 * c, 1, WINDOW_SIZE, WINDOW_SIZE)
    mu_x, mu_y, xx, yy, xy = F.conv2d(stats, window, groups=5 * c)[0].split(c)
    mu_xx, mu_yy, mu_xy = mu_x * mu_x, mu_y * mu_y, mu_x * mu_y
    var_x, var_y, cov = xx - mu_xx, yy - mu_yy, xy - mu_xy
    num = (2.0 * mu_xy + C1) * (2.0 * cov + C2)
    den = (mu_xx + mu_yy + C1) * (var_x + var_y + C2)
    return (num / den).mean(0)


def pad_halo(image: torch.Tensor) -> torch.Tensor:
    """``image`` [H, W, C] zero-padded by HALO pixels on each side: [H + 2 HALO, W + 2 HALO, C]."""
    return F.pad(image, (0, 0, HALO, HALO, HALO, HALO))


def crop_with_halo(padded: torch.Tensor, y0: int, y1: int, x0: int, x1: int) -> torch.Tensor:
    """Rows y0:y1 and columns x0:x1 (image coordinates) of the image that ``pad_halo`` made ``padded``,
    with their halo: [y1 - y0 + 2 HALO, x1 - x0 + 2 HALO, C]."""
    return padded[y0 : y1 + 2 * HALO, x0 : x1 + 2 * HALO]


def window_with_halo(image, y0: int, y1: int, x0: int, x1: int) -> torch.Tensor:
    """Rows y0:y1 and columns x0:x1 (image coordinates) of ``image`` [H, W, C] with HALO pixels around them,
    zeros outside the image: [y1 - y0 + 2 HALO, x1 - x0 + 2 HALO, C], contiguous (one pad of a crop; what
    ``crop_with_halo(pad_halo(image), ...)`` gives without padding the whole image). ``image``: a tensor, or
    anything that slices to one (a :class:`grendel_py.train.images.Photo` reads only the crop)."""
    height, width = image.shape[:2]
    top, left, bottom, right = y0 - HALO, x0 - HALO, y1 + HALO, x1 + HALO
    crop = image[max(top, 0) : min(bottom, height), max(left, 0) : min(right, width)]
    return F.pad(crop, (0, 0, max(-left, 0), max(right - width, 0), max(-top, 0), max(bottom - height, 0)))


def ssim_map(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """SSIM map [H, W] (mean over channels) of ``x``, ``y`` [H, W, C], zero-padded at the border as INRIA."""
    return ssim_map_valid(pad_halo(x), pad_halo(y))


def photometric_loss(image: torch.Tensor, gt: torch.Tensor, lambda_dssim: float) -> torch.Tensor:
    """Scalar (1 - l) * mean |image - gt| + l * (1 - mean SSIM) of [H, W, C] images, l = ``lambda_dssim``."""
    l1 = (image - gt).abs().mean()
    dssim = 1.0 - ssim_map(image, gt).mean()
    return (1.0 - lambda_dssim) * l1 + lambda_dssim * dssim


def region_loss(
    image_halo: torch.Tensor,
    gt_halo: torch.Tensor,
    lambda_dssim: float,
    total_pixels: int,
    owned: torch.Tensor | None = None,
) -> torch.Tensor:
    """A region's share of :func:`photometric_loss`: inputs are [h + 2 HALO, w + 2 HALO, C], the region and its
    halo; ``total_pixels`` is H * W of the whole image; ``owned`` (bool [h, w], default all) restricts the sums
    to the pixels this region owns (a rank's tiles need not fill their bounding box). Summed over a partition
    of the image, it gives the whole image's loss (gradients flow into the halo too, which other ranks own)."""
    core = (slice(HALO, -HALO), slice(HALO, -HALO))
    abs_diff = (image_halo[core] - gt_halo[core]).abs().sum(-1)
    dssim_map = 1.0 - ssim_map_valid(image_halo, gt_halo)
    if owned is not None:
        weight = owned.to(abs_diff.dtype)
        abs_diff, dssim_map = abs_diff * weight, dssim_map * weight
    l1 = abs_diff.sum() / (image_halo.shape[-1] * total_pixels)
    dssim = dssim_map.sum() / total_pixels
    return (1.0 - lambda_dssim) * l1 + lambda_dssim * dssim
