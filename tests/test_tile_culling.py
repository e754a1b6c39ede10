"""Exact tile culling (render/intersect.py ``tile_reached``): conservative at every pixel the renderers
composite, tight against an independent minimum, and without effect on images and gradients."""

from __future__ import annotations

import math

import pytest
import torch

from grendel_py.render import intersect
from grendel_py.render.composite import composite_tiles
from grendel_py.render.intersect import CULL_SLACK, CULL_SLACK_REL, BatchTiles, bin_batch, tile_pairs
from grendel_py.render.projection import ALPHA_MIN, DILATION, Splats
from partition.tiles import TileGrid


def needle_splats(n: int, width: int, height: int, seed: int, dtype: torch.dtype = torch.float32) -> Splats:
    """Random splats as projection makes them, many thin and tilted (long sigma up to 60 px, short down to
    the dilation), some centred off the image, opacities from below 1/255 to 1; boxes as in projection."""
    gen = torch.Generator().manual_seed(seed)

    def uniform(lo: float, hi: float, *shape: int) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(*shape, generator=gen, dtype=torch.float64)

    means2d = torch.stack([uniform(-40, width + 40, n), uniform(-40, height + 40, n)], -1)
    long, short, angle = uniform(0.5, 60, n), uniform(0.0, 3, n), uniform(0, math.pi, n)
    cos, sin = angle.cos(), angle.sin()
    var_x = long**2 * cos**2 + short**2 * sin**2 + DILATION
    var_y = long**2 * sin**2 + short**2 * cos**2 + DILATION
    cov_xy = (long**2 - short**2) * cos * sin
    det = var_x * var_y - cov_xy**2
    conics = torch.stack([var_y / det, -cov_xy / det, var_x / det], -1)
    opacities = uniform(0.002, 1.0, n)
    k = 2 * torch.log(torch.clamp_min(opacities / ALPHA_MIN, 1.0))
    extents = torch.stack([torch.ceil(torch.sqrt(k * var_x)), torch.ceil(torch.sqrt(k * var_y))], -1).to(torch.int32)
    return Splats(
        means2d.to(dtype),
        conics.to(dtype),
        uniform(1, 10, n).to(dtype),
        opacities.to(dtype),
        uniform(0, 1, n, 3).to(dtype),
        extents,
        torch.arange(n) * 7 + 3,
    )


