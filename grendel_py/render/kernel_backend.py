"""The renderer on the CUDA kernels of ``cuda/``, with torch autograd around them.

:class:`KernelBackend` takes a kernel launcher (``launch(name, size, *args)``, see
:mod:`grendel_py.render.cuda_kernels`) and offers the renderer interface
(:class:`~grendel_py.render.interface.Renderer`) with the torch spec's signatures and results, every stage
once per batch: ``project_batch`` (visibility, packed splats, a backward per Gaussian), ``pairs`` (the tile
table's counts and the routing), ``rasterize_batch`` (binning and compositing of all the batch's tiles), and
``project`` for one camera. Binning: each visible splat gets a 64-bit key per selected tile its ellipse
reaches (the spec's exact tile culling), ``slot << 32 | rank`` with ``rank`` its place in (depth, global id)
order, so one radix sort of the keys (torch.sort) yields the spec's (tile, depth, id) order with no ties,
whatever the splats' arrival order. Everything is float32; the kernels composite 3 colour channels over
16 x 16 tiles.
"""

from __future__ import annotations

import torch

from grendel_py.backward_state import load, save
from grendel_py.data.cameras import Camera
from grendel_py.model.gaussians import TRAINABLE, Gaussians
from grendel_py.render.intersect import BatchTiles, TileBins, depth_order, part_starts, require_indexable
from grendel_py.render.projection import Splats
from partition.tiles import TileGrid

CAM_FLOATS = 24  # cuda/project.cuh: R (9), t (3), centre (3), fx, fy, cx, cy, 4 tangent limits, near plane
RANK_BITS = 32
NEAR_PLANE = 0.01  # as the spec's default
PARAMETERS = ("means", "quats", "log_scales", "opacity_logits", "sh0", "shN")
"""The model's trainable fields in the order the packed projection kernels take them."""
assert sorted(PARAMETERS) == sorted(TRAINABLE)


def _camera_record(camera: Camera, near_plane: float) -> list[torch.Tensor]:
    """The camera as the kernels read it (cuda/project.cuh ``load_cam``), as float64 parts on the host that
    make its 24 floats; the tangent limits are computed in double as in the spec."""
    w, h, fx, fy, cx, cy = camera.width, camera.height, camera.fx, camera.fy, camera.cx, camera.cy
    tan_x, tan_y = 0.5 * w / fx, 0.5 * h / fy
    limits = [(w - cx) / fx + 0.3 * tan_x, cx / fx + 0.3 * tan_x, (h - cy) / fy + 0.3 * tan_y, cy / fy + 0.3 * tan_y]
    return [
        camera.R.reshape(-1).double().cpu(),
        camera.t.reshape(-1).double().cpu(),
        camera.center.reshape(-1).double().cpu(),
        torch.tensor([fx, fy, cx, cy, *limits, near_plane], dtype=torch.float64),
    ]


