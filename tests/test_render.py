"""The torch reference renderer: against a per-pixel loop, float64 gradcheck, tile subsets, culling, order."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from grendel_py.model.gaussians import Gaussians
from grendel_py.render import project, rasterize, rasterize_batch, render
from grendel_py.render.composite import composite_tiles
from grendel_py.render.intersect import BatchTiles, bin_splats, distinct_sorted, tile_spans
from grendel_py.render.projection import ALPHA_MIN, DILATION, Splats
from grendel_py.render.sh import eval_sh
from partition.tiles import TileGrid
from tests.render_scenes import loop_composite, random_gaussians, small_camera

BG = torch.tensor([0.2, 0.3, 0.4], dtype=torch.float64)
PARAMS = ("means", "log_scales", "quats", "opacity_logits", "sh0", "shN")


@pytest.mark.parametrize("opacity_shift, min_stopped", [(0.0, 0), (4.0, 10)])
def test_matches_per_pixel_loop(opacity_shift: float, min_stopped: int) -> None:
    cam = small_camera()
    gaussians = random_gaussians(150, seed=1, opacity_shift=opacity_shift)
    out = render(gaussians, cam, BG)
    image, alpha, stopped = loop_composite(out.splats, cam.width, cam.height, BG)
    assert stopped >= min_stopped  # the dense case really exercises early termination
    torch.testing.assert_close(out.image, image, rtol=0, atol=1e-12)
    torch.testing.assert_close(out.alpha, alpha, rtol=0, atol=1e-12)


def test_expected_depth_is_the_depths_composited_as_colours_over_alpha() -> None:
    cam = small_camera()
    gaussians = random_gaussians(150, seed=2, opacity_shift=1.0)
    out = render(gaussians, cam, BG, depth=True)
    z = out.splats.depths[:, None].expand(-1, 3)
    as_colours = dataclasses.replace(out.splats, colors=z)
    summed, alpha, _ = loop_composite(as_colours, cam.width, cam.height, torch.zeros(3, dtype=torch.float64))
    drawn = alpha > 0
    assert bool(drawn.any()) and not bool(drawn.all())
    torch.testing.assert_close(out.depth[drawn], summed[..., 0][drawn] / alpha[drawn], rtol=1e-10, atol=0)
    assert bool((out.depth[~drawn] == 0).all())
    visible = out.splats.depths[out.splats.visible]
    opaque = alpha > 0.5  # a weighted mean of the splats' depths
    assert bool(((out.depth[opaque] >= visible.min() - 1e-9) & (out.depth[opaque] <= visible.max() + 1e-9)).all())
    torch.testing.assert_close(render(gaussians, cam, BG).image, out.image, rtol=0, atol=0)


def test_float32_matches_float64() -> None:
    cam = small_camera(64, 48)
    g64 = random_gaussians(300, seed=2, opacity_shift=2.0)
    g32 = Gaussians(**{k: (v.float() if v.is_floating_point() else v) for k, v in vars(g64).items()})
    a = render(g64, cam, BG).image
    b = render(g32, cam, BG.float()).image
    assert (a - b.double()).abs().max() < 1e-4


def _leaf(gaussians: Gaussians) -> list[torch.Tensor]:
    return [getattr(gaussians, k).detach().clone().requires_grad_(True) for k in PARAMS]


@pytest.mark.parametrize("seed, antialiased", [(5, False), (6, False), (5, True)])
def test_gradcheck_end_to_end(seed: int, antialiased: bool) -> None:
    cam = small_camera(21, 19)
    base = random_gaussians(40, seed=seed, sh_degree=3, opacity_shift=1.0)

    def f(*tensors):
        out = render(Gaussians(*tensors, ids=base.ids), cam, BG, antialiased=antialiased)
        return out.image, out.alpha

    assert project(base, cam, antialiased=antialiased).visible.sum() >= 20
    assert torch.autograd.gradcheck(f, _leaf(base), eps=1e-7, atol=1e-6, rtol=1e-4, fast_mode=True)


@pytest.mark.parametrize("shift", [0.0, 4.0])
def test_gradcheck_composite(shift: float) -> None:
    cam = small_camera()
    splats = project(random_gaussians(80, seed=3, opacity_shift=shift), cam)
    grid = TileGrid(cam.width, cam.height)
    bins = bin_splats(splats, grid)
    inputs = [
        t.detach().clone().requires_grad_(True)
        for t in (splats.means2d, splats.conics, splats.opacities, splats.colors, BG)
    ]

    def f(m, c, o, col, bg):
        return composite_tiles(
            m, c, o, col, bg, bins, BatchTiles([grid], [None], m.device), chunk_pairs=8 * 256 * 3, min_chunk=1
        )

    assert torch.autograd.gradcheck(f, inputs, eps=1e-7, atol=1e-6, rtol=1e-4, fast_mode=True)


def test_chunking_does_not_change_result() -> None:
    cam = small_camera(48, 40)
    splats = project(random_gaussians(200, seed=4, opacity_shift=2.0), cam)
    grid = TileGrid(cam.width, cam.height)
    bins = bin_splats(splats, grid)
    args = (
        splats.means2d,
        splats.conics,
        splats.opacities,
        splats.colors,
        BG,
        bins,
        BatchTiles([grid], [None], BG.device),
    )
    ref = composite_tiles(*args, chunk_pairs=1 << 30)  # one chunk
    for pairs, min_chunk in ((1, 1), (7 * 256, 1), (1, 32), (40 * 256, 5)):
        out = composite_tiles(*args, chunk_pairs=pairs, min_chunk=min_chunk)
        torch.testing.assert_close(out[0], ref[0], rtol=0, atol=1e-13)


def _composited(splats, bins, grid: TileGrid, weights: torch.Tensor, **sizing) -> list[torch.Tensor]:
    """The compositor's colours and alpha over ``grid``'s tiles, then the gradients of the splats' fields and
    the background for a loss weighting the colours by ``weights`` (``sizing``: composite_tiles' options)."""
    leaves = [
        t.detach().clone().requires_grad_(True)
        for t in (splats.means2d, splats.conics, splats.opacities, splats.colors, BG)
    ]
    colors, alpha = composite_tiles(*leaves, bins, BatchTiles([grid], [None], BG.device), **sizing)
    ((colors * weights).sum() + alpha.square().sum()).backward()
    return [colors.detach(), alpha.detach(), *(t.grad for t in leaves)]


def _saved_segments(monkeypatch: pytest.MonkeyPatch) -> list[list]:
    """What each compositing's forward saves for its backward, per segment (snapshot, chunks, starts),
    appended to the list returned as the compositor saves it."""
    from grendel_py.render import composite

    seen: list[list] = []
    real = composite.save

    def spy(ctx, tensors, **state):
        seen.append(state["saved"])
        real(ctx, tensors, **state)

    monkeypatch.setattr(composite, "save", spy)
    return seen


@pytest.mark.parametrize("drop", [False, True])
def test_recomputed_chunk_starts_give_the_same_gradients(drop: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """With many depth ranges and no room to keep every chunk's start, the compositor keeps T only where its
    segments start and recomputes the chunk starts of all but the last segment in the backward: the same
    image and gradients, bit for bit, as keeping every chunk's start (whether finished tiles leave the
    ranges or not)."""
    from grendel_py.render.composite import _Layout

    cam = small_camera(48, 40)
    splats = project(random_gaussians(200, seed=4, opacity_shift=2.0), cam)
    grid = TileGrid(cam.width, cam.height)
    bins = bin_splats(splats, grid)
    weights = torch.randn(len(bins.tile_ids), 256, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    seen = _saved_segments(monkeypatch)

    def run(keep_bytes: int) -> list[torch.Tensor]:
        sizing = dict(chunk_pairs=5 * 256 * 2, min_chunk=2, keep_bytes=keep_bytes, drop_finished=drop)
        return _composited(splats, bins, grid, weights, **sizing)

    sparse = run(0)
    assert len(seen[-1]) >= 4 and [starts is None for _, _, starts in seen[-1]].count(False) == 1
    for got, want in zip(sparse, run(1 << 30)):
        assert torch.equal(got, want)
    assert len(seen[-1]) == 1  # every start kept: one segment
    lay = _Layout(bins, BatchTiles([grid], [None], BG.device), torch.float64)
    sizes, every = lay.sizing(5 * 256 * 2, 2, 1 << 30, 8)
    n_ranges = len(list(lay.ranges(torch.ones(len(bins.tile_ids), 256, dtype=torch.float64), sizes, False)))
    assert every == n_ranges and lay.sizing(5 * 256 * 2, 2, 0, 8)[1] == math.ceil(math.sqrt(n_ranges))


def test_ranges_leaving_out_finished_tiles_run_fewer_deeper_chunks_to_the_same_result(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """On the CPU each depth range leaves out the tiles whose pixels have all stopped and is sized by the
    tiles left: fewer chunks and fewer (tile, slot) pairs than computing every tile to the end of its list
    (as on a GPU), and the same image, alpha and gradients to float rounding."""

    cam = small_camera(48, 40)
    splats = project(random_gaussians(3000, seed=4, opacity_shift=6.0), cam)
    grid = TileGrid(cam.width, cam.height)
    bins = bin_splats(splats, grid)
    weights = torch.randn(len(bins.tile_ids), 256, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    seen = _saved_segments(monkeypatch)

    def run(drop: bool) -> tuple[list[torch.Tensor], list[tuple[torch.Tensor, int, int]]]:
        sizing = dict(chunk_pairs=4 * 256 * 2, min_chunk=2, drop_finished=drop)
        out = _composited(splats, bins, grid, weights, **sizing)
        return out, [c for _, chunks, _ in seen[-1] for c in chunks]

    want, every_tile = run(False)
    got, live_only = run(True)
    assert len(live_only) < len(every_tile)
    assert sum(len(t) * (k1 - k0) for t, k0, k1 in live_only) < sum(len(t) * (k1 - k0) for t, k0, k1 in every_tile)
    ranges = [sorted({(k0, k1) for _, k0, k1 in chunks}) for chunks in (live_only, every_tile)]
    first = next(i for i, (a, b) in enumerate(zip(*ranges)) if a != b)  # the first range over fewer tiles
    assert ranges[0][first][0] == ranges[1][first][0] and ranges[0][first][1] > ranges[1][first][1]  # deeper
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def _planned_chunks(lay, chunk_pairs: int | None, min_chunk: int) -> list[tuple[torch.Tensor, int, int]]:
    """The chunks the compositor runs over ``lay``'s tiles when every tile is computed to its end."""
    sizes = lay.sizing(chunk_pairs, min_chunk, 0, 4)[0]
    t_run = torch.ones(len(lay.sorted_counts), 256, dtype=torch.float64)
    return [c for _, chunks in lay.ranges(t_run, sizes, False) for c in chunks]


def test_chunks_cover_each_tile_slot_once_within_the_pair_budget() -> None:
    """The compositor's plan: every (tile, depth slot) with a splat in exactly one chunk, chunks of at most
    ``chunk_pairs`` pairs (or one tile), also when the live tiles times ``min_chunk`` exceed the budget."""
    from grendel_py.render.composite import MIN_CHUNK, _Layout, compositor_work

    cam = small_camera(48, 40)
    splats = project(random_gaussians(200, seed=4, opacity_shift=2.0), cam)
    grid = TileGrid(cam.width, cam.height)
    bins = bin_splats(splats, grid)
    lay = _Layout(bins, BatchTiles([grid], [None], BG.device), torch.float64)
    counts = bins.counts.tolist()
    k_max = max(counts)
    for pairs, min_chunk in ((1, 1), (3 * 256 * 4, 4), (256 * 8, 32), (1 << 30, 32)):
        covered = torch.zeros(len(counts), k_max, dtype=torch.int64)
        for tiles, k0, k1 in _planned_chunks(lay, pairs, min_chunk):
            assert len(tiles) * 256 * (k1 - k0) <= max(pairs, 256 * (k1 - k0))
            covered[tiles, k0:k1] += 1
        want = (torch.arange(k_max)[None, :] < torch.tensor(counts)[:, None]).long()
        assert torch.equal(covered * want, want), (pairs, min_chunk)
    # what the stage clock and the planner count: every chunk's tiles times its slots, the chunks, the largest
    chunks = _planned_chunks(lay, None, MIN_CHUNK)
    assert compositor_work(np.array(counts), 256) == (
        sum(len(t) * (k1 - k0) for t, k0, k1 in chunks),
        len(chunks),
        max(len(t) * (k1 - k0) for t, k0, k1 in chunks) * 256,
    )


def test_a_small_compositing_splits_its_tiles_into_fewer_groups() -> None:
    """Where the default chunks start at most SMALL_STEP_STARTS pixel values, the same depth slots in chunks
    whose tiles are split into groups only past SMALL_STEP_GROUP_PAIRS (fewer operations); past it, and for a
    size the caller gives, the default chunks."""
    from grendel_py.render import composite
    from grendel_py.render.composite import CHUNK_PAIRS, MIN_CHUNK, SMALL_STEP_GROUP_PAIRS, plan_chunks, schedule

    counts = [100] * 256  # a 256 x 256 view, 100 splats a tile: 1,024 tile starts in chunks of CHUNK_PAIRS
    small = schedule(counts, 256, CHUNK_PAIRS, MIN_CHUNK, SMALL_STEP_GROUP_PAIRS)
    large = schedule(counts, 256, CHUNK_PAIRS, MIN_CHUNK)
    assert [c[2:] for c in small] == [(0, 32), (32, 64), (64, 96), (96, 100)]  # one chunk per depth range
    assert len(large) == 13 and sorted({c[2:] for c in large}) == [c[2:] for c in small]  # 3 ranges in 4 groups
    assert composite.SMALL_STEP_STARTS >= 1024 * 256 and plan_chunks(counts, 256) == small
    assert plan_chunks(counts, 256, chunk_pairs=CHUNK_PAIRS) == large
    many = [100] * 256 * 128  # 128 such views: 2^25 starts
    assert plan_chunks(many, 256) == schedule(many, 256, CHUNK_PAIRS, MIN_CHUNK)


def test_tile_subsets_partition_image_and_gradients() -> None:
    """Rendering disjoint tile subsets gives the full image's pixels, and their gradients add up to the
    full image's gradients: the property the distributed engine relies on."""
    cam = small_camera(70, 45)
    base = random_gaussians(120, seed=6, opacity_shift=1.0)
    grid = TileGrid(cam.width, cam.height)
    weights = torch.randn(cam.height, cam.width, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))

    def loss_and_grads(tile_ids):
        leaves = _leaf(base)
        out = render(Gaussians(*leaves, ids=base.ids), cam, BG, tile_ids=tile_ids)
        mask = grid.pixel_mask(out.bins.tile_ids)[..., None]
        loss = (out.image * weights * mask).sum()
        loss.backward()
        return out.image, mask, [p.grad for p in leaves]

    full_image, _, full_grads = loss_and_grads(None)
    parts = [grid.rect_tiles(0, 0, 3, 2), grid.rect_tiles(3, 0, grid.nx, 2), grid.rect_tiles(0, 2, grid.nx, grid.ny)]
    total = [torch.zeros_like(g) for g in full_grads]
    for tiles in parts:
        image, mask, grads = loss_and_grads(tiles)
        assert torch.equal(image * mask, full_image * mask)
        assert torch.equal(image[~mask[..., 0]], BG.expand(int((~mask).sum()), 3))
        total = [t + g for t, g in zip(total, grads)]
    for t, g in zip(total, full_grads):
        torch.testing.assert_close(t, g, rtol=1e-10, atol=1e-12)


def test_order_of_gaussians_does_not_matter() -> None:
    cam = small_camera(40, 33)
    g = random_gaussians(200, seed=7, opacity_shift=2.0)
    g.means[1] = g.means[0]  # an exact depth tie, broken by global id
    perm = torch.randperm(200, generator=torch.Generator().manual_seed(1))
    a = render(g, cam, BG)
    b = render(g.select(perm), cam, BG)
    # Same compositing sequence (by global id) in every tile; pixels equal up to the last bit of sigmoid.
    assert torch.equal(a.splats.ids[a.bins.splat_index], b.splats.ids[b.bins.splat_index])
    assert torch.equal(a.bins.offsets, b.bins.offsets)
    torch.testing.assert_close(a.image, b.image, rtol=0, atol=1e-14)


def test_binning_is_conservative_and_tight() -> None:
    """Every (pixel, splat) pair with alpha >= 1/255 is binned to the pixel's tile; every binned splat's box
    touches its tile."""
    cam = small_camera(50, 40)
    splats = project(random_gaussians(150, seed=8), cam)
    grid = TileGrid(cam.width, cam.height)
    bins = bin_splats(splats, grid)
    listed = torch.zeros(grid.n_tiles, len(splats), dtype=torch.bool)
    for k in range(grid.n_tiles):
        listed[k, bins.splat_index[bins.offsets[k] : bins.offsets[k + 1]]] = True
    ys, xs = torch.meshgrid(torch.arange(cam.height) + 0.5, torch.arange(cam.width) + 0.5, indexing="ij")
    d = splats.means2d[:, None, None, :] - torch.stack([xs, ys], -1)[None].double()
    a, b, c = splats.conics.unbind(-1)
    power = (
        -0.5 * (a[:, None, None] * d[..., 0] ** 2 + c[:, None, None] * d[..., 1] ** 2)
        - b[:, None, None] * d[..., 0] * d[..., 1]
    )
    reach = (splats.opacities[:, None, None] * power.exp() >= ALPHA_MIN) & splats.visible[:, None, None]
    tile_of_pixel = (ys.long() // 16) * grid.nx + xs.long() // 16
    for s in range(len(splats)):
        assert listed[tile_of_pixel[reach[s]], s].all()
    tx0, tx1, ty0, ty1 = tile_spans(splats, grid)
    for k in range(grid.n_tiles):
        for s in bins.splat_index[bins.offsets[k] : bins.offsets[k + 1]].tolist():
            assert tx0[s] <= k % grid.nx <= tx1[s] and ty0[s] <= k // grid.nx <= ty1[s]


def test_culling() -> None:
    cam = small_camera()
    g = random_gaussians(4, seed=9)
    g.means[0] = torch.tensor([0.0, -1.0, -3.6], dtype=torch.float64)  # behind the camera
    g.means[1] = torch.tensor([60.0, 0.0, 0.0], dtype=torch.float64)  # far outside the image
    g.opacity_logits[2] = math.log(0.003 / 0.997)  # opacity below 1/255: can never reach alpha 1/255
    g.means[3] = torch.zeros(3, dtype=torch.float64)
    splats = project(g, cam)
    assert splats.visible.tolist() == [False, False, False, True]
    assert set(bin_splats(splats, TileGrid(cam.width, cam.height)).splat_index.tolist()) == {3}


def test_projection_of_isotropic_gaussian() -> None:
    cam = small_camera(64, 64)
    center = cam.center.clone()
    forward = cam.R[2]
    g = random_gaussians(1, seed=10, sh_degree=0)
    g.means[0] = center + 4.0 * forward
    g.log_scales[0] = math.log(0.05)
    splats = project(g, cam)
    torch.testing.assert_close(splats.means2d[0], torch.tensor([cam.cx, cam.cy], dtype=torch.float64))
    var = (cam.fx * 0.05 / 4.0) ** 2 + DILATION
    var_y = (cam.fy * 0.05 / 4.0) ** 2 + DILATION
    torch.testing.assert_close(splats.conics[0], torch.tensor([1 / var, 0.0, 1 / var_y], dtype=torch.float64))
    torch.testing.assert_close(splats.depths[0], torch.tensor(4.0, dtype=torch.float64))


@pytest.mark.parametrize("sigma_px", [0.2, 4.0])
def test_antialiasing_keeps_a_gaussians_total_contribution(sigma_px: float) -> None:
    """A Gaussian's alpha summed over the pixels is about o 2 pi sigma^2 (its integral) with the antialiasing
    filter at any size; without it, the 0.3 px dilation makes a sub-pixel Gaussian a pixel-sized blob of
    o 2 pi (sigma^2 + 0.3). For a large Gaussian the two agree. (The 1/255 cutoff drops a few % of the tails.)"""
    cam = small_camera(64, 64)
    g = random_gaussians(1, seed=10, sh_degree=0)
    g.means[0] = cam.center + 4.0 * cam.R[2]
    g.log_scales[0] = math.log(sigma_px * 4.0 / cam.fx)  # isotropic: sigma_px along x, fy / fx of it along y
    g.opacity_logits[0] = math.log(0.9 / 0.1)
    sx, sy = sigma_px, sigma_px * cam.fy / cam.fx
    integral = 0.9 * 2 * math.pi * sx * sy
    plain, filtered = (float(render(g, cam, antialiased=aa).alpha.sum()) for aa in (False, True))
    assert integral * 0.93 < filtered < integral
    ratio = sx**2 * sy**2 / ((sx**2 + DILATION) * (sy**2 + DILATION))  # the opacity factor's square
    torch.testing.assert_close(
        project(g, cam, antialiased=True).opacities, 0.9 * torch.tensor([ratio], dtype=torch.float64).sqrt()
    )
    if sigma_px < 1:
        assert plain > 5 * filtered
    else:
        assert plain == pytest.approx(filtered, rel=0.02)


def test_sh_basis_is_orthonormal() -> None:
    n = 50_000
    i = torch.arange(n, dtype=torch.float64) + 0.5
    z = 1 - 2 * i / n
    phi = math.pi * (1 + 5**0.5) * i
    r = (1 - z * z).sqrt()
    dirs = torch.stack([r * phi.cos(), r * phi.sin(), z], -1)  # Fibonacci sphere
    basis = torch.stack(
        [eval_sh(3, torch.eye(16, dtype=torch.float64)[k].expand(n, 16)[..., None], dirs)[:, 0] for k in range(16)]
    )
    gram = basis @ basis.T * (4 * math.pi / n)
    torch.testing.assert_close(gram, torch.eye(16, dtype=torch.float64), atol=1e-3, rtol=0)


def test_rasterize_returns_requested_tiles_only() -> None:
    cam = small_camera(64, 64)
    splats = project(random_gaussians(50, seed=11), cam)
    grid = TileGrid(64, 64)
    colors, alpha, bins = rasterize(splats, grid, BG, torch.tensor([5, 2, 2]))
    assert bins.tile_ids.tolist() == [2, 5]
    assert colors.shape == (2, 256, 3) and alpha.shape == (2, 256)


def _concat(parts: list[Splats]) -> Splats:
    return Splats(**{f.name: torch.cat([getattr(s, f.name) for s in parts]) for f in dataclasses.fields(Splats)})


def test_a_batch_renders_as_its_cameras_one_by_one() -> None:
    """rasterize_batch over cameras of different sizes and tile selections (all, a subset, none) gives each
    camera's tiles, bins and gradients as rasterizing it alone does."""
    cams = [
        small_camera(37, 29, uid=0),
        small_camera(50, 33, uid=1),
        small_camera(21, 45, uid=2),
        small_camera(40, 20, uid=3),
    ]
    grids = [TileGrid(c.width, c.height) for c in cams]
    gen = torch.Generator().manual_seed(3)
    selections = [
        None,
        torch.randperm(grids[1].n_tiles, generator=gen)[:5].sort().values,
        torch.zeros(0, dtype=torch.long),
        torch.tensor([1, 3]),
    ]
    base = random_gaussians(150, seed=9, opacity_shift=2.0)
    weights = [torch.randn(g.n_tiles, 256, 3, dtype=torch.float64, generator=gen) for g in grids]

    def run(batched: bool):
        leaves = _leaf(base)
        model = Gaussians(*leaves, ids=base.ids)
        splats = [project(model, cam) for cam in cams]
        if batched:
            tiles = BatchTiles(grids, selections, BG.device)
            colors, alpha, bins = rasterize_batch(_concat(splats), [len(s) for s in splats], tiles, BG)
            per_camera = tiles.split(colors)
            ids = tiles.tile_ids
        else:
            outs = [rasterize(s, g, BG, t) for s, g, t in zip(splats, grids, selections)]
            per_camera, ids = [o[0] for o in outs], [o[2].tile_ids for o in outs]
        loss = sum((c * w[i]).sum() for c, w, i in zip(per_camera, weights, ids))
        loss.backward()
        return [c.detach() for c in per_camera], ids, [p.grad for p in leaves]

    (batch_colors, batch_ids, batch_grads), (one_colors, one_ids, one_grads) = run(True), run(False)
    assert [len(t) for t in batch_ids] == [grids[0].n_tiles, 5, 0, 2]
    for a, b, ia, ib in zip(batch_colors, one_colors, batch_ids, one_ids):
        assert torch.equal(ia, ib)
        torch.testing.assert_close(a, b, rtol=0, atol=1e-14)
    for a, b in zip(batch_grads, one_grads):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


def test_distinct_sorted_is_unique_with_padding() -> None:
    gen = torch.Generator().manual_seed(0)
    for n in (0, 1, 7, 500):
        keys = torch.randint(0, 40, (n,), generator=gen)
        keys[torch.rand(n, generator=gen) < 0.3] = 99  # the sentinel
        got = distinct_sorted(keys, 99)
        want = torch.unique(keys[keys != 99])
        assert got.shape == keys.shape
        assert torch.equal(got[: len(want)], want) and bool((got[len(want) :] == 99).all())


@pytest.mark.parametrize("piece", [1 << 18, 64])
def test_projection_keeps_only_the_parameters_and_gives_the_plain_gradients(
    piece: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """render.project keeps only its inputs and outputs for autograd and recomputes the rest, in pieces of
    ``PROJECT_ROWS`` Gaussians: the same outputs and gradients, bit for bit, as the backend's projection
    recorded whole, and nothing saved per Gaussian but the parameters and the ids themselves."""
    from grendel_py import backward_state
    from grendel_py.render import batch_projection, torch_backend

    monkeypatch.setattr(batch_projection, "PROJECT_ROWS", piece)
    monkeypatch.setattr(backward_state, "KEEP_BYTES", 0)  # recomputed whatever the size

    cam = small_camera(64, 48)
    g = random_gaussians(300, seed=11)
    leaves = _leaf(g)
    model = Gaussians(*leaves, ids=g.ids)
    saved: list[torch.Tensor] = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        s = project(model, cam)
    params = {p.untyped_storage().data_ptr() for p in [*leaves, model.ids]}  # the model's own tensors
    assert all(t.untyped_storage().data_ptr() in params for t in saved if t.numel() >= len(g))
    weights = [
        torch.rand(t.shape, generator=torch.Generator().manual_seed(i), dtype=t.dtype)
        for i, t in enumerate((s.means2d, s.conics, s.colors, s.depths, s.opacities))
    ]

    def loss(splats):
        fields = (splats.means2d, splats.conics, splats.colors, splats.depths, splats.opacities)
        return sum((f * w).sum() for f, w in zip(fields, weights))

    grads = torch.autograd.grad(loss(s), leaves)
    plain = torch_backend.project(
        model.means, model.quats, model.scales(), model.opacities(), model.sh(), model.sh_degree, cam, model.ids
    )
    for a, b in zip(
        (s.means2d, s.conics, s.colors, s.depths), (plain.means2d, plain.conics, plain.colors, plain.depths)
    ):
        assert torch.equal(a, b)
    for got, want in zip(grads, torch.autograd.grad(loss(plain), leaves)):
        assert torch.equal(got, want)
    monkeypatch.setattr(backward_state, "KEEP_BYTES", 1 << 30)  # small enough to keep: the same bits
    kept = project(model, cam)
    assert torch.equal(kept.colors, s.colors)
    for got, want in zip(torch.autograd.grad(loss(kept), leaves), grads):
        assert torch.equal(got, want)


@pytest.mark.parametrize("piece", [1 << 18, 64])
def test_projecting_only_what_each_camera_sees_changes_no_pixel_or_gradient(
    piece: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """project_batch keeps, per camera, exactly the rows project gives a non-zero extent (Gaussians off
    screen, behind the camera or too faint are dropped before autograd records anything), with the same
    values bit for bit, and the batch renders to the same pixels and gradients as projecting everything."""
    from grendel_py.data.cameras import look_at
    from grendel_py.render import batch_projection, project_batch, visible_rows

    monkeypatch.setattr(batch_projection, "PROJECT_ROWS", piece)
    base = random_gaussians(400, seed=12, opacity_shift=1.0)
    base.means = base.means * 3.0  # many off screen, some behind the cameras (3.7 units away)
    base.opacity_logits[::7] = -9.0  # too faint for alpha 1/255 anywhere
    R, t = look_at(torch.tensor([2.5, -1.0, -2.5]), torch.zeros(3), torch.tensor([0.0, -1.0, 0.0]))
    cams = [small_camera(37, 29, uid=0), dataclasses.replace(small_camera(50, 33, uid=1), R=R, t=t)]
    grids = [TileGrid(c.width, c.height) for c in cams]
    gen = torch.Generator().manual_seed(4)
    weights = [torch.randn(g.n_tiles, 256, 3, dtype=torch.float64, generator=gen) for g in grids]

    def run(culled: bool):
        leaves = _leaf(base)
        model = Gaussians(*leaves, ids=base.ids)
        if culled:
            splats, parts, rows = project_batch(model, cams, 1)
        else:
            every = [project(model, cam) for cam in cams]
            splats, parts, rows = (
                _concat(every),
                [len(s) for s in every],
                torch.cat([torch.arange(len(s)) for s in every]),
            )
        tiles = BatchTiles(grids, [None, None], BG.device)
        colors, _, _ = rasterize_batch(splats, parts, tiles, BG)
        loss = sum((c * w).sum() for c, w in zip(tiles.split(colors), weights))
        loss.backward()
        return splats, parts, rows, colors.detach(), [p.grad for p in leaves]

    culled, whole = run(True), run(False)
    visible, counts = visible_rows(base, cams)
    start = 0
    for b, cam in enumerate(cams):
        full = project(base, cam)
        want = full.visible.nonzero().squeeze(1)
        assert 0 < len(want) < len(base) * 0.8 and torch.equal(visible[b], want) and counts[b] == len(want)
        mine = culled[0].select(slice(start, start + counts[b]))
        assert torch.equal(culled[2][start : start + counts[b]], want)
        for f in dataclasses.fields(Splats):  # elementwise kernels may round a gathered row differently (SIMD tails)
            torch.testing.assert_close(
                getattr(mine, f.name).detach(), getattr(full.select(want), f.name).detach(), rtol=1e-14, atol=0
            )
        start += counts[b]
    assert culled[1] == counts and len(culled[0]) == sum(counts)
    torch.testing.assert_close(culled[3], whole[3], rtol=0, atol=1e-14)
    for a, b in zip(culled[4], whole[4]):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("piece", [1 << 18, 64])
def test_batch_projection_adds_its_gradients_into_grad_itself(piece: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """project_batch's backward adds the parameters' gradients into their ``.grad`` (created by the first
    pass, then the same tensor) without handing them to autograd's accumulation, whose second
    gradient-sized buffer a pass after another would need: over two passes (two cameras, one each) the
    ``.grad`` equals the sum of the plain projection's gradients, and autograd was handed none."""
    from grendel_py.render import batch_projection, project_batch

    monkeypatch.setattr(batch_projection, "PROJECT_ROWS", piece)
    base = random_gaussians(300, seed=14, opacity_shift=1.0)
    base.means = base.means * 2.0
    cams = [small_camera(40, 30, uid=0), small_camera(33, 41, uid=1)]
    gen = torch.Generator().manual_seed(2)
    weights = [torch.randn(len(base), n, dtype=torch.float64, generator=gen) for n in (2, 3, 3, 1)]

    def loss(splats: Splats, rows: torch.Tensor) -> torch.Tensor:
        fields = (splats.means2d, splats.conics, splats.colors, splats.depths.unsqueeze(-1))
        return sum((f * w[rows]).sum() for f, w in zip(fields, weights))

    leaves = _leaf(base)
    handed = []  # gradients handed to autograd for the leaves (its hooks see None when there is none)
    for leaf in leaves:
        leaf.register_hook(lambda g: handed.append(g) if g is not None else None)
    model = Gaussians(*leaves, ids=base.ids)
    grads = []
    for cam in cams:
        splats, _, rows = project_batch(model, [cam], 1)
        loss(splats, rows).backward()
        grads.append([leaf.grad for leaf in leaves])
    assert handed == []
    assert all(a is b for a, b in zip(*grads))  # the first pass's .grad, added into by the second

    plain_leaves = _leaf(base)
    plain = Gaussians(*plain_leaves, ids=base.ids)
    want = [torch.zeros_like(p) for p in plain_leaves]
    for cam in cams:
        s = project(plain, cam)
        seen = s.visible.nonzero().squeeze(1)
        assert 0 < len(seen) < len(base)
        for w, g in zip(want, torch.autograd.grad(loss(s.select(seen), seen), plain_leaves)):
            w += g
    for got, w in zip(grads[1], want):
        torch.testing.assert_close(got, w, rtol=1e-12, atol=1e-14)


def test_power_clamp_changes_no_result(monkeypatch: pytest.MonkeyPatch) -> None:
    """The compositor clamps the Gaussian's exponent at POWER_MIN (subnormal exps are slow on a CPU): the image
    and every gradient are bit for bit those without the clamp, on a scene of tiny, sharp splats whose far
    pixels' exponents go far below it."""
    from grendel_py.render import composite

    cam = small_camera(48, 40)
    base = random_gaussians(300, seed=7, opacity_shift=2.0)
    base = dataclasses.replace(base, log_scales=base.log_scales - 3.0)  # sigmas ~ 1/20: exponents far below -80

    def run() -> list[torch.Tensor]:
        leaves = _leaf(base)
        out = render(Gaussians(*leaves, ids=base.ids), cam, BG)
        (out.image * torch.linspace(0.2, 1.0, 3, dtype=out.image.dtype)).sum().backward()
        return [out.image.detach(), *(p.grad for p in leaves)]

    clamped = run()
    monkeypatch.setattr(composite, "POWER_MIN", -math.inf)
    for a, b in zip(clamped, run()):
        assert torch.equal(a, b)
