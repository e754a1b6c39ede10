"""The photometric loss: SSIM against a direct computation, region losses that add up, gradients."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from grendel_py.loss.pixels import (
    HALO,
    crop_with_halo,
    pad_halo,
    photometric_loss,
    region_loss,
    ssim_map,
    window_with_halo,
)

# Rectangles (y0, y1, x0, x1) tiling a 29 x 37 image; the cuts pass through SSIM windows.
PARTITION = [(0, 11, 0, 23), (0, 11, 23, 37), (11, 29, 0, 8), (11, 29, 8, 37)]


def image_pair(height: int, width: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A float64 render-like image in [0, 1] and a correlated ground truth, both [H, W, 3]."""
    g = torch.Generator().manual_seed(seed)
    gt = torch.rand(height, width, 3, generator=g, dtype=torch.float64)
    image = (0.7 * gt + 0.3 * torch.rand(height, width, 3, generator=g, dtype=torch.float64)).clamp(0, 1)
    return image, gt


def reference_ssim_map(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """SSIM map [H, W] of [H, W, C] images computed patch by patch in float64: every pixel's 11x11
    neighbourhood (zeros outside the image) weighted by a Gaussian written out from its formula."""
    h, w, _ = x.shape
    offsets = [i - 5 for i in range(11)]
    g = torch.tensor(
        [[math.exp(-(a * a + b * b) / (2 * 1.5**2)) for b in offsets] for a in offsets], dtype=torch.float64
    )
    g = (g / g.sum()).reshape(-1)

    def patches(t: torch.Tensor) -> torch.Tensor:  # [C, H * W, 121]
        chw = t.double().permute(2, 0, 1)[:, None]
        return F.unfold(chw, 11, padding=5).transpose(1, 2)

    px, py = patches(x), patches(y)
    mx, my = px @ g, py @ g
    vx = ((px - mx[..., None]) ** 2) @ g
    vy = ((py - my[..., None]) ** 2) @ g
    cov = ((px - mx[..., None]) * (py - my[..., None])) @ g
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return s.mean(0).reshape(h, w)


def partitioned_loss(image: torch.Tensor, gt: torch.Tensor, lambda_dssim: float) -> torch.Tensor:
    """Sum of region losses over PARTITION, each region cut with its halo from the zero-padded images."""
    padded_image, padded_gt = pad_halo(image), pad_halo(gt)
    total = image.shape[0] * image.shape[1]
    parts = [
        region_loss(crop_with_halo(padded_image, *r), crop_with_halo(padded_gt, *r), lambda_dssim, total)
        for r in PARTITION
    ]
    return torch.stack(parts).sum()


def test_ssim_of_identical_images_is_one() -> None:
    image, _ = image_pair(13, 17)
    torch.testing.assert_close(ssim_map(image, image), torch.ones(13, 17, dtype=torch.float64))
    assert float(photometric_loss(image, image, 0.2)) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("size", [(13, 17), (4, 3), (29, 37)])
def test_ssim_matches_direct_computation(size: tuple[int, int]) -> None:
    image, gt = image_pair(*size, seed=1)
    torch.testing.assert_close(ssim_map(image, gt), reference_ssim_map(image, gt), rtol=0, atol=1e-12)
    ours32 = ssim_map(image.float(), gt.float())
    torch.testing.assert_close(ours32.double(), reference_ssim_map(image, gt), rtol=0, atol=1e-5)


def test_loss_matches_direct_computation() -> None:
    image, gt = image_pair(13, 17, seed=2)
    expected = 0.8 * (image - gt).abs().mean() + 0.2 * (1 - reference_ssim_map(image, gt).mean())
    torch.testing.assert_close(photometric_loss(image, gt, 0.2), expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("lambda_dssim", [0.0, 0.2, 1.0])
def test_region_losses_add_up_to_full_loss(lambda_dssim: float) -> None:
    image, gt = image_pair(29, 37, seed=3)
    assert sum((y1 - y0) * (x1 - x0) for y0, y1, x0, x1 in PARTITION) == 29 * 37
    full_image = image.clone().requires_grad_()
    full = photometric_loss(full_image, gt, lambda_dssim)
    (full_grad,) = torch.autograd.grad(full, full_image)
    split_image = image.clone().requires_grad_()
    split = partitioned_loss(split_image, gt, lambda_dssim)
    (split_grad,) = torch.autograd.grad(split, split_image)
    torch.testing.assert_close(split, full, rtol=0, atol=1e-14)
    torch.testing.assert_close(split_grad, full_grad, rtol=0, atol=1e-15)
    assert float(full_grad.abs().max()) > 1e-6


def test_region_with_halo_from_neighbours() -> None:
    """A rank that assembles its halo itself (zeros outside the image) gets the same region loss."""
    image, gt = image_pair(29, 37, seed=4)
    y0, y1, x0, x1 = PARTITION[3]
    halo_image = torch.zeros(y1 - y0 + 2 * HALO, x1 - x0 + 2 * HALO, 3, dtype=torch.float64)
    halo_gt = torch.zeros_like(halo_image)
    for dst, src in ((halo_image, image), (halo_gt, gt)):
        ys, xs = slice(max(y0 - HALO, 0), min(y1 + HALO, 29)), slice(max(x0 - HALO, 0), min(x1 + HALO, 37))
        dst[ys.start - y0 + HALO : ys.stop - y0 + HALO, xs.start - x0 + HALO : xs.stop - x0 + HALO] = src[ys, xs]
    padded = crop_with_halo(pad_halo(image), y0, y1, x0, x1), crop_with_halo(pad_halo(gt), y0, y1, x0, x1)
    torch.testing.assert_close(halo_image, padded[0], rtol=0, atol=0)
    expected = region_loss(*padded, 0.2, 29 * 37)
    torch.testing.assert_close(region_loss(halo_image, halo_gt, 0.2, 29 * 37), expected, rtol=0, atol=0)


def test_gradcheck() -> None:
    image, gt = image_pair(7, 6, seed=5)
    image.requires_grad_()
    assert torch.autograd.gradcheck(lambda im: photometric_loss(im, gt, 0.2), (image,))
    padded_gt = crop_with_halo(pad_halo(gt), 2, 6, 1, 4)
    assert torch.autograd.gradcheck(
        lambda im: region_loss(crop_with_halo(pad_halo(im), 2, 6, 1, 4), padded_gt, 0.2, 42), (image,)
    )


@pytest.mark.parametrize("box", [(0, 7, 0, 9), (3, 7, 2, 9), (0, 12, 0, 13), (5, 12, 8, 13), (2, 3, 12, 13)])
def test_window_with_halo_is_the_padded_images_crop(box: tuple[int, int, int, int]) -> None:
    image = torch.rand(12, 13, 3, generator=torch.Generator().manual_seed(sum(box)))
    window = window_with_halo(image, *box)
    assert window.is_contiguous()
    assert torch.equal(window, crop_with_halo(pad_halo(image), *box))
