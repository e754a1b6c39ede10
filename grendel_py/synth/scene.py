"""The analytic scene of a synthetic dataset: spheres, axis-aligned boxes and a ground plane (world z up), their
materials, the sky, and the kinds of texture and hit.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# Texture kinds of a material.
CHECKER, STRIPES, NOISE, FACADE, STREETS = range(5)
# Hit kinds returned by the caster.
MISS, GROUND, SPHERE, BOX = range(4)

LIGHT = (0.45, 0.3, 0.84)  # direction towards the light (normalised where used)
AMBIENT = 0.35
DIFFUSE = 0.65
DTYPE = torch.float32  # ray casting precision; projections of points are float64
PARK_FRACTION = 0.12  # share of city blocks left as parks (no buildings, grass ground)


@dataclass(frozen=True)
class Materials:
    """Per-material texture parameters: ``kind`` [M] int64, colours ``a``, ``b`` [M, 3] in [0, 1], ``scale`` [M]."""

    kind: torch.Tensor
    a: torch.Tensor
    b: torch.Tensor
    scale: torch.Tensor


@dataclass(frozen=True)
class Streets:
    """A square street grid: ``n`` x ``n`` blocks of pitch ``pitch`` starting at ``origin`` (x and y), roads
    ``road`` wide along the low side of each block and around the whole grid."""

    origin: float
    pitch: float
    road: float
    n: int

    @property
    def end(self) -> float:
        """The far edge of the grid (including its last road)."""
        return self.origin + self.n * self.pitch + self.road


@dataclass(frozen=True)
class Scene:
    """An analytic scene in world coordinates (z up).

    Spheres: ``sphere_center`` [S, 3], ``sphere_radius`` [S]; boxes: ``box_lo``, ``box_hi`` [B, 3]; each with a
    material index (``*_material`` [S] / [B] int64). The ground is the plane ``z = 0`` limited to a disc of
    radius ``ground_half`` (``ground_round``) or the square ``|x|, |y| <= ground_half``. Rays that miss see
    ``sky`` (horizon colour, zenith colour) blended by the ray's elevation. ``lattice`` [1024] holds the
    seeded value-noise values in [0, 1). ``extent`` is the scene's size across (world units).
    """

    sphere_center: torch.Tensor
    sphere_radius: torch.Tensor
    sphere_material: torch.Tensor
    box_lo: torch.Tensor
    box_hi: torch.Tensor
    box_material: torch.Tensor
    ground_half: float
    ground_round: bool
    ground_material: int
    materials: Materials
    lattice: torch.Tensor
    sky: tuple[tuple[float, float, float], tuple[float, float, float]]
    extent: float
    streets: Streets | None = None