def pixel_reach(splats: Splats, rows: torch.Tensor, tiles: torch.Tensor, grid: TileGrid) -> torch.Tensor:
    """Whether any pixel centre of each pair's tile gets alpha >= 1/255, bool [M], from the exponent in
    float32 in the compositor's order, the kernels' order (cuda/raster.cuh splat_power) and in float64."""
    ts = grid.tile_size
    offs = torch.arange(ts, dtype=torch.float64) + 0.5
    px = ((tiles % grid.nx) * ts).double()[:, None, None] + offs[None, None, :]  # [M, 1, ts]
    py = ((tiles // grid.nx) * ts).double()[:, None, None] + offs[None, :, None]  # [M, ts, 1]
    reached = torch.zeros(rows.shape[0], dtype=torch.bool)
    for dtype in (torch.float32, torch.float64):
        m = splats.means2d[rows].to(dtype)
        a, b, c = splats.conics[rows].to(dtype).unbind(-1)
        o = splats.opacities[rows].to(dtype)
        dx = m[:, 0, None, None] - px.to(dtype)
        dy = m[:, 1, None, None] - py.to(dtype)
        a, b, c, o = (v[:, None, None] for v in (a, b, c, o))
        composite = (-0.5 * a) * dx * dx + (-b * dx) * dy + (-0.5 * c) * dy * dy
        kernels = ((-0.5 * a) * dx) * dx - (b * dx) * dy - ((0.5 * c) * dy) * dy
        for power in (composite, kernels):
            reached |= (o * power.exp() >= ALPHA_MIN).flatten(1).any(1)
    return reached


def rectangle_minimum(
    splats: Splats, rows: torch.Tensor, tiles: torch.Tensor, grid: TileGrid
) -> tuple[torch.Tensor, ...]:
    """In float64, independently of the two-edge shortcut: the exponent's minimum over each tile's rectangle
    of pixel centres (0 if it holds the mean, else the least of the four edges' clamped minima), and the
    size of its terms over the rectangle (the scale of the culling's relative slack)."""
    ts = grid.tile_size
    m = splats.means2d[rows].double()
    a, b, c = splats.conics[rows].double().unbind(-1)
    x0, y0 = ((tiles % grid.nx) * ts).double(), ((tiles // grid.nx) * ts).double()
    dx = torch.stack([m[:, 0] - (x0 + ts - 0.5), m[:, 0] - (x0 + 0.5)], -1)  # [M, 2]: lo, hi
    dy = torch.stack([m[:, 1] - (y0 + ts - 0.5), m[:, 1] - (y0 + 0.5)], -1)

    def q(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return 0.5 * a * x * x + b * x * y + 0.5 * c * y * y

    inside = (dx[:, 0] <= 0) & (dx[:, 1] >= 0) & (dy[:, 0] <= 0) & (dy[:, 1] >= 0)
    edges = []
    for k in range(2):
        edges.append(q(dx[:, k], torch.clamp(-b * dx[:, k] / c, dy[:, 0], dy[:, 1])))
        edges.append(q(torch.clamp(-b * dy[:, k] / a, dx[:, 0], dx[:, 1]), dy[:, k]))
    q_min = torch.where(inside, 0.0, torch.stack(edges).min(0).values)
    far_x, far_y = dx.abs().max(-1).values, dy.abs().max(-1).values
    return q_min, 0.5 * a * far_x**2 + 0.5 * c * far_y**2 + b.abs() * far_x * far_y


@pytest.mark.parametrize("seed, size", [(0, (300, 200)), (1, (97, 61)), (2, (16, 16))])
def test_culling_keeps_every_reached_tile_and_drops_the_rest(seed: int, size: tuple[int, int]) -> None:
    grid = TileGrid(*size)
    splats = needle_splats(400, *size, seed)
    rows, tiles = tile_pairs(splats, [len(splats)], [grid], cull=False)
    _, culled = tile_pairs(splats, [len(splats)], [grid])
    kept = culled < grid.n_tiles
    assert torch.equal(culled[kept], tiles[kept])  # the culled pairs are the box pairs, minus some

    reached = pixel_reach(splats, rows, tiles, grid)
    assert reached.any()
    assert not (reached & ~kept).any(), "a tile that a renderer composites was culled"

    q_min, terms = rectangle_minimum(splats, rows, tiles, grid)
    bound = torch.log(splats.opacities[rows].double() / ALPHA_MIN) + CULL_SLACK + CULL_SLACK_REL * terms
    decided = (q_min - bound).abs() > 1e-5 * (1 + terms)  # away from float32's rounding of the test itself
    assert torch.equal(kept[decided], (q_min <= bound)[decided])
    assert int(decided.sum()) >= 0.99 * rows.shape[0]
    if size != (16, 16):
        assert int(kept.sum()) < 0.6 * rows.shape[0]  # needles: most of their boxes is culled


def test_culled_binning_renders_the_same_image_and_gradients() -> None:
    """The torch compositor over the culled bins and over the whole boxes' bins: the same pixels, alpha
    and gradients up to float64 summation order (the dropped splats contribute exact zeros)."""
    grid = TileGrid(131, 77)
    splats = needle_splats(600, grid.width, grid.height, 5, torch.float64)
    tiles = BatchTiles([grid], [None], torch.device("cpu"))
    results = []
    for cull in (True, False):
        bins = bin_batch(splats, [len(splats)], tiles, cull)
        leaves = [
            t.clone().requires_grad_(True) for t in (splats.means2d, splats.conics, splats.opacities, splats.colors)
        ]
        bg = torch.tensor([0.2, 0.5, 0.9], dtype=torch.float64, requires_grad=True)
        colors, alpha = composite_tiles(*leaves, bg, bins, tiles)
        gen = torch.Generator().manual_seed(1)
        loss = (colors * torch.rand(colors.shape, generator=gen, dtype=torch.float64)).sum() + (alpha * alpha).sum()
        loss.backward()
        results.append(
            (bins.splat_index.numel(), colors.detach(), alpha.detach(), [t.grad for t in leaves] + [bg.grad])
        )
    (m_cull, c_cull, a_cull, g_cull), (m_box, c_box, a_box, g_box) = results
    assert m_cull < 0.6 * m_box
    torch.testing.assert_close(c_cull, c_box, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(a_cull, a_box, rtol=1e-12, atol=1e-14)
    for got, ref in zip(g_cull, g_box):
        torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-12)


def test_pairs_built_piece_by_piece_are_the_same(monkeypatch: pytest.MonkeyPatch) -> None:
    """``tile_pairs`` lists and culls ``PAIR_ROWS`` splats at a time: pieces of any size
    give the pairs of the whole batch at once, for splats of several cameras."""
    grids = [TileGrid(300, 200), TileGrid(97, 61)]
    a, b = needle_splats(300, 300, 200, seed=5), needle_splats(200, 97, 61, seed=6)
    splats = Splats(*(torch.cat([x, y]) for x, y in zip(a.__dict__.values(), b.__dict__.values())))
    parts = [300, 200]
    whole = tile_pairs(splats, parts, grids)
    assert (whole[1] == sum(g.n_tiles for g in grids)).any() and (whole[1] < grids[0].n_tiles).any()
    for rows in (1, 7, 256):
        monkeypatch.setattr(intersect, "PAIR_ROWS", rows)
        pieces = tile_pairs(splats, parts, grids)
        assert all(torch.equal(p, w) for p, w in zip(pieces, whole)), rows


@pytest.mark.parametrize("piece", [1 << 18, 7])
def test_a_batch_is_binned_as_its_cameras_one_by_one(piece: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """``bin_batch`` sorts one camera's pairs at a time: its bins of a batch (some tiles selected, a camera
    without splats) are each camera's bins end to end, splat rows offset by the camera's first row."""
    monkeypatch.setattr(intersect, "PAIR_ROWS", piece)
    grids = [TileGrid(300, 200), TileGrid(50, 40), TileGrid(97, 61)]
    cams = [needle_splats(300, 300, 200, seed=8), needle_splats(0, 50, 40, seed=9), needle_splats(200, 97, 61, seed=10)]
    splats = Splats(*(torch.cat(v) for v in zip(*(c.__dict__.values() for c in cams))))
    parts = [len(c) for c in cams]
    selected = [None, torch.tensor([0, 3, 5]), torch.arange(1, grids[2].n_tiles, 3)]
    got = bin_batch(splats, parts, BatchTiles(grids, selected, torch.device("cpu")))
    index, counts, start = [], [], 0
    for c, g, t in zip(cams, grids, selected):
        one = bin_batch(c, [len(c)], BatchTiles([g], [t], torch.device("cpu")))
        index.append(one.splat_index + start)
        counts += one.host_counts
        start += len(c)
    assert sum(counts[: grids[0].n_tiles]) > 0 and sum(counts[grids[0].n_tiles :]) > 0
    assert got.host_counts == counts and torch.equal(got.splat_index, torch.cat(index))
    assert torch.equal(got.offsets, torch.tensor([0, *torch.tensor(counts).cumsum(0).tolist()]))


@pytest.mark.parametrize("piece", [1 << 18, 7])
def test_bins_are_the_selected_pairs_by_tile_then_depth_then_id(piece: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """``bin_batch`` lists pieces in depth order and places their rows without a sort over all pairs: its
    bins are exactly ``tile_pairs``' pairs of the selected tiles, ordered by (selected tile, depth, global
    id), for two cameras, some tiles selected, ids out of row order and exact depth ties."""
    monkeypatch.setattr(intersect, "PAIR_ROWS", piece)
    grids = [TileGrid(300, 200), TileGrid(97, 61)]
    cams = [needle_splats(300, 300, 200, seed=11), needle_splats(200, 97, 61, seed=12)]
    splats = Splats(*(torch.cat(v) for v in zip(*(c.__dict__.values() for c in cams))))
    splats.ids = torch.randperm(len(splats), generator=torch.Generator().manual_seed(3)) * 5 + 1
    splats.depths[1::3] = splats.depths[0::3][: splats.depths[1::3].shape[0]]  # ties, broken by id
    parts = [300, 200]
    tiles = BatchTiles(grids, [torch.arange(0, grids[0].n_tiles, 2), None], torch.device("cpu"))
    got = bin_batch(splats, parts, tiles)
    rows, batch_tile = tile_pairs(splats, parts, grids)
    slot = tiles.slot_of_tile()[batch_tile]
    rows, slot = rows[slot >= 0], slot[slot >= 0]
    ref = sorted(zip(slot.tolist(), splats.depths[rows].tolist(), splats.ids[rows].tolist(), rows.tolist()))
    assert len(ref) > 1000 and len({(s, d) for s, d, _, _ in ref}) < len(ref)  # many pairs, some depth ties in a tile
    assert got.splat_index.tolist() == [r for *_, r in ref]
    assert got.host_counts == torch.bincount(slot, minlength=tiles.ids.shape[0]).tolist()
    assert torch.equal(got.offsets[1:], torch.cumsum(torch.tensor(got.host_counts), 0))


def test_binning_more_rows_than_32_bits_index_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """Bins index splat rows in 32 bits: a batch with more rows than :data:`MAX_ROWS` is refused by name,
    not wrapped around."""
    monkeypatch.setattr(intersect, "MAX_ROWS", 99)
    grid = TileGrid(64, 48)
    with pytest.raises(ValueError, match="100 splats in one batch exceed the 99 rows"):
        bin_batch(needle_splats(100, 64, 48, seed=1), [100], BatchTiles([grid], [None], torch.device("cpu")))


@pytest.mark.parametrize("piece", [1 << 18, 5])
def test_routing_piece_by_piece_reaches_the_owners_of_the_culled_pairs(
    piece: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``PairPieces.reach`` marks, from the pairs listed piece by piece, exactly the (rank, splat) pairs such
    that the splat reaches (after culling) a tile the rank owns, for a batch of two cameras and three ranks."""
    monkeypatch.setattr(intersect, "PAIR_ROWS", piece)
    grids = [TileGrid(300, 200), TileGrid(97, 61)]
    a, b = needle_splats(120, 300, 200, seed=11), needle_splats(80, 97, 61, seed=12)
    splats = Splats(*(torch.cat([x, y]) for x, y in zip(a.__dict__.values(), b.__dict__.values())))
    gen = torch.Generator().manual_seed(1)
    owners = [torch.randint(0, 3, (g.n_tiles,), generator=gen) for g in grids]
    reach = intersect.PairPieces(splats, [120, 80], grids).reach(torch.cat(owners), 3)
    rows, tiles = tile_pairs(splats, [120, 80], grids)
    kept = tiles < sum(g.n_tiles for g in grids)
    want = torch.zeros(3, len(splats), dtype=torch.bool)
    want[torch.cat(owners)[tiles[kept]], rows[kept]] = True
    assert want.any(1).all() and not want.all()
    assert torch.equal(reach, want) and not bool(want.sum(0).eq(0).all())
