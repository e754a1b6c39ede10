"""The ``cupy`` backend: the CUDA kernels of ``cuda/`` (compiled by CuPy) behind the torch spec's interface.

Tensors must live on a CUDA device and be float32; CuPy is imported on first use, so this module imports on
machines without it.
"""

from __future__ import annotations

import torch

from grendel_py.data.cameras import Camera
from grendel_py.model.gaussians import Gaussians
from grendel_py.render.cuda_kernels import cupy_kernels
from grendel_py.render.intersect import BatchTiles, TileBins
from grendel_py.render.kernel_backend import KernelBackend, KernelPairs
from grendel_py.render.projection import Splats
from partition.tiles import TileGrid

__all__ = ["pairs", "project", "project_batch", "rasterize_batch"]


def _backend(device: torch.device) -> KernelBackend:
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return KernelBackend(cupy_kernels(device).launch)


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
    """As :func:`grendel_py.render.projection.project`, on the GPU."""
    return _backend(means.device).project(
        means, quats, scales, opacities, sh, sh_degree, camera, ids, near_plane, antialiased
    )


def project_batch(
    model: Gaussians, cameras: list[Camera], sh_degree: int, antialiased: bool = False
) -> tuple[Splats, list[int], torch.Tensor]:
    """As :func:`grendel_py.render.torch_backend.project_batch`, on the GPU."""
    return _backend(model.means.device).project_batch(model, cameras, sh_degree, antialiased)


def pairs(splats: Splats, parts: list[int], grids: list[TileGrid]) -> KernelPairs:
    """As :func:`grendel_py.render.torch_backend.pairs`, on the GPU."""
    return _backend(splats.means2d.device).pairs(splats, parts, grids)


def rasterize_batch(
    splats: Splats, parts: list[int], tiles: BatchTiles, background: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, TileBins]:
    """As :func:`grendel_py.render.torch_backend.rasterize_batch`, on the GPU."""
    return _backend(splats.means2d.device).rasterize_batch(splats, parts, tiles, background)
