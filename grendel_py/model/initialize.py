"""The model a run starts from: the scene's 3D points, or random points in the cameras' region."""

from __future__ import annotations

import torch

from grendel_py.config import ModelConfig
from grendel_py.data.cameras import Camera
from grendel_py.data.points import PointCloud
from grendel_py.errors import InputError
from grendel_py.model.gaussians import Gaussians


def initial_gaussians(
    cfg: ModelConfig, points: PointCloud, cameras: list[Camera], extent: float, seed: int
) -> Gaussians:
    """Gaussians from ``points`` (``cfg.init == "points"``; InputError for fewer than 2 points) or
    ``cfg.random_points`` uniform in the cube of half side extent / 1.1 around the mean centre of ``cameras``
    (``"random"``), SH degree ``cfg.sh_degree``."""
    if cfg.init == "points":
        if points.xyz is None:
            raise InputError(points.source, "scene has no 3D points; use model.init=random")
        if len(points.xyz) < 2:
            problem = "only 1 3D point; at least 2 are needed to initialise Gaussians (or use model.init=random)"
            raise InputError(points.source, problem)
        return Gaussians.from_points(points.xyz, points.rgb, cfg.sh_degree, cfg.init_opacity)
    centers = torch.stack([c.center for c in cameras]).float()
    mid, half = centers.mean(0), extent / 1.1
    gen = torch.Generator().manual_seed(seed)
    return Gaussians.random_in_box(
        cfg.random_points, (mid - half).tolist(), (mid + half).tolist(), cfg.sh_degree, gen, cfg.init_opacity
    )
