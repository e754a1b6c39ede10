"""What a render backend offers: the two halves of the renderer (projection, also of a whole batch, and
rasterization), which the distributed engine runs on
different ranks. The ``torch`` and ``cupy`` modules of :data:`grendel_py.render.BACKENDS` are renderers, and so
is any object with these two methods (a :class:`~grendel_py.render.kernel_backend.KernelBackend` with another
kernel launcher: the tests run the kernels' path on the CPU through one)."""

from __future__ import annotations

from typing import Protocol

import torch

from grendel_py.data.cameras import Camera
from grendel_py.model.gaussians import Gaussians
from grendel_py.render.intersect import BatchTiles, TileBins
from grendel_py.render.projection import Splats
from partition.tiles import TileGrid


class Pairs(Protocol):
    """The (splat, tile) pairs of a batch's splats: the tiles each splat's ellipse reaches
    (:class:`~grendel_py.render.intersect.PairPieces` lists them; the kernels visit them)."""

    def tile_counts(self) -> torch.Tensor:
        """How many splats reach each batch tile, int64 [sum of the cameras' n_tiles]."""
        ...

    def reach(self, owners: torch.Tensor, world_size: int) -> torch.Tensor:
        """bool [world_size, n]: row q true at the splats that reach a batch tile ``owners`` (int64) gives to q."""
        ...


class Renderer(Protocol):
    def project(
        self,
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
        """As :func:`grendel_py.render.projection.project`."""
        ...

    def project_batch(
        self, model: Gaussians, cameras: list[Camera], sh_degree: int, antialiased: bool = False
    ) -> tuple[Splats, list[int], torch.Tensor]:
        """As :func:`grendel_py.render.torch_backend.project_batch`."""
        ...

    def pairs(self, splats: Splats, parts: list[int], grids: list[TileGrid]) -> Pairs:
        """The (splat, tile) pairs of a batch's splats (``parts[b]`` rows for camera b over ``grids[b]``)."""
        ...

    def rasterize_batch(
        self, splats: Splats, parts: list[int], tiles: BatchTiles, background: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, TileBins]:
        """As :func:`grendel_py.render.torch_backend.rasterize_batch`."""
        ...
