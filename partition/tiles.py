"""Tile geometry of a camera image: the unit of work the renderer and the load balancer share.

An image of ``width`` x ``height`` pixels is cut into ``tile_size`` x ``tile_size`` tiles numbered row-major
(tile id = ty * nx + tx). Border tiles may be partial; their pixels outside the image are computed by the
renderer and dropped when tiles are assembled into an image. Per-tile values are stored as
``[n_tiles, tile_size * tile_size, C]`` with pixels row-major inside each tile.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

TILE_SIZE = 16


@dataclass(frozen=True)
class TileGrid:
    """The tiles of one ``width`` x ``height`` image."""

    width: int
    height: int
    tile_size: int = TILE_SIZE

    def __post_init__(self) -> None:
        if self.width <= 0 or self.height <= 0 or self.tile_size <= 0:
            raise ValueError(f"TileGrid needs positive sizes, got {self.width}x{self.height} / {self.tile_size}")

    @property
    def nx(self) -> int:
        return -(-self.width // self.tile_size)

    @property
    def ny(self) -> int:
        return -(-self.height // self.tile_size)

    @property
    def n_tiles(self) -> int:
        return self.nx * self.ny

    def all_tiles(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """Every tile id, int64 [n_tiles]."""
        return torch.arange(self.n_tiles, device=device)

    def rect_tiles(self, tx0: int, ty0: int, tx1: int, ty1: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """Ids of the tiles in the half-open tile rectangle [tx0, tx1) x [ty0, ty1), row-major, int64."""
        if not (0 <= tx0 <= tx1 <= self.nx and 0 <= ty0 <= ty1 <= self.ny):
            raise ValueError(f"tile rectangle [{tx0},{tx1})x[{ty0},{ty1}) is outside the {self.nx}x{self.ny} grid")
        ty = torch.arange(ty0, ty1, device=device)
        tx = torch.arange(tx0, tx1, device=device)
        return (ty[:, None] * self.nx + tx[None, :]).reshape(-1)

    def tile_origins(self, tile_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pixel coordinates (x0, y0) of the top-left pixel of each tile, int64 [T] each."""
        return (tile_ids % self.nx) * self.tile_size, (tile_ids // self.nx) * self.tile_size

    def image_to_tiles(self, image: torch.Tensor, tile_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Cut an image [H, W, C] into per-tile values [T, tile_size**2, C] (pixels outside the image are 0)."""
        h, w, c = image.shape
        if (h, w) != (self.height, self.width):
            raise ValueError(f"image is {w}x{h}, the tile grid {self.width}x{self.height}")
        ts = self.tile_size
        padded = torch.nn.functional.pad(image, (0, 0, 0, self.nx * ts - w, 0, self.ny * ts - h))
        tiles = padded.reshape(self.ny, ts, self.nx, ts, c).permute(0, 2, 1, 3, 4).reshape(self.n_tiles, ts * ts, c)
        return tiles if tile_ids is None else tiles[tile_ids]

    def tiles_to_image(
        self, values: torch.Tensor, tile_ids: torch.Tensor | None = None, fill: float = 0.0
    ) -> torch.Tensor:
        """Assemble per-tile values [T, tile_size**2, C] into an image [H, W, C]; tiles not given get ``fill``.

        Differentiable with respect to ``values``.
        """
        ts = self.tile_size
        c = values.shape[-1]
        if tile_ids is None:
            canvas = values
        else:
            canvas = values.new_full((self.n_tiles, ts * ts, c), fill).index_copy(0, tile_ids, values)
        image = (
            canvas.reshape(self.ny, self.nx, ts, ts, c).permute(0, 2, 1, 3, 4).reshape(self.ny * ts, self.nx * ts, c)
        )
        return image[: self.height, : self.width]

    def pixel_mask(self, tile_ids: torch.Tensor) -> torch.Tensor:
        """Bool [H, W]: which pixels the given tiles cover."""
        ones = torch.ones(tile_ids.shape[0], self.tile_size**2, 1, dtype=torch.bool, device=tile_ids.device)
        return self.tiles_to_image(ones, tile_ids, fill=False)[..., 0]
