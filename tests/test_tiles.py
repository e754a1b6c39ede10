"""Tile geometry: counts, rectangles, round trips between images and per-tile values, masks."""

from __future__ import annotations

import pytest
import torch

from partition.tiles import TileGrid


def test_counts_and_partial_tiles() -> None:
    g = TileGrid(37, 20)
    assert (g.nx, g.ny, g.n_tiles) == (3, 2, 6)
    assert g.pixel_mask(torch.tensor([5])).sum() == (37 - 32) * (20 - 16)
    x0, y0 = g.tile_origins(torch.tensor([0, 4, 5]))
    assert x0.tolist() == [0, 16, 32] and y0.tolist() == [0, 16, 16]


def test_image_tile_round_trip_and_subsets() -> None:
    g = TileGrid(37, 20)
    image = torch.rand(20, 37, 3)
    tiles = g.image_to_tiles(image)
    assert tiles.shape == (6, 256, 3)
    assert torch.equal(g.tiles_to_image(tiles), image)
    subset = torch.tensor([4, 1])
    part = g.tiles_to_image(g.image_to_tiles(image, subset), subset, fill=-1.0)
    mask = g.pixel_mask(subset)
    assert torch.equal(part[mask], image[mask]) and (part[~mask] == -1).all()


def test_rect_tiles() -> None:
    g = TileGrid(100, 50)
    assert g.rect_tiles(1, 0, 3, 2).tolist() == [1, 2, 8, 9]
    assert g.rect_tiles(2, 2, 2, 3).numel() == 0
    with pytest.raises(ValueError):
        g.rect_tiles(0, 0, 8, 1)


def test_tiles_to_image_is_differentiable() -> None:
    g = TileGrid(20, 18)
    values = torch.rand(2, 256, 1, requires_grad=True)
    g.tiles_to_image(values, torch.tensor([0, 3])).sum().backward()
    inside = g.image_to_tiles(torch.ones(18, 20, 1), torch.tensor([0, 3]))
    assert torch.equal(values.grad, inside)
