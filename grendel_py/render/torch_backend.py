"""The ``torch`` backend: the executable specification, on CPU or GPU, differentiable end to end."""

from __future__ import annotations

import torch

from grendel_py.render.composite import composite_tiles
from grendel_py.render.intersect import TileBins, bin_splats
from grendel_py.render.projection import Splats, project
from partition.tiles import TileGrid

__all__ = ["project", "rasterize_tiles"]


def rasterize_tiles(
    splats: Splats, grid: TileGrid, background: torch.Tensor, tile_ids: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, TileBins]:
    """Bin, sort and composite ``splats`` over the selected tiles -> (colors [T, P, C], alpha [T, P], bins)."""
    bins = bin_splats(splats, grid, tile_ids)
    colors, alpha = composite_tiles(
        splats.means2d, splats.conics, splats.opacities, splats.colors, background, bins, grid
    )
    return colors, alpha, bins
