"""The Gaussian model: a dataclass of per-Gaussian tensors, and its initialisers.

Conventions follow the INRIA 3DGS code: scales are stored as logs, opacities as logits, rotations as
unnormalised quaternions (w, x, y, z), colours as spherical-harmonic coefficients split into the DC band
``sh0`` and the higher bands ``shN`` (coefficient-major: [N, K, 3] with K = (d + 1)^2 for degree d).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields

import numpy as np
import torch
from scipy.spatial import cKDTree

C0 = 0.28209479177387814
"""The degree-0 real spherical harmonic, Y_0^0 = 1 / (2 sqrt(pi)); colour = sh0 * C0 + 0.5."""

MAX_SH_DEGREE = 3
MIN_DIST2 = 1e-7
"""Lower clamp of the mean squared neighbour distance, as in INRIA's ``distCUDA2`` initialisation."""

TRAINABLE = ("means", "log_scales", "quats", "opacity_logits", "sh0", "shN")
"""The float fields of a model: what the optimiser trains, moves and checkpoints with each Gaussian."""


def num_sh_rest(sh_degree: int) -> int:
    """Number of higher-band SH coefficients per channel for ``sh_degree``: (d + 1)^2 - 1."""
    return (sh_degree + 1) ** 2 - 1


@dataclass
class Gaussians:
    """N Gaussians, all tensors on one device, float32 except ``ids``.

    means [N, 3]; log_scales [N, 3]; quats [N, 4] (w, x, y, z, unnormalised); opacity_logits [N];
    sh0 [N, 1, 3] (DC coefficient); shN [N, (d + 1)^2 - 1, 3] (higher bands, 0 rows for d = 0);
    ids [N] int64, unique global ids that give a deterministic order across ranks.
    """

    means: torch.Tensor
    log_scales: torch.Tensor
    quats: torch.Tensor
    opacity_logits: torch.Tensor
    sh0: torch.Tensor
    shN: torch.Tensor
    ids: torch.Tensor

    @property
    def sh_degree(self) -> int:
        """SH degree d implied by ``shN`` (ValueError if its row count is not (d + 1)^2 - 1)."""
        k = self.shN.shape[1] + 1
        d = math.isqrt(k) - 1
        if (d + 1) ** 2 != k:
            raise ValueError(f"shN: {k - 1} coefficient rows is not (d + 1)^2 - 1 for any degree d")
        return d

    @property
    def device(self) -> torch.device:
        return self.means.device

    def __len__(self) -> int:
        return int(self.means.shape[0])

    def scales(self) -> torch.Tensor:
        """[N, 3] scales, exp(log_scales)."""
        return torch.exp(self.log_scales)

    def opacities(self) -> torch.Tensor:
        """[N] opacities in (0, 1), sigmoid(opacity_logits)."""
        return torch.sigmoid(self.opacity_logits)

    def rotations(self) -> torch.Tensor:
        """[N, 4] unit quaternions (w, x, y, z)."""
        return torch.nn.functional.normalize(self.quats, dim=-1)

    def sh(self) -> torch.Tensor:
        """[N, (d + 1)^2, 3] all SH coefficients, DC first."""
        return torch.cat([self.sh0, self.shN], dim=1)

    def to(self, device: torch.device | str) -> Gaussians:
        """A copy with every tensor on ``device`` (tensors already there are shared, not copied)."""
        return Gaussians(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})

    def select(self, index: torch.Tensor | slice) -> Gaussians:
        """The Gaussians picked by ``index``: a bool mask [N], integer indices, or a slice."""
        return Gaussians(**{f.name: getattr(self, f.name)[index] for f in fields(self)})

    @classmethod
    def cat(cls, parts: Sequence[Gaussians]) -> Gaussians:
        """Concatenate along N; all parts must share the SH degree and device."""
        if not parts:
            raise ValueError("Gaussians.cat needs at least one part")
        degrees = {p.sh_degree for p in parts}
        if len(degrees) != 1:
            raise ValueError(f"Gaussians.cat: parts have different SH degrees {sorted(degrees)}")
        return cls(**{f.name: torch.cat([getattr(p, f.name) for p in parts]) for f in fields(cls)})

    def validate(self) -> None:
        """Check shapes, dtypes, device, finiteness and id uniqueness; ValueError naming the field."""
        n = len(self)
        rest = self.shN.shape[1] if self.shN.dim() == 3 else -1
        expected = {
            "means": (n, 3),
            "log_scales": (n, 3),
            "quats": (n, 4),
            "opacity_logits": (n,),
            "sh0": (n, 1, 3),
            "shN": (n, rest, 3),
            "ids": (n,),
        }
        for name, shape in expected.items():
            _check_tensor(name, getattr(self, name), shape, self.device)
        if not 0 <= self.sh_degree <= MAX_SH_DEGREE:
            raise ValueError(f"shN: SH degree {self.sh_degree} is not in 0..{MAX_SH_DEGREE}")
        if torch.unique(self.ids).numel() != n:
            raise ValueError("ids: not unique")

    @classmethod
    def from_points(
        cls,
        xyz: np.ndarray | torch.Tensor,
        rgb: np.ndarray | torch.Tensor | None,
        sh_degree: int,
        init_opacity: float = 0.1,
    ) -> Gaussians:
        """Isotropic Gaussians at the points ``xyz`` [P, 3] (P >= 2), coloured by ``rgb`` uint8 [P, 3].

        As in INRIA 3DGS: sh0 = (rgb / 255 - 0.5) / C0 (grey when ``rgb`` is None), shN = 0,
        scale = sqrt(mean squared distance to the 3 nearest other points, clamped to >= 1e-7),
        identity rotation, opacity ``init_opacity``; ids = arange(P). Tensors are on the CPU.
        """
        points = torch.as_tensor(xyz).detach().cpu().to(torch.float32)
        if points.dim() != 2 or points.shape[1] != 3:
            raise ValueError(f"xyz: expected shape [P, 3], got {tuple(points.shape)}")
        p = points.shape[0]
        if p < 2:
            raise ValueError(f"xyz: need at least 2 points to initialise Gaussians, got {p}")
        if not bool(torch.isfinite(points).all()):
            raise ValueError("xyz: contains non-finite values")
        if not 0 <= sh_degree <= MAX_SH_DEGREE:
            raise ValueError(f"sh_degree: expected 0..{MAX_SH_DEGREE}, got {sh_degree}")
        if not 0.0 < init_opacity < 1.0:
            raise ValueError(f"init_opacity: expected a value in (0, 1), got {init_opacity}")
        log_scale = 0.5 * torch.log(nearest_neighbour_dist2(points).clamp_min(MIN_DIST2))
        return cls(
            means=points.clone(),
            log_scales=log_scale[:, None].repeat(1, 3),
            quats=torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=torch.float32).repeat(p, 1),
            opacity_logits=torch.full((p,), math.log(init_opacity / (1.0 - init_opacity)), dtype=torch.float32),
            sh0=_rgb_to_sh0(rgb, p),
            shN=torch.zeros((p, num_sh_rest(sh_degree), 3), dtype=torch.float32),
            ids=torch.arange(p, dtype=torch.int64),
        )

    @classmethod
    def random_in_box(
        cls,
        n: int,
        lo: Sequence[float],
        hi: Sequence[float],
        sh_degree: int,
        generator: torch.Generator,
        init_opacity: float = 0.1,
    ) -> Gaussians:
        """``n`` Gaussians uniform in the box [lo, hi] (3 floats each, lo <= hi) with uniform random
        colours; scales, rotations and opacities as :meth:`from_points`. Deterministic given ``generator``."""
        lo_t = torch.as_tensor(lo, dtype=torch.float32)
        hi_t = torch.as_tensor(hi, dtype=torch.float32)
        if lo_t.shape != (3,) or hi_t.shape != (3,) or not bool((lo_t <= hi_t).all()):
            raise ValueError(f"box: expected 3 floats each with lo <= hi, got lo={lo}, hi={hi}")
        xyz = lo_t + (hi_t - lo_t) * torch.rand((n, 3), generator=generator, dtype=torch.float32)
        rgb = torch.randint(0, 256, (n, 3), generator=generator, dtype=torch.uint8)
        return cls.from_points(xyz, rgb, sh_degree, init_opacity)


