"""Projection of 3D Gaussians into a pinhole camera: the spec of the projection kernel.

Per Gaussian: camera-space mean, EWA 2D covariance ``J W Sigma W^T J^T + 0.3 I`` (0.3 px dilation, tangent
clamped to 1.3x the field of view as in gsplat), its inverse (the conic), an opacity-aware pixel extent and the
view-dependent colour from SH (+0.5, clamped at 0 as in INRIA 3DGS). Differentiable by autograd in every
float input; extents are integers and carry no gradient.

``antialiased``: the Mip-Splatting 2D filter as gsplat's ``antialiased`` mode: the dilation is kept and the
splat's opacity is multiplied by ``sqrt(det(cov2d) / det(cov2d + 0.3 I))``, so a Gaussian smaller than a pixel
keeps its total contribution instead of growing to a pixel-sized blob (no aliasing when the view zooms out).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from grendel_py.data.cameras import Camera
from grendel_py.model.geometry import covariances_3d
from grendel_py.render.sh import eval_sh

DILATION = 0.3
ALPHA_MIN = 1.0 / 255.0


def reaches_image(extents: torch.Tensor) -> torch.Tensor:
    """Bool [N] of pixel extents [N, 2]: splats that reach at least one pixel of the image (both extents > 0;
    :func:`project` gives 0 to the others)."""
    return (extents > 0).all(dim=1)


def pixel_radii(extents: torch.Tensor) -> torch.Tensor:
    """Float32 [N] of pixel extents [N, 2]: each splat's radius in pixels, the larger of its extents; 0
    exactly where :func:`reaches_image` is false (:func:`project` gives 0 to both extents or to neither)."""
    return extents.amax(dim=1).float()


@dataclass
class Splats:
    """Projected Gaussians of one camera, one row per Gaussian.

    means2d [N, 2] pixels; conics [N, 3] (a, b, c) of the inverse 2D covariance [[a, b], [b, c]]; depths [N]
    camera z; opacities [N]; colors [N, C]; extents [N, 2] int32 half sizes (x, y) in pixels of the box where
    alpha can reach 1/255, zero for culled splats; ids [N] int64 global Gaussian ids.
    """

    means2d: torch.Tensor
    conics: torch.Tensor
    depths: torch.Tensor
    opacities: torch.Tensor
    colors: torch.Tensor
    extents: torch.Tensor
    ids: torch.Tensor

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    @property
    def visible(self) -> torch.Tensor:
        """Bool [N]: splats that reach at least one pixel of the image."""
        return reaches_image(self.extents)

    def select(self, index: torch.Tensor) -> Splats:
        """The splats at ``index`` (bool mask or integer indices)."""
        return Splats(**{f.name: getattr(self, f.name)[index] for f in fields(self)})

    @staticmethod
    def cat(parts: list[Splats]) -> Splats:
        """The rows of ``parts`` one after another (differentiable, like ``torch.cat``)."""
        return Splats(**{f.name: torch.cat([getattr(p, f.name) for p in parts]) for f in fields(Splats)})


def project(
    means: torch.Tensor,
    quats: torch.Tensor,
    scales: torch.Tensor,
    opacities: torch.Tensor,
    sh: torch.Tensor,
    sh_degree: int,
    camera: Camera,
    ids: torch.Tensor,
    near_plane: float = 0.01,
    antialiased: bool = False,
) -> Splats:
    """Project N Gaussians (means [N,3], quats [N,4], scales [N,3], opacities [N] in (0,1), SH [N,K,3]) into
    ``camera``. Splats behind ``near_plane``, with a degenerate covariance, too faint to reach alpha 1/255 or
    whose box misses the image get extent 0 (their other values are finite but meaningless). ``antialiased``:
    opacities compensated for the dilation (see the module)."""
    dtype, device = means.dtype, means.device
    R = camera.R.to(dtype=dtype, device=device)
    t = camera.t.to(dtype=dtype, device=device)
    p = means @ R.T + t
    x, y, z = p.unbind(-1)
    in_front = z > near_plane
    zs = torch.where(in_front, z, torch.ones_like(z))  # keeps culled rows finite

    fx, fy, cx, cy = camera.fx, camera.fy, camera.cx, camera.cy
    tan_fovx, tan_fovy = 0.5 * camera.width / fx, 0.5 * camera.height / fy
    lim_x_pos, lim_x_neg = (camera.width - cx) / fx + 0.3 * tan_fovx, cx / fx + 0.3 * tan_fovx
    lim_y_pos, lim_y_neg = (camera.height - cy) / fy + 0.3 * tan_fovy, cy / fy + 0.3 * tan_fovy
    tx = zs * torch.clamp(x / zs, -lim_x_neg, lim_x_pos)
    ty = zs * torch.clamp(y / zs, -lim_y_neg, lim_y_pos)
    zero = torch.zeros_like(zs)
    J = torch.stack([fx / zs, zero, -fx * tx / (zs * zs), zero, fy / zs, -fy * ty / (zs * zs)], dim=-1).reshape(
        -1, 2, 3
    )

    cov_cam = R @ covariances_3d(quats, scales) @ R.T
    cov2d = J @ cov_cam @ J.transpose(1, 2)
    a0, b, c0 = cov2d[:, 0, 0], cov2d[:, 0, 1], cov2d[:, 1, 1]
    a = a0 + DILATION
    c = c0 + DILATION
    det = a * c - b * b
    ok_det = det > 0
    det_s = torch.where(ok_det, det, torch.ones_like(det))
    conics = torch.stack([c / det_s, -b / det_s, a / det_s], dim=-1)
    if antialiased:
        opacities = opacities * torch.sqrt(torch.clamp_min((a0 * c0 - b * b) / det_s, 0.0))

    means2d = torch.stack([fx * x / zs + cx, fy * y / zs + cy], dim=-1)
    extents = _extents(means2d.detach(), a.detach(), c.detach(), opacities.detach(), camera)
    keep = in_front & ok_det
    extents = torch.where(keep[:, None], extents, torch.zeros_like(extents))

    dirs = torch.nn.functional.normalize(means - camera.center.to(dtype=dtype, device=device), dim=-1)
    colors = torch.clamp_min(eval_sh(sh_degree, sh, dirs) + 0.5, 0.0)
    return Splats(means2d, conics, zs, opacities, colors, extents, ids)


def _extents(
    means2d: torch.Tensor, var_x: torch.Tensor, var_y: torch.Tensor, opacities: torch.Tensor, camera: Camera
) -> torch.Tensor:
    """Integer half sizes [N, 2] of the box holding the ellipse where opacity * G >= 1/255, 0 if off-image.

    The ellipse {d : d^T Sigma^-1 d <= 2 ln(255 o)} has half widths sqrt(2 ln(255 o) Sigma_xx) along x
    (and likewise y); they are rounded up so the box is conservative.
    """
    k = 2.0 * torch.log(torch.clamp_min(opacities / ALPHA_MIN, 1.0))
    rx = torch.ceil(torch.sqrt(k * var_x.clamp_min(0.0)))
    ry = torch.ceil(torch.sqrt(k * var_y.clamp_min(0.0)))
    ext = torch.stack([rx, ry], dim=-1).nan_to_num(0.0, posinf=2.0**24).clamp(max=2.0**24)
    x_lo, x_hi, y_lo, y_hi = pixel_box(means2d, ext, camera.width, camera.height)
    ok = (x_lo <= x_hi) & (y_lo <= y_hi) & (rx > 0) & (ry > 0)
    return torch.where(ok[:, None], ext, torch.zeros_like(ext)).to(torch.int32)


def pixel_box(means2d: torch.Tensor, extents: torch.Tensor, width: int, height: int) -> tuple[torch.Tensor, ...]:
    """Inclusive pixel index ranges (x_lo, x_hi, y_lo, y_hi), int64 [N] each, clipped to the image, of the pixels
    whose centres (i + 0.5) lie within ``extents`` of ``means2d``; empty where lo > hi."""
    mx, my = means2d.detach().double().unbind(-1)
    ex, ey = extents.double().unbind(-1)
    big = float(2**40)
    x_lo = torch.ceil(mx - ex - 0.5).clamp(0, big)
    x_hi = torch.floor(mx + ex - 0.5).clamp(-1, width - 1)
    y_lo = torch.ceil(my - ey - 0.5).clamp(0, big)
    y_hi = torch.floor(my + ey - 0.5).clamp(-1, height - 1)
    return tuple(v.nan_to_num(-1.0 if i % 2 else big).long() for i, v in enumerate((x_lo, x_hi, y_lo, y_hi)))
