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
from types import ModuleType

import torch
from torch.utils.checkpoint import checkpoint

from grendel_py.data.cameras import Camera
from grendel_py.errors import InputError
from grendel_py.render import cupy_backend, torch_backend
from grendel_py.render.intersect import BatchTiles, TileBins
from grendel_py.render.projection import Splats
from partition.tiles import TileGrid

BACKENDS: dict[str, ModuleType] = {"torch": torch_backend, "cupy": cupy_backend}


def resolve_backend(name: str, device: torch.device) -> str:
    """The backend that renders tensors on ``device`` for the config value ``name`` (torch, cupy or auto):
    ``auto`` is cupy where the device is a GPU and CuPy is installed, else torch. InputError for cupy off a GPU."""
    has_cupy = importlib.util.find_spec("cupy") is not None
    if name == "auto":
        return "cupy" if device.type == "cuda" and has_cupy else "torch"
    if name == "cupy" and device.type != "cuda":
        raise InputError(None, f"render.backend=cupy renders CUDA tensors, but this run keeps its model on {device} (use torch or auto)")
    if name == "cupy" and not has_cupy:
        raise InputError(None, "render.backend=cupy needs CuPy: pip install 'grendel_py[cuda]' (CUDA 13) or 'grendel_py[cuda12]'")
    get_backend(name)
    return name


def get_backend(name: str) -> ModuleType:
    """The backend module called ``name``."""
    if name not in BACKENDS:
        raise ValueError(f"unknown render backend {name!r}; choose from {sorted(BACKENDS)}")
    return BACKENDS[name]


@dataclass
class RenderResult:
    """image [H, W, C] and alpha [H, W] (pixels of unrendered tiles hold the background and 0); ``tile_colors``
    [T, P, C] and ``tile_alpha`` [T, P] for the rendered tiles ``bins.tile_ids``; the projected ``splats``."""

    image: torch.Tensor
    alpha: torch.Tensor
    tile_colors: torch.Tensor
    tile_alpha: torch.Tensor
    splats: Splats
    bins: TileBins


PROJECT_ROWS = 1 << 18
"""Gaussians per checkpointed piece of :func:`project`: the backward pass recomputes one piece at a time."""


def _project_rows(gaussians, rows, camera: Camera, degree: int, ops: ModuleType) -> Splats:
    g = gaussians.select(rows)
    return ops.project(g.means, g.quats, g.scales(), g.opacities(), g.sh(), degree, camera, g.ids)


def _project_checkpointed(gaussians, rows: torch.Tensor | None, camera: Camera, degree: int, ops: ModuleType) -> list[Splats]:
    """The projection of ``gaussians`` (all when ``rows`` is None, else the rows ``rows``) as checkpointed
    pieces of :data:`PROJECT_ROWS` when autograd records; one piece otherwise."""
    n = len(gaussians) if rows is None else rows.shape[0]
    if not torch.is_grad_enabled() or n <= PROJECT_ROWS:
        pieces = [(slice(None) if rows is None else rows)]
    else:
        pieces = [slice(r, r + PROJECT_ROWS) if rows is None else rows[r : r + PROJECT_ROWS] for r in range(0, n, PROJECT_ROWS)]
    if not torch.is_grad_enabled():
        return [_project_rows(gaussians, pieces[0], camera, degree, ops)]
    return [checkpoint(_project_rows, gaussians, p, camera, degree, ops, use_reentrant=False) for p in pieces]


def project(gaussians, camera: Camera, sh_degree: int | None = None, backend: str = "torch") -> Splats:
    """Project every Gaussian of ``gaussians`` into ``camera`` (culled ones get extent 0).

    When autograd records, the projection is checkpointed in pieces of :data:`PROJECT_ROWS` Gaussians: the
    graph keeps the model's parameters themselves and the outputs, and the backward pass recomputes one
    piece at a time everything in between (activated scales, the SH coefficients side by side, covariances,
    the SH basis), to the bits the forward computed. Recorded whole, the torch backend would keep about 640
    bytes per Gaussian and camera, and its backward would briefly need as much again."""
    degree = gaussians.sh_degree if sh_degree is None else sh_degree
    pieces = _project_checkpointed(gaussians, None, camera, degree, get_backend(backend))
    return pieces[0] if len(pieces) == 1 else Splats.cat(pieces)