def nearest_neighbour_dist2(points: torch.Tensor) -> torch.Tensor:
    """[P] float32 mean squared distance from each point of ``points`` [P, 3] (P >= 2) to its 3 nearest
    other points (fewer when P <= 3), exact (k-d tree in float64). Duplicate points give 0."""
    xyz = points.numpy().astype(np.float64)
    k = min(4, xyz.shape[0])
    dist, _ = cKDTree(xyz).query(xyz, k=k)
    # Column 0 is a distance-0 match (the point itself or an exact duplicate); either way the other
    # columns are the distances to the k - 1 nearest other points.
    return torch.from_numpy(np.mean(dist[:, 1:] ** 2, axis=1)).to(torch.float32)


def sh0_to_rgb(sh0: torch.Tensor) -> torch.Tensor:
    """[N, 3] the view-independent colour ``0.5 + C0 * f_dc`` of DC coefficients ``sh0`` [N, 1, 3] (not
    clamped), what viewers and compact formats show."""
    return 0.5 + C0 * sh0.reshape(-1, 3)


def _rgb_to_sh0(rgb: np.ndarray | torch.Tensor | None, p: int) -> torch.Tensor:
    """[P, 1, 3] DC coefficients for uint8 colours ``rgb`` [P, 3] (grey 0.5 when None)."""
    if rgb is None:
        return torch.zeros((p, 1, 3), dtype=torch.float32)
    colours = torch.as_tensor(rgb).detach().cpu()
    if colours.shape != (p, 3) or colours.dtype != torch.uint8:
        raise ValueError(f"rgb: expected uint8 [{p}, 3], got {colours.dtype} {tuple(colours.shape)}")
    sh0 = (colours.to(torch.float64) / 255.0 - 0.5) / C0
    return sh0.to(torch.float32)[:, None, :]


def _check_tensor(name: str, t: torch.Tensor, shape: tuple[int, ...], device: torch.device) -> None:
    """ValueError naming ``name`` unless ``t`` has ``shape``, the field's dtype, ``device`` and finite values."""
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if tuple(t.shape) != shape:
        raise ValueError(f"{name}: expected shape {list(shape)}, got {list(t.shape)}")
    dtype = torch.float32 if name in TRAINABLE else torch.int64
    if t.dtype != dtype:
        raise ValueError(f"{name}: expected dtype {dtype}, got {t.dtype}")
    if t.device != device:
        raise ValueError(f"{name}: on device {t.device}, expected {device} (the device of means)")
    if name in TRAINABLE and not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name}: contains non-finite values")
