"""The ``torch`` backend: the executable specification, on CPU or GPU, differentiable end to end."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from grendel_py.data.cameras import Camera
from grendel_py.model.gaussians import Gaussians
from grendel_py.render import batch_projection
from grendel_py.render.composite import composite_tiles
from grendel_py.render.intersect import BatchTiles, PairPieces, TileBins, bin_batch
from grendel_py.render.projection import Splats, project
from partition.tiles import TileGrid

__all__ = ["pairs", "project", "project_batch", "rasterize_batch"]

_SPEC = SimpleNamespace(project=project)
"""The spec's projection, as :mod:`~grendel_py.render.batch_projection` calls it piece by piece."""


def project_batch(
    model: Gaussians, cameras: list[Camera], sh_degree: int, antialiased: bool = False
) -> tuple[Splats, list[int], torch.Tensor]:
    """Project, for every camera of a batch, only the Gaussians it sees: one :class:`Splats` with ``parts[b]``
    rows for camera b, one camera after another (each in model order), and the model row of each splat,
    int32. The rows dropped are exactly those :func:`project` culls, so the pictures and gradients are the
    same, but autograd keeps (and the exchange and binning handle) only visible splats. One host
    synchronisation. For training: the parameters (leaves) get their gradients added into ``.grad`` by the
    backward pass itself, without a gradient-sized temporary (``into_grad`` of
    :func:`~grendel_py.render.batch_projection.project_rows`)."""
    rows, parts = batch_projection.visible_rows(model, cameras, _SPEC, antialiased)
    splats = batch_projection.project_rows(
        model, rows, parts, cameras, sh_degree, _SPEC, into_grad=True, antialiased=antialiased
    )
    return splats, parts, rows[0] if len(rows) == 1 else torch.cat(rows)


def pairs(splats: Splats, parts: list[int], grids: list[TileGrid]) -> PairPieces:
    """The batch's (splat, tile) pairs, listed piece by piece whenever they are used."""
    return PairPieces(splats, parts, grids)


def rasterize_batch(
    splats: Splats, parts: list[int], tiles: BatchTiles, background: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, TileBins]:
    """Bin, sort and composite the splats of a batch (``parts[b]`` rows for camera b, one camera after
    another) over the selected tiles -> (colors [T, P, C], alpha [T, P], bins), tiles in ``tiles.ids`` order."""
    bins = bin_batch(splats, parts, tiles)
    colors, alpha = composite_tiles(
        splats.means2d, splats.conics, splats.opacities, splats.colors, background, bins, tiles
    )
    return colors, alpha, bins
