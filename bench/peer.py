"""gsplat side by side with our step (bench/gpu_check.py step; issue 37, item 5): the same Gaussians, cameras and
photos through gsplat 1.5.3's ``rasterization()`` forward and backward, the same L1 + D-SSIM loss (our fused
loss kernel on the GPU, the torch spec on the CPU) and torch's fused Adam, timed as our step is timed.

- :func:`gsplat_inputs`: our model and cameras in gsplat's conventions (activated scales and opacities,
  quaternions (w, x, y, z) unnormalised, SH coefficients [N, K, 3], world-to-camera 4x4 view matrices, K).
- :func:`conventions`: gsplat's own torch reference of projection and SH colour (``gsplat.cuda._torch_impl``,
  which runs on any device) against our projection spec on those inputs: means, conics, depths and colours of
  the splats both keep. That the peer gets the same scene is what this checks, on the CPU too.
- :func:`agreement`: gsplat's image against ours (PSNR between the two): the side by side is the same work.
- :func:`peer_step`: seconds per training iteration of a rasterizer with gsplat's signature.

gsplat compiles its CUDA extension on first use (``gsplat.cuda._backend``); :func:`build` does that ahead of
the timings (bench/gpu_check.sh runs it in the background beside the correctness steps). On a CPU machine
gsplat's ``rasterization()`` cannot run; :func:`spec_rasterization` (our torch renderer behind gsplat's
signature) stands in for it so that a dry run exercises everything else.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable

import torch

from grendel_py.data.cameras import Camera
from grendel_py.loss.fused import fused_loss
from grendel_py.loss.pixels import photometric_loss, window_with_halo
from grendel_py.model.gaussians import TRAINABLE, Gaussians
from grendel_py.render import project, render

GSPLAT = "1.5.3"
# conventions(): max errors allowed, relative to each quantity's largest magnitude (float32 rounding of two
# different formulas; a wrong convention is off by order one)
CONVENTION_ATOL = 1e-4
# agreement(): the least PSNR (dB) between gsplat's image and ours (float32 and fast-math differences give
# far more; a wrong convention far less)
AGREEMENT_DB = 40.0

Rasterize = Callable[..., tuple]
"""gsplat's ``rasterization(means, quats, scales, opacities, colors, viewmats, Ks, width, height, sh_degree=...,
packed=...) -> (colors [C, H, W, 3], alphas [C, H, W, 1], meta)``."""


def gsplat_inputs(gaussians: Gaussians, cameras: list[Camera], plant: bool = False) -> dict:
    """gsplat's ``rasterization()`` arguments for ``gaussians`` seen from ``cameras`` (all of one size);
    differentiable in the Gaussians' fields. ``plant``: the quaternions in (x, y, z, w) order, a wrong
    convention that :func:`conventions` must catch."""
    device = gaussians.means.device
    viewmats = torch.zeros(len(cameras), 4, 4, dtype=torch.float32)
    Ks = torch.zeros(len(cameras), 3, 3, dtype=torch.float32)
    for i, cam in enumerate(cameras):
        viewmats[i, :3, :3], viewmats[i, :3, 3], viewmats[i, 3, 3] = cam.R, cam.t, 1.0
        Ks[i] = torch.tensor([[cam.fx, 0.0, cam.cx], [0.0, cam.fy, cam.cy], [0.0, 0.0, 1.0]])
    if {(c.width, c.height) for c in cameras} != {(cameras[0].width, cameras[0].height)}:
        raise ValueError("gsplat renders a batch of cameras of one size")
    quats = gaussians.quats[:, [1, 2, 3, 0]] if plant else gaussians.quats
    return {
        "means": gaussians.means,
        "quats": quats,
        "scales": torch.exp(gaussians.log_scales),
        "opacities": torch.sigmoid(gaussians.opacity_logits),
        "colors": torch.cat([gaussians.sh0, gaussians.shN], dim=1),
        "viewmats": viewmats.to(device),
        "Ks": Ks.to(device),
        "width": cameras[0].width,
        "height": cameras[0].height,
        "sh_degree": gaussians.sh_degree,
    }


def conventions(gaussians: Gaussians, camera: Camera, plant: bool = False) -> dict:
    """gsplat's torch reference projection and colours of :func:`gsplat_inputs` against our projection spec,
    over the splats both draw: max errors of means2d, conics, depths and colours, each relative to the
    largest magnitude of ours, and how many splats one draws and the other does not (their radii rules
    differ: gsplat's box is 3.33 sigma, ours where alpha reaches 1/255, never larger; a splat ours drops and
    gsplat keeps must be one whose alpha never reaches 1/255). Expected: every error within CONVENTION_ATOL,
    and no splat ours draws that gsplat drops."""
    from gsplat.cuda._torch_impl import _fully_fused_projection, _quat_scale_to_covar_preci, _spherical_harmonics

    with torch.no_grad():
        a = gsplat_inputs(gaussians, [camera], plant)
        covars, _ = _quat_scale_to_covar_preci(a["quats"], a["scales"], True, False, triu=False)
        radii, means2d, depths, conics, _ = _fully_fused_projection(
            a["means"], covars, a["viewmats"], a["Ks"], a["width"], a["height"]
        )
        camera_center = torch.linalg.inv(a["viewmats"][0])[:3, 3]
        colors = _spherical_harmonics(a["sh_degree"], a["means"] - camera_center, a["colors"])
        colors = torch.clamp_min(colors + 0.5, 0.0)
        ours = project(gaussians, camera, a["sh_degree"])
    theirs_drawn = (radii[0] > 0).all(dim=-1)
    both = ours.visible & theirs_drawn

    def err(theirs: torch.Tensor, mine: torch.Tensor) -> float:
        scale = mine[both].abs().max().clamp_min(1e-30)
        return float((theirs[both] - mine[both]).abs().max() / scale)

    errors = {
        "means2d": err(means2d[0], ours.means2d),
        "conics": err(conics[0], ours.conics),
        "depths": err(depths[0], ours.depths),
        "colors": err(colors, ours.colors),
    }
    only_ours = int((ours.visible & ~theirs_drawn).sum())
    return {
        "splats_both_draw": int(both.sum()),
        "only_ours_draws": only_ours,
        "only_gsplat_draws": int((theirs_drawn & ~ours.visible).sum()),
        "max_relative_error": errors,
        "expected": f"every error within {CONVENTION_ATOL:g} of ours; no splat ours draws that gsplat drops",
        "ok": bool(int(both.sum()) > 0 and only_ours == 0 and max(errors.values()) <= CONVENTION_ATOL),
    }


def spec_rasterization(
    means, quats, scales, opacities, colors, viewmats, Ks, width, height, sh_degree, **_
) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Our torch renderer behind gsplat's ``rasterization()`` signature (the stand-in for dry runs on a CPU):
    its inputs turned back into our Gaussians, each camera rendered, images stacked [C, H, W, 3]."""
    gaussians = Gaussians(
        means=means,
        log_scales=torch.log(scales),
        quats=quats,
        opacity_logits=torch.logit(opacities),
        sh0=colors[:, :1],
        shN=colors[:, 1:],
        ids=torch.arange(means.shape[0], device=means.device),
    )
    images, alphas = [], []
    for i in range(viewmats.shape[0]):
        K, view = Ks[i].cpu().double(), viewmats[i].cpu().double()
        cam = Camera(
            i, f"peer{i}", width, height, float(K[0, 0]), float(K[1, 1]), float(K[0, 2]), float(K[1, 2]),
            view[:3, :3], view[:3, 3],
        )  # fmt: skip
        out = render(gaussians, cam, sh_degree=sh_degree)
        images.append(out.image)
        alphas.append(out.alpha[..., None])
    return torch.stack(images), torch.stack(alphas), {}


