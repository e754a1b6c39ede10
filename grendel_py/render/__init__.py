"""The renderer's front door: one interface, backends picked from a small table.

``render`` draws a :class:`~grendel_py.model.gaussians.Gaussians` model from a camera; ``project`` and
``rasterize`` are its two halves, which the distributed engine runs on different ranks (projection on the
owner of the Gaussians, rasterization on the owner of the tiles). Backends: ``torch`` (the spec, CPU or GPU)
and ``cupy`` (the CUDA kernels of ``cuda/``, GPU only); :func:`resolve_backend` turns the config's ``auto``
into one of them.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

import torch

from grendel_py.data.cameras import Camera
from grendel_py.errors import InputError
from grendel_py.render import batch_projection, cupy_backend, torch_backend
from grendel_py.render.batch_projection import project_rows
from grendel_py.render.interface import Renderer
from grendel_py.render.intersect import BatchTiles, TileBins
from grendel_py.render.projection import Splats
from partition.tiles import TileGrid

BACKENDS: dict[str, Renderer] = {"torch": torch_backend, "cupy": cupy_backend}


def resolve_backend(name: str, device: torch.device) -> str:
    """The backend that renders tensors on ``device`` for the config value ``name`` (torch, cupy or auto):
    ``auto`` is cupy where the device is a GPU and CuPy is installed, else torch. InputError for cupy off a GPU."""
    has_cupy = importlib.util.find_spec("cupy") is not None
    if name == "auto":
        return "cupy" if device.type == "cuda" and has_cupy else "torch"
    if name == "cupy" and device.type != "cuda":
        raise InputError(
            None,
            f"render.backend=cupy renders CUDA tensors, but this run keeps its model on {device} (use torch or auto)",
        )
    if name == "cupy" and not has_cupy:
        raise InputError(
            None, "render.backend=cupy needs CuPy: pip install 'grendel_py[cuda]' (CUDA 13) or 'grendel_py[cuda12]'"
        )
    get_backend(name)
    return name


def get_backend(name: str | Renderer) -> Renderer:
    """The backend called ``name`` (a :class:`~grendel_py.render.interface.Renderer` is returned as it is)."""
    if not isinstance(name, str):
        return name
    if name not in BACKENDS:
        raise ValueError(f"unknown render backend {name!r}; choose from {sorted(BACKENDS)}")
    return BACKENDS[name]


@dataclass
class RenderResult:
    """image [H, W, C] and alpha [H, W] (pixels of unrendered tiles hold the background and 0); ``tile_colors``
    [T, P, C] and ``tile_alpha`` [T, P] for the rendered tiles ``bins.tile_ids``; the projected ``splats``;
    ``depth`` [H, W] when asked for: the expected depth of each pixel (see :func:`render`)."""

    image: torch.Tensor
    alpha: torch.Tensor
    tile_colors: torch.Tensor
    tile_alpha: torch.Tensor
    splats: Splats
    bins: TileBins
    depth: torch.Tensor | None = None


def project(
    gaussians,
    camera: Camera,
    sh_degree: int | None = None,
    backend: str | Renderer = "torch",
    antialiased: bool = False,
) -> Splats:
    """Project every Gaussian of ``gaussians`` into ``camera`` (culled ones get extent 0); ``antialiased``:
    opacities compensated for the dilation (:func:`grendel_py.render.projection.project`). When autograd
    records, only the parameters are kept and the backward recomputes the rest in pieces
    (:func:`grendel_py.render.batch_projection.project_rows`)."""
    degree = gaussians.sh_degree if sh_degree is None else sh_degree
    return project_rows(
        gaussians, [None], [len(gaussians)], [camera], degree, get_backend(backend), antialiased=antialiased
    )


def visible_rows(
    gaussians, cameras: list[Camera], backend: str | Renderer = "torch", antialiased: bool = False
) -> tuple[list[torch.Tensor], list[int]]:
    """Per camera, the rows (int64, ascending) of the Gaussians :func:`project` gives a non-zero extent, and
    their numbers (one read to the host for all cameras); no autograd."""
    return batch_projection.visible_rows(gaussians, cameras, get_backend(backend), antialiased)


def project_batch(
    gaussians, cameras: list[Camera], sh_degree: int, backend: str | Renderer = "torch", antialiased: bool = False
) -> tuple[Splats, list[int], torch.Tensor]:
    """Project, for every camera of a batch, only the Gaussians it sees, for training
    (:func:`grendel_py.render.torch_backend.project_batch`): the splats (``parts[b]`` rows for camera b, one
    camera after another), ``parts`` and the model row of each splat."""
    return get_backend(backend).project_batch(gaussians, cameras, sh_degree, antialiased)


def rasterize(
    splats: Splats,
    grid: TileGrid,
    background: torch.Tensor,
    tile_ids: torch.Tensor | None = None,
    backend: str | Renderer = "torch",
) -> tuple[torch.Tensor, torch.Tensor, TileBins]:
    """Composite ``splats`` over the tiles ``tile_ids`` (all when None; any order, repeats allowed) of ``grid``.

    Returns (colors [T, P, C], alpha [T, P], bins) for the sorted distinct tiles ``bins.tile_ids``, with
    P = tile_size**2 pixels per tile, row-major.
    """
    device = splats.means2d.device
    tiles = BatchTiles([grid], [None if tile_ids is None else torch.unique(tile_ids.to(device))], device)
    return rasterize_batch(splats, [len(splats)], tiles, background, backend)


def rasterize_batch(
    splats: Splats, parts: list[int], tiles: BatchTiles, background: torch.Tensor, backend: str | Renderer = "torch"
) -> tuple[torch.Tensor, torch.Tensor, TileBins]:
    """Composite the splats of several cameras at once: ``splats`` holds ``parts[b]`` rows for camera b, one
    camera after another; ``tiles`` selects each camera's tiles; ``background`` is [C], or [B, C] for one per
    camera. Returns (colors [T, P, C], alpha [T, P], bins) for the selected tiles in ``tiles.ids`` order
    (``tiles.split`` cuts them per camera)."""
    if background.dim() == 1:
        return get_backend(backend).rasterize_batch(splats, parts, tiles, background)
    # One background per camera: composite over black, then add (1 - alpha) x the camera's background, which
    # is what the compositor does with one (its gradient reaches the splats through alpha's).
    colors, alpha, bins = get_backend(backend).rasterize_batch(
        splats, parts, tiles, background.new_zeros(background.shape[1])
    )
    per_tile = torch.cat([background[b].expand(n, -1) for b, n in enumerate(tiles.sizes)])  # no upload of the sizes
    return torch.addcmul(colors, (1.0 - alpha)[..., None], per_tile[:, None, :]), alpha, bins


def render(
    gaussians,
    camera: Camera,
    background: torch.Tensor | None = None,
    tile_ids: torch.Tensor | None = None,
    sh_degree: int | None = None,
    backend: str | Renderer = "torch",
    depth: bool = False,
    antialiased: bool = False,
) -> RenderResult:
    """Render ``gaussians`` from ``camera``; only the tiles ``tile_ids`` when given (others show background).
    ``depth``: also the expected depth of each pixel, the splats' camera-space z weighted as their colours are
    (sum of w_i z_i) divided by the pixel's alpha, 0 where nothing is drawn (the depths are composited as a
    second colour pass, so every backend gives it). ``antialiased``: see :func:`project`."""
    means = gaussians.means
    bg = torch.zeros(3, dtype=means.dtype, device=means.device) if background is None else background.to(means)
    grid = TileGrid(camera.width, camera.height)
    splats = project(gaussians, camera, sh_degree, backend, antialiased)
    colors, alpha, bins = rasterize(splats, grid, bg, tile_ids, backend)
    covered = grid.pixel_mask(bins.tile_ids)[..., None]
    image = torch.where(covered, grid.tiles_to_image(colors, bins.tile_ids), bg)
    alpha_img = grid.tiles_to_image(alpha[..., None], bins.tile_ids)[..., 0]
    result = RenderResult(image, alpha_img, colors, alpha, splats, bins)
    if depth:
        z = splats.depths[:, None].expand(-1, splats.colors.shape[1])
        as_colors = Splats(
            splats.means2d, splats.conics, splats.depths, splats.opacities, z, splats.extents, splats.ids
        )
        summed, _, _ = rasterize(as_colors, grid, torch.zeros_like(bg), bins.tile_ids, backend)
        summed = grid.tiles_to_image(summed[..., :1], bins.tile_ids)[..., 0]
        result.depth = torch.where(alpha_img > 0, summed / alpha_img.clamp_min(1e-12), 0.0)
    return result