def visible_rows(gaussians, cameras: list[Camera], backend: str = "torch") -> tuple[list[torch.Tensor], list[int]]:
    """Per camera, the rows (int64, ascending) of the Gaussians :func:`project` gives a non-zero extent, and
    their numbers (one read to the host for all cameras). Found without autograd by the same projection
    without colours (SH degree 0), in the same pieces of :data:`PROJECT_ROWS` as :func:`project`."""
    ops = get_backend(backend)
    masks = []
    with torch.no_grad():
        for cam in cameras:
            parts = []
            for r in range(0, len(gaussians), PROJECT_ROWS):
                g = gaussians.select(slice(r, r + PROJECT_ROWS))
                parts.append(ops.project(g.means, g.quats, g.scales(), g.opacities(), g.sh0, 0, cam, g.ids).visible)
            masks.append(torch.cat(parts) if parts else torch.zeros(0, dtype=torch.bool, device=gaussians.device))
    counts = torch.stack([m.sum() for m in masks]).tolist() if masks else []
    return [_true_rows(m, c) for m, c in zip(masks, counts)], counts


def _true_rows(mask: torch.Tensor, count: int) -> torch.Tensor:
    """The indices of the ``count`` true entries of ``mask``, ascending, without a host synchronisation."""
    slot = torch.where(mask, torch.cumsum(mask, 0) - 1, count)  # the false entries all land in slot ``count``
    rows = torch.empty(count + 1, dtype=torch.long, device=mask.device)
    rows.scatter_(0, slot, torch.arange(mask.shape[0], device=mask.device))
    return rows[:count]


def project_batch(gaussians, cameras: list[Camera], sh_degree: int, backend: str = "torch") -> tuple[Splats, list[int], torch.Tensor]:
    """Project, for every camera of a batch, only the Gaussians it sees (:func:`visible_rows`): one
    :class:`Splats` with ``parts[b]`` rows for camera b, one camera after another, and the model row of each
    splat, int64. The rows dropped are exactly those :func:`project` culls, so the pictures and gradients
    are the same (up to the last bit: a SIMD kernel may round a gathered row differently), but autograd
    keeps (and the exchange and binning handle) only visible splats. Checkpointed
    in pieces as :func:`project`. One host synchronisation."""
    rows, parts = visible_rows(gaussians, cameras, backend)
    ops = get_backend(backend)
    pieces = [p for r, cam in zip(rows, cameras) for p in _project_checkpointed(gaussians, r, cam, sh_degree, ops)]
    return (pieces[0] if len(pieces) == 1 else Splats.cat(pieces)), parts, torch.cat(rows)


def rasterize(
    splats: Splats, grid: TileGrid, background: torch.Tensor, tile_ids: torch.Tensor | None = None, backend: str = "torch"
) -> tuple[torch.Tensor, torch.Tensor, TileBins]:
    """Composite ``splats`` over the tiles ``tile_ids`` (all when None; any order, repeats allowed) of ``grid``.

    Returns (colors [T, P, C], alpha [T, P], bins) for the sorted distinct tiles ``bins.tile_ids``, with
    P = tile_size**2 pixels per tile, row-major.
    """
    device = splats.means2d.device
    tiles = BatchTiles([grid], [None if tile_ids is None else torch.unique(tile_ids.to(device))], device)
    return rasterize_batch(splats, [len(splats)], tiles, background, backend)


def rasterize_batch(
    splats: Splats, parts: list[int], tiles: BatchTiles, background: torch.Tensor, backend: str = "torch"
) -> tuple[torch.Tensor, torch.Tensor, TileBins]:
    """Composite the splats of several cameras at once: ``splats`` holds ``parts[b]`` rows for camera b, one
    camera after another; ``tiles`` selects each camera's tiles. Returns (colors [T, P, C], alpha [T, P],
    bins) for the selected tiles in ``tiles.ids`` order (``tiles.split`` cuts them per camera)."""
    return get_backend(backend).rasterize_batch(splats, parts, tiles, background)


def render(
    gaussians,
    camera: Camera,
    background: torch.Tensor | None = None,
    tile_ids: torch.Tensor | None = None,
    sh_degree: int | None = None,
    backend: str = "torch",
) -> RenderResult:
    """Render ``gaussians`` from ``camera``; only the tiles ``tile_ids`` when given (others show background)."""
    means = gaussians.means
    bg = torch.zeros(3, dtype=means.dtype, device=means.device) if background is None else background.to(means)
    grid = TileGrid(camera.width, camera.height)
    splats = project(gaussians, camera, sh_degree, backend)
    colors, alpha, bins = rasterize(splats, grid, bg, tile_ids, backend)
    covered = grid.pixel_mask(bins.tile_ids)[..., None]
    image = torch.where(covered, grid.tiles_to_image(colors, bins.tile_ids), bg)
    alpha_img = grid.tiles_to_image(alpha[..., None], bins.tile_ids)[..., 0]
    return RenderResult(image, alpha_img, colors, alpha, splats, bins)
