"""The ``torch`` backend: the executable specification, on CPU or GPU, differentiable end to end."""

from __future__ import annotations

import torch

from grendel_py.render.composite import composite_tiles
from grendel_py.render.intersect import BatchTiles, TileBins, bin_batch
from grendel_py.render.projection import Splats, project

__all__ = ["project", "rasterize_batch"]


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