def gsplat_rasterization() -> Rasterize:
    """gsplat's ``rasterization()``, its CUDA extension loaded (built on first use)."""
    import gsplat

    if gsplat.__version__ != GSPLAT:
        raise RuntimeError(f"gsplat {gsplat.__version__} found, the peer is gsplat {GSPLAT}")
    return gsplat.rasterization


def build() -> dict:
    """Build (or load) gsplat's CUDA extension (``MAX_JOBS`` compilers at once, for ``TORCH_CUDA_ARCH_LIST``, into
    ``TORCH_EXTENSIONS_DIR``, as torch's cpp_extension reads them): seconds taken and whether it loaded."""
    tic = time.perf_counter()
    from gsplat.cuda._backend import _C

    return {
        "gsplat": GSPLAT,
        "seconds": time.perf_counter() - tic,
        "settings": {k: os.environ.get(k) for k in ("MAX_JOBS", "TORCH_CUDA_ARCH_LIST", "TORCH_EXTENSIONS_DIR")},
        "expected": "the extension loads",
        "ok": _C is not None,
    }


def _loss(images: torch.Tensor, photos: list[torch.Tensor], lambda_dssim: float, launch) -> torch.Tensor:
    """The step's loss of rendered ``images`` [C, H, W, 3] against ``photos``, summed over cameras: the fused
    kernels behind ``launch`` on whole images (each one region with its halo), or the torch spec."""
    if launch is None:
        return sum(photometric_loss(im, gt, lambda_dssim) for im, gt in zip(images, photos))
    h, w = images.shape[1:3]
    canvases = [window_with_halo(im, 0, h, 0, w) for im in images]
    truths = [window_with_halo(gt, 0, h, 0, w) for gt in photos]
    owned = [torch.ones(h, w, dtype=torch.bool, device=images.device) for _ in photos]
    return fused_loss(canvases, truths, owned, [h * w] * len(photos), lambda_dssim, launch)[0]