def camera_records(cameras: list[Camera], near_plane: float, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The cameras as the kernels read them: records float32 [B, 24] and image sizes int32 [B, 2] (width,
    height), each uploaded in one copy."""
    records = torch.cat([part for c in cameras for part in _camera_record(c, near_plane)]).view(len(cameras), -1)
    assert records.shape[1] == CAM_FLOATS
    sizes = torch.tensor([[c.width, c.height] for c in cameras], dtype=torch.int32)
    return records.float().to(device), sizes.to(device)


MAX_ITEMS = (1 << 31) - 1
"""The most Gaussians or splats one kernel launch takes: the kernels count items in a 32-bit int (their
indices into the arrays are 64-bit)."""


def _require_countable(n: int, what: str) -> None:
    if n > MAX_ITEMS:
        raise ValueError(
            f"{n} {what} in one kernel launch exceed the kernels' limit of {MAX_ITEMS} (2^31 - 1); use more ranks"
        )


def _require_float32(**tensors: torch.Tensor) -> None:
    for name, t in tensors.items():
        if t.dtype != torch.float32:
            raise ValueError(f"the kernel backends compute in float32; {name} is {t.dtype}")


def _zeros_if_none(grad: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(like) if grad is None else grad.contiguous()


class _Project(torch.autograd.Function):
    @staticmethod
    def forward(ctx, means, quats, scales, opacities, sh, cam, degree, width, height, antialiased, launch):
        n, n_coeffs = means.shape[0], sh.shape[1]
        means, quats, scales, opacities, sh = (t.contiguous() for t in (means, quats, scales, opacities, sh))
        means2d = means.new_empty(n, 2)
        conics = means.new_empty(n, 3)
        depths = means.new_empty(n)
        opacities_out = means.new_empty(n)
        colors = means.new_empty(n, 3)
        extents = torch.empty(n, 2, dtype=torch.int32, device=means.device)
        launch(
            "project_forward",
            n,
            means,
            quats,
            scales,
            opacities,
            sh,
            n_coeffs,
            degree,
            cam,
            width,
            height,
            int(antialiased),
            means2d,
            conics,
            depths,
            opacities_out,
            colors,
            extents,
        )
        ctx.save_for_backward(means, quats, scales, opacities, sh, cam)
        ctx.degree, ctx.antialiased, ctx.launch = degree, antialiased, launch
        ctx.mark_non_differentiable(extents)
        return means2d, conics, depths, opacities_out, colors, extents

    @staticmethod
    def backward(ctx, v_means2d, v_conics, v_depths, v_opacities_out, v_colors, _v_extents):
        means, quats, scales, opacities, sh, cam = ctx.saved_tensors
        n = means.shape[0]
        v_means, v_quats, v_scales, v_opacities, v_sh = (
            torch.empty_like(t) for t in (means, quats, scales, opacities, sh)
        )
        ctx.launch(
            "project_backward",
            n,
            means,
            quats,
            scales,
            opacities,
            sh,
            sh.shape[1],
            ctx.degree,
            cam,
            int(ctx.antialiased),
            _zeros_if_none(v_means2d, means[:, :2]),
            _zeros_if_none(v_conics, means),
            _zeros_if_none(v_depths, opacities),
            _zeros_if_none(v_opacities_out, opacities),
            _zeros_if_none(v_colors, means),
            v_means,
            v_quats,
            v_scales,
            v_opacities,
            v_sh,
        )
        return v_means, v_quats, v_scales, v_opacities, v_sh, None, None, None, None, None, None


def _zeros_like_each(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Zeroed tensors shaped as ``tensors`` (one dtype), contiguous views of one buffer filled once."""
    if not tensors:
        return []
    flat = torch.zeros(sum(t.numel() for t in tensors), dtype=tensors[0].dtype, device=tensors[0].device)
    return [v.view(t.shape) for v, t in zip(flat.split([t.numel() for t in tensors]), tensors)]


def batch_grids(parts: list[int], grids: list[TileGrid], device: torch.device) -> torch.Tensor:
    """The batch's cameras as the binning and rasterization kernels read them (cuda/batch.cuh), int64 [B, 5]:
    first splat row (``parts[b]`` rows for camera b, one camera after another), width, height, tiles across and
    first batch tile of each; one upload."""
    table = [
        [r0, g.width, g.height, g.nx, f]
        for r0, g, f in zip(part_starts(parts), grids, part_starts([g.n_tiles for g in grids]))
    ]
    return torch.tensor(table, dtype=torch.int64).to(device, non_blocking=True)


class _Rasterize(torch.autograd.Function):
    """The tile kernels over all the selected tiles of a batch in one launch each way (each block finds its
    camera from its batch tile id in the ``cams`` table)."""

    @staticmethod
    def forward(ctx, means2d, conics, opacities, colors, background, bins: TileBins, cams, launch):
        n_tiles = bins.tile_ids.shape[0]
        means2d, conics, opacities, colors, background = (
            t.contiguous() for t in (means2d, conics, opacities, colors, background)
        )
        rgb = means2d.new_empty(n_tiles, 256, 3)
        t_final = means2d.new_empty(n_tiles, 256)
        walked = torch.empty(n_tiles, 256, dtype=torch.int32, device=means2d.device)
        splats = (bins.tile_ids, bins.offsets, bins.splat_index, means2d, conics, opacities, colors, background)
        launch("rasterize_forward", n_tiles, *splats, cams, cams.shape[0], rgb, t_final, walked)
        save(ctx, (means2d, conics, opacities, colors, background, t_final, walked, cams), bins=bins)
        ctx.launch = launch
        ctx.mark_non_differentiable(walked)
        return rgb, 1.0 - t_final

    @staticmethod
    def backward(ctx, g_rgb, g_alpha):
        (means2d, conics, opacities, colors, background, t_final, walked, cams), state = load(ctx)
        bins: TileBins = state["bins"]
        g_rgb = t_final.new_zeros(*t_final.shape, 3) if g_rgb is None else g_rgb.contiguous()
        g_alpha = _zeros_if_none(g_alpha, t_final)
        v_means2d, v_conics, v_opacities, v_colors = _zeros_like_each([means2d, conics, opacities, colors])
        splats = (bins.tile_ids, bins.offsets, bins.splat_index, means2d, conics, opacities, colors, background)
        ctx.launch(
            "rasterize_backward",
            bins.tile_ids.shape[0],
            *splats,
            cams,
            cams.shape[0],
            t_final,
            walked,
            g_rgb,
            g_alpha,
            v_means2d,
            v_conics,
            v_opacities,
            v_colors,
        )
        v_background = (g_rgb * t_final[..., None]).sum(dim=(0, 1))
        return v_means2d, v_conics, v_opacities, v_colors, v_background, None, None, None


class _ProjectPacked(torch.autograd.Function):
    """The batch's projection over the model's parameters: forward writes the packed splats (slots from the
    prefix sum of the visible items), backward adds every parameter's gradient into its ``.grad`` (the
    parameters are leaves; autograd gets None for them), one thread per Gaussian over its cameras."""

    @staticmethod
    def forward(ctx, plan, means, quats, log_scales, opacity_logits, sh0, shN):
        slots, m, cams, sizes, degree, antialiased, launch = plan
        n = means.shape[0]
        params = [t.contiguous() for t in (means, quats, log_scales, opacity_logits, sh0, shN)]
        new = means.new_empty
        means2d, conics, depths, opacities, colors = new(m, 2), new(m, 3), new(m), new(m), new(m, 3)
        extents = torch.empty(m, 2, dtype=torch.int32, device=means.device)
        rows = torch.empty(m, dtype=torch.int32, device=means.device)
        n_coeffs = 1 + shN.shape[1]
        outputs = (means2d, conics, depths, opacities, colors, extents, rows)
        launch(
            "project_packed_forward",
            slots.shape[0],
            n,
            *params,
            n_coeffs,
            degree,
            cams,
            sizes,
            antialiased,
            slots,
            *outputs,
        )
        ctx.save_for_backward(*params, slots, cams)
        ctx.leaves = (means, quats, log_scales, opacity_logits, sh0, shN)  # leaves: no reference cycle
        ctx.degree, ctx.antialiased, ctx.launch = degree, antialiased, launch
        ctx.shapes = [t.shape for t in outputs[:5]]
        ctx.mark_non_differentiable(extents, rows)
        return outputs

    @staticmethod
    def backward(ctx, v_means2d, v_conics, v_depths, v_opacities, v_colors, _v_extents, _v_rows):
        *params, slots, cams = ctx.saved_tensors
        wanted = ctx.needs_input_grad[1:]
        # into .grad itself; the missing ones allocated (views of one zeroed buffer: one fill, not six)
        missing = [leaf for leaf, w in zip(ctx.leaves, wanted) if w and leaf.grad is None]
        for leaf, buf in zip(missing, _zeros_like_each(missing)):
            leaf.grad = buf
        v_splats = [
            torch.zeros(shape, dtype=torch.float32, device=slots.device) if g is None else g.contiguous()
            for g, shape in zip((v_means2d, v_conics, v_depths, v_opacities, v_colors), ctx.shapes)
        ]
        n, n_cams, n_coeffs = params[0].shape[0], cams.shape[0], 1 + params[5].shape[1]
        ctx.launch(
            "project_packed_backward",
            n,
            n_cams,
            *params,
            n_coeffs,
            ctx.degree,
            cams,
            ctx.antialiased,
            slots,
            *v_splats,
            *(leaf.grad if w else torch.zeros_like(leaf) for leaf, w in zip(ctx.leaves, wanted)),
        )
        return (None, *[None] * 6)


class KernelPairs:
    """The (splat, tile) pairs of a batch's splats (``parts[b]`` rows for camera b over ``grids[b]``) on the
    kernels: each use visits every splat's reached tiles in one launch; nothing per pair is stored."""

    def __init__(self, launch, splats: Splats, parts: list[int], grids: list[TileGrid]):
        self.launch, self.n, self.n_tiles = launch, len(splats), sum(g.n_tiles for g in grids)
        _require_countable(self.n, "splats")
        self.fields = [t.detach().contiguous() for t in (splats.means2d, splats.conics, splats.opacities)]
        self.fields.append(splats.extents.contiguous())
        table = [
            [r0, g.width, g.height, g.nx, f]
            for r0, g, f in zip(part_starts(parts), grids, part_starts([g.n_tiles for g in grids]))
        ]
        self.cams = torch.tensor(table, dtype=torch.int64).to(splats.means2d.device, non_blocking=True)

    def tile_counts(self) -> torch.Tensor:
        """How many splats reach each batch tile, int64 [sum of n_tiles]."""
        counts = torch.zeros(self.n_tiles, dtype=torch.int32, device=self.cams.device)
        self.launch("count_tile_pairs", self.n, *self.fields, self.cams, self.cams.shape[0], counts)
        return counts.to(torch.int64)

    def reach(self, owners: torch.Tensor, world_size: int) -> torch.Tensor:
        """bool [world_size, n]: row q true at the splats that reach a batch tile ``owners`` gives to q."""
        reach = torch.zeros((world_size, self.n), dtype=torch.uint8, device=self.cams.device)
        self.launch("route_splats", self.n, *self.fields, self.cams, self.cams.shape[0], owners.contiguous(), reach)
        return reach.view(torch.bool)


class KernelBackend:
    """``project`` and ``rasterize_batch`` of the renderer interface, run by the kernels behind ``launch``."""

    def __init__(self, launch):
        self.launch = launch

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
        """As :func:`grendel_py.render.projection.project` (3 colour channels, float32)."""
        _require_countable(means.shape[0], "Gaussians")
        _require_float32(means=means, quats=quats, scales=scales, opacities=opacities, sh=sh)
        if sh.shape[-1] != 3 or sh.shape[1] < (sh_degree + 1) ** 2 or not 0 <= sh_degree <= 3:
            raise ValueError(f"SH of shape {tuple(sh.shape)} cannot be evaluated at degree {sh_degree} in 3 channels")
        cam = camera_records([camera], near_plane, means.device)[0][0]
        means2d, conics, depths, opacities, colors, extents = _Project.apply(
            means, quats, scales, opacities, sh, cam, sh_degree, camera.width, camera.height, antialiased, self.launch
        )
        return Splats(means2d, conics, depths, opacities, colors, extents, ids)

    def project_batch(
        self, model: Gaussians, cameras: list[Camera], sh_degree: int, antialiased: bool = False
    ) -> tuple[Splats, list[int], torch.Tensor]:
        """As :func:`grendel_py.render.torch_backend.project_batch`, in three launches for the whole batch:
        which (camera, Gaussian) items are drawn, their splats packed through its prefix sum (one camera after
        another, each in model order), and a backward pass per Gaussian that adds its gradients over its
        cameras into the parameters' ``.grad`` (which must then be leaves of autograd). One host synchronisation
        (the splats per camera)."""
        if not cameras:
            raise ValueError("project_batch: no cameras")
        n, n_cams = len(model), len(cameras)
        _require_countable(n, "Gaussians")
        params = [getattr(model, name) for name in PARAMETERS]
        _require_float32(**dict(zip(PARAMETERS, params)))
        if not 0 <= sh_degree <= 3 or 1 + model.shN.shape[1] < (sh_degree + 1) ** 2 or model.sh0.shape[-1] != 3:
            raise ValueError(f"SH of {1 + model.shN.shape[1]} coefficients cannot be evaluated at degree {sh_degree}")
        records = camera_records(cameras, NEAR_PLANE, model.means.device)
        geometry = [t.contiguous() for t in params[:4]]
        visible = torch.empty(n_cams * n, dtype=torch.int64, device=model.means.device)
        self.launch("project_visible", visible.shape[0], n, *geometry, *records, int(antialiased), visible)
        slots = torch.cumsum(visible, 0)
        del visible
        ends = slots[n - 1 :: n].tolist() if n else [0] * n_cams
        parts = [e - s for s, e in zip([0, *ends[:-1]], ends)]
        recording = torch.is_grad_enabled() and any(p.requires_grad for p in params)
        if recording and not all(p.is_leaf for p in params):
            raise ValueError("project_batch: the parameters must be leaves of autograd")
        plan = (slots, ends[-1], *records, sh_degree, int(antialiased), self.launch)
        *fields, rows = _ProjectPacked.apply(plan, *params)
        return Splats(*fields, model.ids[rows]), parts, rows

    def pairs(self, splats: Splats, parts: list[int], grids: list[TileGrid]) -> KernelPairs:
        """The batch's (splat, tile) pairs (:class:`KernelPairs`)."""
        return KernelPairs(self.launch, splats, parts, grids)

    def bin_batch(self, splats: Splats, parts: list[int], tiles: BatchTiles) -> TileBins:
        """As :func:`grendel_py.render.intersect.bin_batch`, with the same tiles, offsets and splat order."""
        return self._bin(splats, tiles, batch_grids(parts, tiles.grids, splats.means2d.device))

    def _bin(self, splats: Splats, tiles: BatchTiles, cams: torch.Tensor) -> TileBins:
        """The keys of the batch's splats counted in one launch, emitted in one launch, one sort, the tile
        ranges in one launch (``cams``: :func:`batch_grids`). One host synchronisation (the number of keys)."""
        device = splats.means2d.device
        n, n_sel = len(splats), tiles.ids.shape[0]
        require_indexable(n)
        _require_countable(n, "splats")
        fields = [t.detach().contiguous() for t in (splats.means2d, splats.conics, splats.opacities, splats.extents)]
        geometry = (n, *fields, cams, cams.shape[0], tiles.slot_of_tile(torch.int32))
        counts = torch.empty(n, dtype=torch.int64, device=device)
        self.launch("count_intersections", *geometry, counts)
        ends = torch.cumsum(counts, 0)
        m = int(ends[-1]) if n else 0
        order = depth_order(splats.depths, splats.ids)  # a tile holds one camera's splats, so (depth, id) suffices
        rank = torch.empty_like(order)
        rank[order] = torch.arange(n, device=device)
        keys = torch.empty(m, dtype=torch.int64, device=device)
        self.launch("emit_keys", *geometry, ends - counts, rank, keys)
        keys = torch.sort(keys).values
        offsets = torch.zeros(n_sel + 1, dtype=torch.int64, device=device)
        self.launch("tile_ranges", m, keys, n_sel, offsets)
        splat_index = order.to(torch.int32)[keys & ((1 << RANK_BITS) - 1)]
        return TileBins(tile_ids=tiles.ids, splat_index=splat_index, offsets=offsets)

    def rasterize_batch(
        self, splats: Splats, parts: list[int], tiles: BatchTiles, background: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, TileBins]:
        """As :func:`grendel_py.render.torch_backend.rasterize_batch` (16 x 16 tiles, 3 channels, float32)."""
        _require_float32(means2d=splats.means2d, conics=splats.conics, opacities=splats.opacities, colors=splats.colors)
        sizes = {g.tile_size for g in tiles.grids}
        if sizes != {16} or splats.colors.shape[1] != 3:
            raise ValueError(
                f"the kernels rasterize 3 channels over 16 x 16 tiles, got {splats.colors.shape[1]} over {sorted(sizes)}"
            )
        cams = batch_grids(parts, tiles.grids, splats.means2d.device)
        bins = self._bin(splats, tiles, cams)
        colors, alpha = _Rasterize.apply(
            splats.means2d,
            splats.conics,
            splats.opacities,
            splats.colors,
            background.to(splats.means2d),
            bins,
            cams,
            self.launch,
        )
        return colors, alpha, bins
