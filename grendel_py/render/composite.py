"""Front-to-back alpha compositing of binned splats over whole tiles: the spec of the rasterize kernels.

Rules (INRIA 3DGS / gsplat): pixel (i, j) is evaluated at its centre (i + 0.5, j + 0.5);
``alpha = min(0.99, o * exp(-0.5 d^T conic d))``; a splat with alpha < 1/255 is skipped; compositing stops
before the splat that would bring the transmittance T below 1e-4; ``C = sum_j alpha_j T_j c_j + T_final * bg``.

The work is vectorised over tiles (of one camera or of a whole batch) and over chunks of splats in depth
order: a chunk computes alpha for all its (pixel, splat) pairs at once and carries T between chunks. On a
GPU the chunks are planned on the host from the intersections per tile (tiles whose lists have ended drop
out), so no chunk asks the device for a size, and pixels that terminated stay with zero weight. On the CPU,
where reading the device is free, each depth range also leaves out the tiles whose pixels have all stopped
and is sized by the tiles left, so ranges deepen as tiles saturate (fewer operations; the same sums in
another float order). A chunk holds about ``chunk_pairs`` pairs (at least ``min_chunk`` splats per tile; many
live tiles are split into groups), so few live tiles get long chunks, Python overhead stays small next to
the arithmetic, and memory is bounded. The backward pass walks the chunks the forward ran back to front,
recomputing alpha (nothing per pair is stored), and uses the closed-form gradients of the compositing
equation, so memory stays O(pixels + splats + chunk_pairs) (a small compositing splits its tiles into fewer
groups, :func:`chunk_sizes`). It needs T at each chunk's start: a small step keeps them all; a large one keeps
T only where each of about sqrt(R) segments of depth ranges starts (R ranges of slots) and the starts of the
last segment's chunks, and the backward recomputes each earlier segment's starts (alpha and T only) when it
gets there, to the same bits.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch

from grendel_py import backward_state
from grendel_py.backward_state import load, save
from grendel_py.host_syncs import counting_as_a_gpu
from grendel_py.render.intersect import BatchTiles, TileBins
from grendel_py.render.projection import ALPHA_MIN

ALPHA_MAX = 0.99
T_MIN = 1e-4


POWER_MIN = -80.0
"""The Gaussian's exponent is clamped here (exp(-80) is about 1.8e-35, a normal float32, and far below
ALPHA_MIN): see :class:`_Chunk`."""
MIN_CHUNK = 32
"""Depth slots a chunk gives each of its tiles at least."""
CHUNK_PAIRS = 1 << 19
"""About how many (pixel, splat) pairs a chunk holds (about 47 MB of scratch at the backward's 90 bytes a pair)."""
SMALL_STEP_GROUP_PAIRS = 1 << 21
"""Where the compositing is small (:data:`SMALL_STEP_STARTS`), a chunk's tiles are split into groups only past
this many pairs (about 190 MB of scratch): the same depth slots in up to four times fewer chunks (a 256 x 256
view's 256 tiles times 32 slots are one chunk, not four), each a fixed number of operations. On a CPU that
other jobs share, every parallel operation can wait for a time slice of the scheduler, so fewer, larger
operations pay (bench/results/ab_cpu/README.md)."""
SMALL_STEP_STARTS = 1 << 24
"""A compositing is small where its chunks of :data:`CHUNK_PAIRS` start at most this many pixel values of T
(64 MB in float32): a 256 x 256 view, the demo's batches; a 1080p view of millions of Gaussians starts some
billions. A fixed count, not the keep budget, so that keeping or recomputing the starts
(:data:`~grendel_py.backward_state.KEEP_BYTES`) never changes the chunks, and the bits."""


def _depth_range(
    k0: int, n_live: int, k_end: int, n_pix: int, pairs: int, min_chunk: int, group_pairs: int
) -> tuple[int, int]:
    """The end k1 of the depth range that starts at slot ``k0`` over ``n_live`` tiles whose longest list ends
    at ``k_end`` (about ``pairs`` pairs, at least ``min_chunk`` slots), and how many of its tiles a chunk takes
    (at most ``group_pairs`` pairs)."""
    k1 = min(k_end, k0 + max(min_chunk, pairs // (n_live * n_pix)))
    return k1, max(1, group_pairs // (n_pix * (k1 - k0)))


def schedule(
    sorted_counts: list[int],
    n_pix: int,
    chunk_pairs: int = CHUNK_PAIRS,
    min_chunk: int = MIN_CHUNK,
    group_pairs: int | None = None,
) -> list[tuple[int, int, int, int]]:
    """The compositor's chunks (t0, t1, k0, k1) for tiles whose splat counts are ``sorted_counts`` (largest
    first), every tile computed to the end of its list: depth slots [k0, k1) of the tiles t0..t1 - 1 of that
    order, all holding more than k0 splats; about ``chunk_pairs`` pairs of the live tiles' depth slots each (at
    least ``min_chunk`` slots). When a chunk would hold more than ``group_pairs`` pairs (None:
    ``chunk_pairs``), its tiles are split into groups (tiles are independent, so this changes no result),
    which keeps a chunk's memory bounded however many tiles a batch has."""
    out, k0, n_active = [], 0, len(sorted_counts)
    k_max = sorted_counts[0] if sorted_counts else 0
    while k0 < k_max:
        while n_active and sorted_counts[n_active - 1] <= k0:
            n_active -= 1
        k1, group = _depth_range(k0, n_active, k_max, n_pix, chunk_pairs, min_chunk, group_pairs or chunk_pairs)
        out += [(t0, min(t0 + group, n_active), k0, k1) for t0 in range(0, n_active, group)]
        k0 = k1
    return out


def started_tiles(chunks: list[tuple[int, int, int, int]]) -> int:
    """The tiles the chunks start, summed over the chunks: each start is T of the tile's pixels."""
    return sum(t1 - t0 for t0, t1, _, _ in chunks)


def chunk_sizes(
    sorted_counts: list[int], n_pix: int, chunk_pairs: int | None = None, min_chunk: int = MIN_CHUNK
) -> tuple[int, int]:
    """The pairs a depth range holds and the pairs past which its tiles are split into groups: both
    ``chunk_pairs``; None: :data:`CHUNK_PAIRS`, and :data:`SMALL_STEP_GROUP_PAIRS` for the groups where those
    chunks start at most :data:`SMALL_STEP_STARTS` values."""
    if chunk_pairs is not None:
        return chunk_pairs, chunk_pairs
    starts = started_tiles(schedule(sorted_counts, n_pix, CHUNK_PAIRS, min_chunk)) * n_pix
    return CHUNK_PAIRS, SMALL_STEP_GROUP_PAIRS if starts <= SMALL_STEP_STARTS else CHUNK_PAIRS


def plan_chunks(
    sorted_counts: list[int], n_pix: int, chunk_pairs: int | None = None, min_chunk: int = MIN_CHUNK
) -> list[tuple[int, int, int, int]]:
    """The compositor's chunks (:func:`schedule`) sized by :func:`chunk_sizes`."""
    pairs, group_pairs = chunk_sizes(sorted_counts, n_pix, chunk_pairs, min_chunk)
    return schedule(sorted_counts, n_pix, pairs, min_chunk, group_pairs)


def compositor_work(per_tile: np.ndarray, n_pix: int) -> tuple[int, int, int]:
    """The (splat, tile) slots the compositor works through for tiles with ``per_tile`` splats each (every
    chunk's tiles times its depth slots: lists padded to the chunk's end), its number of chunks, and the
    largest chunk's (pixel, splat) pairs with the default sizes: what the torch backend's
    rasterization time and its scratch memory grow with (the stage clock and the planner count them)."""
    chunks = plan_chunks(sorted(np.asarray(per_tile, dtype=np.int64).tolist(), reverse=True), n_pix)
    sizes = [(t1 - t0) * (k1 - k0) for t0, t1, k0, k1 in chunks]
    return sum(sizes), len(chunks), max(sizes, default=0) * n_pix


def composite_tiles(
    means2d: torch.Tensor,
    conics: torch.Tensor,
    opacities: torch.Tensor,
    colors: torch.Tensor,
    background: torch.Tensor,
    bins: TileBins,
    tiles: BatchTiles,
    chunk_pairs: int | None = None,
    min_chunk: int = MIN_CHUNK,
    keep_bytes: int | None = None,
    drop_finished: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Composite the binned splats over the selected tiles.

    means2d [N, 2], conics [N, 3], opacities [N], colors [N, C], background [C]; ``bins`` from
    :func:`grendel_py.render.intersect.bin_batch` over ``tiles``. Returns (colors [T, tile_size**2, C], alpha
    [T, tile_size**2]) for the tiles ``bins.tile_ids``, pixels row-major inside each tile. Differentiable in
    all float inputs.

    ``chunk_pairs``: about how many (pixel, splat) pairs a chunk holds (None: as :func:`plan_chunks` sizes
    them). ``keep_bytes``: the forward keeps every chunk's starting T for the backward while they take at most
    this many bytes (None: :data:`~grendel_py.backward_state.KEEP_BYTES`); past it, only where each of about
    sqrt(R) segments starts (see :meth:`_Layout.sizing`); the same bits either way. ``drop_finished``: each
    depth range leaves out the tiles whose every pixel has stopped (they add exactly nothing, forward or
    backward) and is sized by the tiles left, which costs a read of the device per range: by default on the
    CPU, where that read is free (unless the CPU stands for a GPU:
    :func:`~grendel_py.host_syncs.counting_as_a_gpu`). The results agree to float rounding either way (the
    chunks carry T across different depth slots).
    """
    if drop_finished is None:
        drop_finished = means2d.device.type == "cpu" and not counting_as_a_gpu()
    keep = backward_state.KEEP_BYTES if keep_bytes is None else keep_bytes
    sizing = (chunk_pairs, min_chunk, keep, drop_finished)
    return _Composite.apply(means2d, conics, opacities, colors, background, bins, tiles, sizing)


class _Layout:
    """Per-tile splat lists, pixel centres and chunk schedule shared by forward and backward.

    The schedule is planned on the host from the intersections per tile (one read, usually done by the
    binning already): tiles in decreasing order of their splat count, so the tiles still holding splats at
    depth slot k are a prefix of that order, whose length is known without asking the device. Pixels that
    terminated early stay in their chunks with zero weight unless the ranges leave out finished tiles
    (:meth:`ranges`)."""

    def __init__(self, bins: TileBins, tiles: BatchTiles, dtype: torch.dtype):
        device = bins.splat_index.device
        n_tiles = bins.tile_ids.shape[0]
        counts = bins.host_counts if bins.host_counts is not None else bins.counts.tolist()
        # Slot k of tile t is splat_index[offsets[t] + k] while k < counts[t]: gathered chunk by chunk, never
        # as a padded [tiles, largest count] table (which a single deep tile inflates).
        self.splat_index, self.offsets, self.counts = bins.splat_index, bins.offsets, bins.counts
        by_count = sorted(range(n_tiles), key=lambda t: -counts[t])  # stable: ties in tile order
        self.by_count = torch.tensor(by_count, dtype=torch.long).to(device, non_blocking=True)
        self.sorted_counts = [counts[t] for t in by_count]
        x0, y0 = tiles.origins()
        ts = tiles.grids[0].tile_size
        offs = torch.arange(ts, device=device, dtype=dtype) + 0.5
        self.px = x0.to(dtype)[:, None] + offs  # [T, ts] pixel-centre x of each tile column
        self.py = y0.to(dtype)[:, None] + offs  # [T, ts] pixel-centre y of each tile row
        self.ts = ts

    def slots(self, act: torch.Tensor, k0: int, k1: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Splat rows in depth slots [k0, k1) of the tiles ``act`` (positions in ``tile_ids``), [Ta, k1 - k0],
        and a float mask of the slots inside each tile's list. A slot past a tile's list holds some valid
        row, which the mask gives zero opacity: its alpha is below 1/255, so it adds nothing, forward or
        backward (no padded copy of the splat tables with a zero row)."""
        k = torch.arange(k0, k1, device=act.device)
        pos = self.offsets[act][:, None] + k
        inside = k < self.counts[act][:, None]
        rows = self.splat_index[pos.clamp_max(self.splat_index.shape[0] - 1)]
        return rows, inside.to(self.px.dtype)

    def sizing(
        self, chunk_pairs: int | None, min_chunk: int, keep_bytes: int, item_bytes: int
    ) -> tuple[tuple[int, int, int], int]:
        """The depth ranges' sizes (pairs, group pairs, min_chunk: :func:`chunk_sizes`) and how many ranges a
        segment holds: all of them where every chunk's start of the plan (:func:`schedule`, every tile to the
        end of its list) takes at most ``keep_bytes`` (``item_bytes`` a value), else about sqrt(R) of its R
        ranges. The forward keeps T where each segment starts and the starts of the last segment's chunks;
        the backward recomputes the others one segment at a time, so the saved transmittances take about
        2 sqrt(R), not R, values per pixel. Leaving out finished tiles only shortens the ranges' tile lists
        and deepens them (fewer ranges), so the plan bounds what is kept."""
        n_pix = self.ts * self.ts
        pairs, group_pairs = chunk_sizes(self.sorted_counts, n_pix, chunk_pairs, min_chunk)
        plan = schedule(self.sorted_counts, n_pix, pairs, min_chunk, group_pairs)
        n_ranges = len({k0 for _, _, k0, _ in plan})
        keep_all = started_tiles(plan) * n_pix * item_bytes <= keep_bytes
        return (pairs, group_pairs, min_chunk), max(1, n_ranges if keep_all else math.ceil(math.sqrt(n_ranges)))

    def ranges(
        self, t_run: torch.Tensor, sizes: tuple[int, int, int], drop: bool
    ) -> Iterator[tuple[torch.Tensor, list[tuple[torch.Tensor, int, int]]]]:
        """The depth ranges in turn, each as its tiles (positions in ``tile_ids``) and its chunks (tiles, k0,
        k1): the tiles holding more than k0 splats, a prefix of ``by_count``, and with ``drop`` only those
        with a pixel still running in ``t_run`` (read when the range begins, so the caller composites a range
        before asking for the next); the range's depth follows from how many tiles it holds, so it deepens as
        tiles finish. Without ``drop`` these are :func:`schedule`'s chunks, planned without a read."""
        pairs, group_pairs, min_chunk = sizes
        k0, n_active, n_pix = 0, len(self.sorted_counts), self.ts * self.ts
        while True:
            while n_active and self.sorted_counts[n_active - 1] <= k0:
                n_active -= 1
            act, first = self.by_count[:n_active], 0
            if drop and n_active:
                pos = torch.nonzero((t_run[act] > 0).any(dim=1))[:, 0]
                act, first = act[pos], int(pos[0]) if pos.numel() else 0
            if not act.numel():
                return
            k_end = self.sorted_counts[first]  # the longest list of the range's tiles
            k1, group = _depth_range(k0, act.shape[0], k_end, n_pix, pairs, min_chunk, group_pairs)
            yield act, [(act[g : g + group], k0, k1) for g in range(0, act.shape[0], group)]
            k0 = k1


class _Chunk:
    """Per-pair quantities of one chunk of S splats over Ta active tiles.

    Masks are float tensors (1/0), which multiply far faster than ``torch.where`` selects on CPU.
    Pixel-major views ``[Ta, P, S]`` of the ``[Ta, ts(row), ts(col), S]`` per-pair tensors are used for
    the scans along depth.
    """

    def __init__(
        self, lay: _Layout, act: torch.Tensor, k0: int, k1: int, params: tuple[torch.Tensor, ...], t_start: torch.Tensor
    ):
        means2d, conics, opacities = params
        s, inside = lay.slots(act, k0, k1)  # [Ta, S]
        ta, n_pix, n_s = s.shape[0], lay.ts * lay.ts, s.shape[1]
        self.s = s
        m = means2d[s]  # [Ta, S, 2]
        con = conics[s]  # [Ta, S, 3]
        self.a, self.b, self.c = con[..., 0], con[..., 1], con[..., 2]  # [Ta, S]
        self.dx = m[..., 0][:, None, :] - lay.px[act][:, :, None]  # [Ta, ts(col), S]
        self.dy = m[..., 1][:, None, :] - lay.py[act][:, :, None]  # [Ta, ts(row), S]
        ax = (-0.5 * self.a)[:, None, :] * self.dx * self.dx
        bx = -self.b[:, None, :] * self.dx
        cy = (-0.5 * self.c)[:, None, :] * self.dy * self.dy
        power = torch.addcmul(ax[:, None, :, :], bx[:, None, :, :], self.dy[:, :, None, :])
        power += cy[:, :, None, :]
        # exp of a large negative power lands in float32's subnormals, which a CPU computes many times slower;
        # below POWER_MIN alpha is far under ALPHA_MIN whatever the opacity, so the pair is masked out (forward
        # and backward) and the clamp changes no result
        self.gauss = power.clamp_(min=POWER_MIN).exp_()  # [Ta, row, col, S]
        self.raw = self.gauss * (opacities[s] * inside)[:, None, None, :]  # opacity * G before the clamp
        self.above_min = torch.ge(self.raw, ALPHA_MIN, out=torch.empty_like(self.raw))
        alpha = self.raw.clamp(max=ALPHA_MAX).mul_(self.above_min).view(ta, n_pix, n_s)
        self.alpha = alpha
        # scan[..., 0] = T at the chunk start, scan[..., j + 1] = T after splat j of the chunk.
        scan = torch.empty(ta, n_pix, n_s + 1, dtype=alpha.dtype, device=alpha.device)
        scan[..., 0] = t_start
        torch.sub(alpha.new_ones(()), alpha, out=scan[..., 1:])
        self.one_minus = scan[..., 1:]
        self.scan = torch.cumprod(scan, dim=-1)
        self.t_excl = self.scan[..., :-1]
        self.valid = torch.ge(self.scan[..., 1:], T_MIN, out=torch.empty_like(alpha))

    def weights(self) -> torch.Tensor:
        """alpha_j T_j of each pair that composites (0 for the others), [Ta, P, S]."""
        return (self.alpha * self.t_excl).mul_(self.valid)

    def advance(self, t_run: torch.Tensor, act: torch.Tensor, t_start: torch.Tensor) -> torch.Tensor:
        """Write into ``t_run`` the transmittance the chunk's tiles carry to the next depth slots (0 where a
        pixel stopped); return T after each pixel's last compositing splat, [Ta, P]."""
        n_valid = self.valid.sum(dim=-1)
        t_last = self.scan.gather(-1, n_valid.long()[..., None])[..., 0]  # T after the last valid splat
        t_run[act] = t_last * (n_valid == self.valid.shape[-1]).to(t_last.dtype)
        return t_last


def _starts_back_to_front(lay: _Layout, params: tuple[torch.Tensor, ...], saved: list):
    """(act, k0, k1, T at the chunk start) of every chunk the forward ran, last first. The forward kept the
    starts of the last segment; each earlier one is recomputed from the transmittance saved where it starts,
    to the same bits (the same chunks, the same operations)."""
    for snapshot, chunks, starts in reversed(saved):
        if starts is None:
            t_run = torch.ones(len(lay.sorted_counts), lay.ts * lay.ts, dtype=params[0].dtype, device=params[0].device)
            if snapshot is not None:
                t_run[snapshot[0]] = snapshot[1]
            starts = []
            for act, k0, k1 in chunks:
                t_start = t_run[act]
                _Chunk(lay, act, k0, k1, params, t_start).advance(t_run, act, t_start)
                starts.append((act, k0, k1, t_start))
        yield from reversed(starts)


class _Composite(torch.autograd.Function):
    @staticmethod
    def forward(ctx, means2d, conics, opacities, colors, background, bins: TileBins, tiles: BatchTiles, sizing):
        chunk_pairs, min_chunk, keep_bytes, drop = sizing
        dtype, device = means2d.dtype, means2d.device
        n_tiles, n_pix, n_ch = bins.tile_ids.shape[0], tiles.grids[0].tile_size ** 2, colors.shape[1]
        lay = _Layout(bins, tiles, dtype)
        params = (means2d, conics, opacities)

        accum = torch.zeros(n_tiles, n_pix, n_ch, dtype=dtype, device=device)
        t_run = torch.ones(n_tiles, n_pix, dtype=dtype, device=device)  # 0 once a pixel has terminated
        t_final = torch.ones(n_tiles, n_pix, dtype=dtype, device=device)
        sizes, every = lay.sizing(chunk_pairs, min_chunk, keep_bytes, t_run.element_size())
        saved = []  # per segment: (tiles, T) where it starts (None: all 1), its chunks, their starts or None
        for r, (tiles, chunks) in enumerate(lay.ranges(t_run, sizes, drop)):
            if r % every == 0:
                if saved:  # an earlier segment: the backward recomputes its starts
                    saved[-1][2] = None
                saved.append([(tiles, t_run[tiles]) if r else None, [], []])
            for act, k0, k1 in chunks:
                t_start = t_run[act]
                ch = _Chunk(lay, act, k0, k1, params, t_start)
                accum[act] += torch.bmm(ch.weights(), colors[ch.s])
                t_last = ch.advance(t_run, act, t_start)
                running = (t_start > 0).to(dtype)
                t_final[act] = running * t_last + (1.0 - running) * t_final[act]
                saved[-1][1].append((act, k0, k1))
                saved[-1][2].append((act, k0, k1, t_start))
        out = accum + t_final[..., None] * background
        save(ctx, (means2d, conics, opacities, colors, background, t_final), lay=lay, saved=saved)
        return out, 1.0 - t_final

    @staticmethod
    def backward(ctx, grad_out, grad_alpha):
        (means2d, conics, opacities, colors, background, t_final), state = load(ctx)
        lay: _Layout = state["lay"]
        params = (means2d, conics, opacities)
        g_m = torch.zeros_like(means2d)
        g_con = torch.zeros_like(conics)
        g_op = torch.zeros_like(opacities)
        g_col = torch.zeros_like(colors)
        grad_out = grad_out.contiguous()
        # R: d(loss)/d(light behind) summed per pixel, seeded with the background and the alpha output.
        back = t_final * ((grad_out * background).sum(-1) - grad_alpha)
        grad_bg = (grad_out * t_final[..., None]).sum(dim=(0, 1))
        for act, k0, k1, t_start in _starts_back_to_front(lay, params, state["saved"]):
            ch = _Chunk(lay, act, k0, k1, params, t_start)
            weight = ch.weights()
            g_img = grad_out[act]  # [Ta, P, C]
            col = colors[ch.s]  # [Ta, S, C]
            g_col.index_add_(0, ch.s.reshape(-1), torch.bmm(weight.transpose(1, 2), g_img).reshape(-1, col.shape[-1]))
            gc = torch.bmm(g_img, col.transpose(1, 2))  # [Ta, P, S]: grad . colour
            g = weight * gc
            csum = torch.cumsum(g, dim=-1)
            tot = csum[..., -1:]
            behind = back[act][..., None] + tot - csum  # light composited behind each splat
            back[act] += tot[..., 0]
            ta, ts, n_s = act.shape[0], lay.ts, ch.s.shape[1]
            keep = torch.lt(ch.raw, ALPHA_MAX, out=torch.empty_like(ch.raw)).mul_(ch.above_min)
            keep = keep.view(ta, ts * ts, n_s).mul_(ch.valid)  # pairs whose alpha is differentiable
            d_raw = (ch.t_excl * gc).sub_(behind.div_(ch.one_minus)).mul_(keep).view(ta, ts, ts, n_s)
            g_op.index_add_(0, ch.s.reshape(-1), (d_raw * ch.gauss).sum(dim=(1, 2)).reshape(-1))
            dq = d_raw * ch.raw  # d loss / d power, [Ta, row, col, S]
            col_sum = dq.sum(dim=1)  # [Ta, col, S]
            row_sum = dq.sum(dim=2)  # [Ta, row, S]
            cross = ((dq * ch.dx[:, None, :, :]).sum(dim=2) * ch.dy).sum(dim=1)  # sum dq dx dy, [Ta, S]
            sx = (col_sum * ch.dx).sum(dim=1)
            sy = (row_sum * ch.dy).sum(dim=1)
            sxx = (col_sum * ch.dx * ch.dx).sum(dim=1)
            syy = (row_sum * ch.dy * ch.dy).sum(dim=1)
            a, b, cc = ch.a, ch.b, ch.c
            idx = ch.s.reshape(-1)
            g_con.index_add_(0, idx, torch.stack([-0.5 * sxx, -cross, -0.5 * syy], dim=-1).reshape(-1, 3))
            g_m.index_add_(0, idx, torch.stack([-(a * sx + b * sy), -(b * sx + cc * sy)], dim=-1).reshape(-1, 2))
        return g_m, g_con, g_op, g_col, grad_bg, None, None, None


__all__ = ["composite_tiles", "ALPHA_MAX", "T_MIN"]