def agreement(theirs: torch.Tensor, ours: torch.Tensor) -> dict:
    """PSNR (dB) between two renders of one camera, and their largest difference."""
    mse = float(((theirs - ours) ** 2).mean())
    psnr = math.inf if mse == 0 else -10.0 * math.log10(mse)
    return {
        "psnr_db": psnr,
        "max_abs_difference": float((theirs - ours).abs().max()),
        "expected": f"PSNR at least {AGREEMENT_DB:g} dB",
        "ok": psnr >= AGREEMENT_DB,
    }


def peer_step(
    rasterize: Rasterize,
    gaussians: Gaussians,
    cameras: list[Camera],
    photos: list[torch.Tensor],
    iterations: int,
    lambda_dssim: float,
    launch=None,
) -> dict:
    """Seconds per training iteration (median over ``iterations`` after a warm-up; CUDA events on a GPU) of
    ``rasterize`` on ``gaussians`` (their fields made leaves of their own) and ``cameras``: its forward, the
    loss ((1 - l) L1 + l D-SSIM, l = ``lambda_dssim``; on the fused kernels behind ``launch``, else the torch
    spec), its backward and torch's Adam (fused on a GPU), as gsplat's own trainer runs them (``packed=False``,
    its default); and, split out, the rasterizer's forward and backward alone (a plain sum as the loss)."""
    leaves = {f: getattr(gaussians, f).detach().clone().requires_grad_(True) for f in TRAINABLE}
    model = Gaussians(**leaves, ids=gaussians.ids)
    cuda = gaussians.means.device.type == "cuda"
    adam = torch.optim.Adam(list(leaves.values()), lr=1e-3, eps=1e-15, fused=cuda)

    def full() -> None:
        images, _, _ = rasterize(**gsplat_inputs(model, cameras), packed=False)
        _loss(images, photos, lambda_dssim, launch).backward()
        adam.step()
        adam.zero_grad(set_to_none=True)

    def raster_only() -> None:
        images, _, _ = rasterize(**gsplat_inputs(model, cameras), packed=False)
        images.sum().backward()
        adam.zero_grad(set_to_none=True)

    return {
        "rasterizer": "gsplat " + GSPLAT if rasterize is not spec_rasterization else "torch spec (stand-in)",
        "seconds_per_iteration": _median_seconds(full, iterations, cuda),
        "rasterize_forward_backward_seconds": _median_seconds(raster_only, iterations, cuda),
    }


def _median_seconds(work: Callable[[], None], iterations: int, cuda: bool) -> float:
    work()  # warm-up
    times = []
    for _ in range(iterations):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            work()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1000.0)
        else:
            tic = time.perf_counter()
            work()
            times.append(time.perf_counter() - tic)
    return sorted(times)[len(times) // 2]
