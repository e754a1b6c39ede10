"""The CUDA kernels against the torch spec, stage by stage and end to end.

Each test runs on two implementations of the kernels behind the same :class:`KernelBackend`:

- ``host``: the kernels' math (cuda/*.cuh) in plain loops, compiled with the host C++ compiler
  (tests/host_kernels.py); runs on every machine with g++ and checks the formulas and the Python driver.
- ``runtime``: the unmodified kernels (cuda/*.cu) on the CPU under CUDA's execution model (fibers as a
  block's threads, barriers, warp ops, atomics; tests/host_runtime.py), with seeded interleavings; checks the
  CUDA plumbing on every machine with g++ and turns barrier or warp divergence into errors.
- ``cupy``: the real kernels on a GPU through CuPy (marker ``gpu``, skipped without CUDA and CuPy); also
  checks the CUDA plumbing (shared-memory batches, early exit, warp sums, atomics).

The spec runs on the same device. Bounds: projected values within 1e-4 relative / 1e-5 x (largest value)
absolute; images within 1e-4 relative / 1e-5 absolute (the issue's bound); gradients within 1e-3 relative /
1e-4 x (largest gradient) absolute, as atomics and the spec's chunked sums add in different orders. Binning
(integers) must be identical.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import zlib

import pytest
import torch

from grendel_py.data.cameras import Camera
from grendel_py.model.gaussians import Gaussians
from grendel_py.render import torch_backend
from grendel_py.render.intersect import BatchTiles, bin_batch, bin_splats
from grendel_py.render.kernel_backend import MAX_ITEMS, KernelBackend, _Rasterize, batch_grids
from grendel_py.render.projection import ALPHA_MIN, Splats
from grendel_py.simulate import city_scene
from partition.tiles import TileGrid
from tests.host_kernels import HostKernels, compiler
from tests.host_runtime import RuntimeKernels, available
from tests.render_scenes import random_gaussians, small_camera

HAS_GPU = torch.cuda.is_available() and importlib.util.find_spec("cupy") is not None
IMPLS = [
    pytest.param("host", marks=pytest.mark.skipif(compiler() is None, reason="needs a host C++ compiler (g++)")),
    pytest.param("runtime", marks=pytest.mark.skipif(not available(), reason="needs g++ on x86-64")),
    pytest.param("cupy", marks=[pytest.mark.gpu, pytest.mark.skipif(not HAS_GPU, reason="needs a CUDA GPU and CuPy")]),
]
SCENES = ["random", "dense", "city", "sparse"]
LEAVES = ("means", "log_scales", "quats", "opacity_logits", "sh0", "shN")
SPLAT_FIELDS = ("means2d", "conics", "depths", "opacities", "colors", "extents", "ids")


@pytest.fixture(params=IMPLS)
def impl(request) -> tuple[KernelBackend, torch.device]:
    if request.param == "host":
        return KernelBackend(HostKernels().launch), torch.device("cpu")
    if request.param == "runtime":  # each test its own interleavings (the seed is in the runtime's errors)
        seed = zlib.crc32(request.node.name.encode())
        return KernelBackend(RuntimeKernels(seed, workers=2).launch), torch.device("cpu")
    from grendel_py.render.cuda_kernels import cupy_kernels

    device = torch.device("cuda", torch.cuda.current_device())
    return KernelBackend(cupy_kernels(device).launch), device


@functools.cache
def _scene(name: str) -> tuple[Gaussians, Camera]:
    """random: 3000 Gaussians of SH degree 3 on an odd 133 x 71 image. dense: 5000 opaque ones on 97 x 113,
    with tiles of over 512 splats (several shared-memory batches) and pixels that stop early. city: 20000 flat
    Gaussians on the synthetic city's surfaces seen from a street camera at 320 x 240, some behind it or off
    screen, with random SH of degree 3 and tilted rotations. sparse: 20 Gaussians on 93 x 57, with empty tiles
    and tiles of one splat."""
    if name == "random":
        return random_gaussians(3000, seed=1, sh_degree=3, dtype=torch.float32, opacity_shift=1.0), small_camera(
            133, 71
        )
    if name == "dense":
        return random_gaussians(5000, seed=2, sh_degree=2, dtype=torch.float32, opacity_shift=4.0), small_camera(
            97, 113
        )
    if name == "sparse":
        return random_gaussians(20, seed=4, sh_degree=2, dtype=torch.float32, opacity_shift=2.0), small_camera(93, 57)
    scene = city_scene(20_000, scale=2, seed=0)
    g = torch.Generator().manual_seed(5)
    model = scene.model
    n = len(model)
    model = Gaussians(
        means=model.means.float(),
        log_scales=model.log_scales.float(),
        quats=model.quats.float() + 0.2 * torch.randn(n, 4, generator=g),
        opacity_logits=model.opacity_logits.float(),
        sh0=model.sh0.float() + 0.3 * torch.randn(n, 1, 3, generator=g),
        shN=0.1 * torch.randn(n, 15, 3, generator=g),
        ids=model.ids,
    )
    return model, scene.cameras[17]


def _leaves(g: Gaussians, device: torch.device) -> dict[str, torch.Tensor]:
    return {k: getattr(g, k).to(device).clone().requires_grad_(True) for k in LEAVES}


def _weights(shape, seed: int, device: torch.device) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(device)


def _close_scaled(
    actual: torch.Tensor | None, expected: torch.Tensor | None, rtol: float, scale: float, what: str
) -> None:
    if expected is None or actual is None:  # a leaf the output does not depend on (opacities in projection)
        assert actual is None and expected is None, what
        return
    atol = scale * float(expected.abs().max()) if expected.numel() else 0.0
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol, msg=lambda m: f"{what}: {m}")


def _threshold_flips(
    got: torch.Tensor, ref: torch.Tensor, colors: torch.Tensor, rtol: float, atol: float
) -> torch.Tensor:
    """The pixels (bool [T, P]) where two images [T, P, C], rendered from two projections that agree to float
    rounding, differ by more than (rtol, atol); asserted to be few (at most 1 in 10,000) and each off by at
    most what one splat at the alpha threshold adds (1/255 x the largest splat colour): pixels where the
    rounding moved a splat's alpha across 1/255 (or a pixel's transmittance across 1e-4). Which pixels those
    are depends on how each side rounds (torch's CPU kernels pick AVX2 or AVX-512 code by the machine)."""
    off = ~torch.isclose(got, ref, rtol=rtol, atol=atol).all(-1)
    assert int(off.sum()) <= max(1, off.numel() // 10_000), f"{int(off.sum())} of {off.numel()} pixels differ"
    worst = float((got - ref).abs().max())
    assert worst <= ALPHA_MIN * float(colors.max()), (
        f"a pixel is off by {worst}, more than one splat at the alpha threshold"
    )
    return off


def _project(
    backend, leaves: dict[str, torch.Tensor], ids: torch.Tensor, degree: int, cam: Camera, antialiased: bool = False
) -> Splats:
    g = Gaussians(**leaves, ids=ids)
    return backend.project(
        g.means, g.quats, g.scales(), g.opacities(), g.sh(), degree, cam, g.ids, antialiased=antialiased
    )


@pytest.mark.parametrize("scene", SCENES)
@pytest.mark.parametrize("degree, antialiased", [(0, False), (1, False), (2, False), (1, True)])
def test_projection_matches_spec(impl, scene: str, degree: int, antialiased: bool) -> None:
    kernels, device = impl
    model, cam = _scene(scene)
    ids = model.ids.to(device)
    results = []
    for backend in (torch_backend, kernels):
        leaves = _leaves(model, device)
        s = _project(backend, leaves, ids, degree, cam, antialiased)
        outs = (s.means2d, s.conics, s.depths, s.opacities, s.colors)
        loss = sum((o * _weights(o.shape, k, device)).sum() for k, o in enumerate(outs))
        loss.backward()
        results.append((s, {k: v.grad for k, v in leaves.items()}))
    (ref, ref_grads), (got, got_grads) = results
    assert torch.equal(got.extents, ref.extents)
    assert int(ref.visible.sum()) > min(100, len(ref) // 2)  # most of a small scene
    for field in ("means2d", "conics", "depths", "opacities", "colors"):
        _close_scaled(getattr(got, field).detach(), getattr(ref, field).detach(), 1e-4, 1e-5, field)
    for k in LEAVES:
        _close_scaled(got_grads[k], ref_grads[k], 1e-3, 1e-4, f"d/d {k}")


def _batch_cameras(cam: Camera) -> list[Camera]:
    """The scene's camera, the same at half size, and one moved sideways and back."""
    moved = dataclasses.replace(cam, t=cam.t + torch.tensor([0.4, -0.2, 0.6], dtype=cam.t.dtype))
    return [cam, cam.scaled(cam.width // 2 + 1, cam.height // 2 + 1), moved]


@pytest.mark.parametrize("scene", SCENES)
@pytest.mark.parametrize("degree, antialiased", [(3, False), (1, True)])
def test_batch_projection_matches_spec(impl, scene: str, degree: int, antialiased: bool) -> None:
    """project_batch over three cameras from the model's own parameters: the same splats as the spec's (its
    visible Gaussians, camera after camera, in model order) and the same gradients, added into ``.grad``
    (which holds a micro-batch's already)."""
    kernels, device = impl
    model, cam = _scene(scene)
    cameras, degree = _batch_cameras(cam), min(degree, model.sh_degree)
    results = []
    for backend in (torch_backend, kernels):
        leaves = _leaves(model, device)
        for k, leaf in enumerate(leaves.values()):
            leaf.grad = _weights(leaf.shape, 10 + k, device)
        g = Gaussians(**leaves, ids=model.ids.to(device))
        s, parts, rows = backend.project_batch(g, cameras, degree, antialiased)
        outs = (s.means2d, s.conics, s.depths, s.opacities, s.colors)
        loss = sum((o * _weights(o.shape, k, device)).sum() for k, o in enumerate(outs))
        loss.backward()
        results.append((s, parts, rows, {k: v.grad for k, v in leaves.items()}))
    (ref, ref_parts, ref_rows, ref_grads), (got, got_parts, got_rows, got_grads) = results
    assert got_parts == ref_parts and min(ref_parts) > min(10, len(model) // 4)
    assert torch.equal(got_rows.long(), ref_rows.long()) and got_rows.dtype == torch.int32
    assert torch.equal(got.extents, ref.extents) and torch.equal(got.ids, ref.ids)
    for field in ("means2d", "conics", "depths", "opacities", "colors"):
        _close_scaled(getattr(got, field).detach(), getattr(ref, field).detach(), 1e-4, 1e-5, field)
    for k in LEAVES:
        _close_scaled(got_grads[k], ref_grads[k], 1e-3, 1e-4, f"d/d {k}")


def _subsets(grid: TileGrid, device: torch.device) -> dict[str, torch.Tensor | None]:
    gen = torch.Generator().manual_seed(grid.n_tiles)
    ids = torch.arange(grid.n_tiles)
    return {
        "all": None,
        "half": ids[torch.randperm(grid.n_tiles, generator=gen)[: grid.n_tiles // 2]].to(device),
        "border": ids[(ids % grid.nx == grid.nx - 1) | (ids // grid.nx == grid.ny - 1)].to(device),
        "one": ids[grid.n_tiles // 2 : grid.n_tiles // 2 + 1].to(device),
        "none": ids[:0].to(device),
    }


def _tiles(grid: TileGrid, tiles: torch.Tensor | None, device: torch.device) -> BatchTiles:
    return BatchTiles([grid], [None if tiles is None else torch.unique(tiles)], device)


def _bin(kernels: KernelBackend, splats: Splats, grid: TileGrid, tiles: torch.Tensor | None = None):
    return kernels.bin_batch(splats, [len(splats)], _tiles(grid, tiles, splats.means2d.device))


def _rasterize(backend, splats: Splats, grid: TileGrid, background: torch.Tensor, tiles: torch.Tensor | None = None):
    return backend.rasterize_batch(splats, [len(splats)], _tiles(grid, tiles, splats.means2d.device), background)


def _spec_splats(scene: str, device: torch.device) -> tuple[Splats, TileGrid]:
    model, cam = _scene(scene)
    with torch.no_grad():
        s = torch_backend.project(
            model.means, model.quats, model.scales(), model.opacities(), model.sh(), model.sh_degree, cam, model.ids
        )
    moved = Splats(*(getattr(s, f).to(device) for f in SPLAT_FIELDS))
    return moved, TileGrid(cam.width, cam.height)


@pytest.mark.parametrize("scene", SCENES)
def test_binning_matches_spec(impl, scene: str) -> None:
    kernels, device = impl
    splats, grid = _spec_splats(scene, device)
    for name, tiles in _subsets(grid, device).items():
        ref = bin_splats(splats, grid, tiles)
        got = _bin(kernels, splats, grid, tiles)
        for field in ("tile_ids", "offsets", "splat_index"):
            assert torch.equal(getattr(got, field), getattr(ref, field)), f"{name}: {field}"


def test_pairs_match_spec(impl) -> None:
    """The batch's pairs on the kernels: per batch tile, the splats that reach it (the tile table's counts),
    and which of three ranks each splat must go to for random tile owners, exactly as the spec's pieces, over a
    batch of four cameras (one without splats)."""
    kernels, device = impl
    parts, grids = [], []
    for scene in ("random", "city", "sparse", "dense"):
        s, grid = _spec_splats(scene, device)
        parts.append(s if scene != "sparse" else s.select(torch.zeros(len(s), dtype=torch.bool, device=device)))
        grids.append(grid)
    splats = Splats(*(torch.cat([getattr(s, f) for s in parts]) for f in SPLAT_FIELDS))
    sizes = [len(s) for s in parts]
    gen = torch.Generator().manual_seed(3)
    owners = torch.randint(0, 3, (sum(g.n_tiles for g in grids),), generator=gen).to(device)
    spec, got = torch_backend.pairs(splats, sizes, grids), kernels.pairs(splats, sizes, grids)
    counts = spec.tile_counts()
    assert int(counts.sum()) > len(splats) and torch.equal(got.tile_counts(), counts)
    reach = spec.reach(owners, 3)
    assert reach.any(1).all() and torch.equal(got.reach(owners, 3), reach)


def test_binning_ignores_arrival_order(impl) -> None:
    """Splats shuffled (as received from other ranks) bin to the same (tile, depth, id) order."""
    kernels, device = impl
    splats, grid = _spec_splats("dense", device)
    perm = torch.randperm(len(splats), generator=torch.Generator().manual_seed(0)).to(device)
    a = _bin(kernels, splats, grid)
    b = _bin(kernels, splats.select(perm), grid)
    assert torch.equal(a.offsets, b.offsets)
    assert torch.equal(splats.ids[a.splat_index], splats.ids[perm][b.splat_index])


@pytest.mark.parametrize("scene", SCENES)
def test_rasterize_matches_spec(impl, scene: str) -> None:
    kernels, device = impl
    splats, grid = _spec_splats(scene, device)
    if scene == "dense":
        assert int(bin_splats(splats, grid).counts.max()) > 512  # several shared-memory batches per tile
    if scene == "sparse":
        counts = bin_splats(splats, grid).counts
        assert bool((counts == 0).any()) and bool((counts == 1).any())  # empty tiles, one-splat tiles
    for name, tiles in _subsets(grid, device).items():
        results = []
        for backend in (torch_backend, kernels):
            leaves = [
                t.clone().requires_grad_(True) for t in (splats.means2d, splats.conics, splats.opacities, splats.colors)
            ]
            bg = torch.tensor([0.2, 0.5, 0.9], device=device, requires_grad=True)
            s = Splats(leaves[0], leaves[1], splats.depths, leaves[2], leaves[3], splats.extents, splats.ids)
            colors, alpha, _ = _rasterize(backend, s, grid, bg, tiles)
            loss = (colors * _weights(colors.shape, 1, device)).sum() + (alpha * _weights(alpha.shape, 2, device)).sum()
            loss.backward()
            results.append((colors.detach(), alpha.detach(), [t.grad for t in leaves] + [bg.grad]))
        (c_ref, a_ref, g_ref), (c_got, a_got, g_got) = results
        torch.testing.assert_close(c_got, c_ref, rtol=1e-4, atol=1e-5, msg=lambda m, name=name: f"{name} colors: {m}")
        torch.testing.assert_close(a_got, a_ref, rtol=1e-4, atol=1e-5, msg=lambda m, name=name: f"{name} alpha: {m}")
        if scene == "dense" and name == "all":
            assert float(a_ref.max()) > 1 - 1e-3  # pixels that reached the early stop
        for what, got, ref in zip(("means2d", "conics", "opacities", "colors", "background"), g_got, g_ref):
            _close_scaled(got, ref, 1e-3, 1e-4, f"{name} d/d {what}")


@pytest.mark.parametrize("scene", SCENES)
def test_culling_changes_no_pixel_or_gradient(impl, scene: str) -> None:
    """The tile kernels over the culled bins and over the whole boxes' bins give the same bits in colours and
    alpha (a culled splat is one that each pixel of the tile skips, and the kernels composite pixel by pixel
    in list order), and the same gradients up to the order of their atomic sums. The culled bins hold fewer
    intersections."""
    kernels, device = impl
    splats, grid = _spec_splats(scene, device)
    tiles = _tiles(grid, None, device)
    results = []
    for cull in (True, False):
        bins = bin_batch(splats, [len(splats)], tiles, cull)
        leaves = [
            t.clone().requires_grad_(True) for t in (splats.means2d, splats.conics, splats.opacities, splats.colors)
        ]
        bg = torch.tensor([0.2, 0.5, 0.9], device=device, requires_grad=True)
        cams = batch_grids([len(splats)], tiles.grids, device)
        colors, alpha = _Rasterize.apply(*leaves, bg, bins, cams, kernels.launch)
        loss = (colors * _weights(colors.shape, 6, device)).sum() + (alpha * _weights(alpha.shape, 7, device)).sum()
        loss.backward()
        results.append(
            (bins.splat_index.numel(), colors.detach(), alpha.detach(), [t.grad for t in leaves] + [bg.grad])
        )
    (m_cull, *culled), (m_box, *box) = results
    assert m_cull < m_box
    assert torch.equal(culled[0], box[0]) and torch.equal(culled[1], box[1])
    for what, got, ref in zip(("means2d", "conics", "opacities", "colors", "background"), culled[2], box[2]):
        _close_scaled(got, ref, 1e-5, 1e-6, f"d/d {what}")


@pytest.mark.parametrize("scene", SCENES)
def test_render_end_to_end_matches_spec(impl, scene: str) -> None:
    """Projection, binning and rasterization of the kernels together give the spec's image and gradients."""
    kernels, device = impl
    model, cam = _scene(scene)
    grid = TileGrid(cam.width, cam.height)
    ids = model.ids.to(device)
    results = []
    for backend in (torch_backend, kernels):
        leaves = _leaves(model, device)
        s = _project(backend, leaves, ids, model.sh_degree, cam)
        colors, alpha, _ = _rasterize(backend, s, grid, torch.tensor([0.1, 0.2, 0.3], device=device))
        results.append((colors, leaves, s.colors.detach()))
    (c_ref, _, splat_colors), (c_got, _, _) = results
    flips = _threshold_flips(c_got.detach(), c_ref.detach(), splat_colors, rtol=1e-4, atol=1e-5)
    weights = _weights(c_ref.shape, 3, device) * (~flips)[..., None]  # a flipped splat's gradient differs there
    for colors, _, _ in results:
        (colors * weights).sum().backward()
    g_ref, g_got = ({k: v.grad for k, v in leaves.items()} for _, leaves, _ in results)
    for k in LEAVES:
        _close_scaled(g_got[k], g_ref[k], 1e-3, 1e-4, f"d/d {k}")


def test_a_batch_of_cameras_matches_spec(impl) -> None:
    """One rasterize_batch over four cameras of different sizes (tiles: all, a random half, the border, one):
    per-camera launches over slices of the batch's arrays give the spec's bins, images and gradients."""
    kernels, device = impl
    parts, grids, selections = [], [], []
    for scene in SCENES:
        s, grid = _spec_splats(scene, device)
        parts.append(s)
        grids.append(grid)
        selections.append(
            _subsets(grid, device)[{"random": "all", "dense": "half", "city": "border", "sparse": "one"}[scene]]
        )
    splats = Splats(*(torch.cat([getattr(s, f) for s in parts]) for f in SPLAT_FIELDS))
    sizes = [len(s) for s in parts]
    tiles = BatchTiles(grids, [None if t is None else torch.unique(t) for t in selections], device)
    results = []
    for backend in (torch_backend, kernels):
        leaves = [
            t.clone().requires_grad_(True) for t in (splats.means2d, splats.conics, splats.opacities, splats.colors)
        ]
        bg = torch.tensor([0.2, 0.5, 0.9], device=device, requires_grad=True)
        s = Splats(leaves[0], leaves[1], splats.depths, leaves[2], leaves[3], splats.extents, splats.ids)
        colors, alpha, bins = backend.rasterize_batch(s, sizes, tiles, bg)
        loss = (colors * _weights(colors.shape, 4, device)).sum() + (alpha * _weights(alpha.shape, 5, device)).sum()
        loss.backward()
        results.append((bins, colors.detach(), alpha.detach(), [t.grad for t in leaves] + [bg.grad]))
    (b_ref, c_ref, a_ref, g_ref), (b_got, c_got, a_got, g_got) = results
    for field in ("tile_ids", "offsets", "splat_index"):
        assert torch.equal(getattr(b_got, field), getattr(b_ref, field)), field
    torch.testing.assert_close(c_got, c_ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(a_got, a_ref, rtol=1e-4, atol=1e-5)
    for what, got, ref in zip(("means2d", "conics", "opacities", "colors", "background"), g_got, g_ref):
        _close_scaled(got, ref, 1e-3, 1e-4, f"d/d {what}")


def test_empty_inputs(impl) -> None:
    kernels, device = impl
    model, cam = _scene("random")
    empty = Gaussians(**{k: getattr(model, k)[:0].to(device) for k in (*LEAVES, "ids")})
    s = _project(kernels, {k: getattr(empty, k) for k in LEAVES}, empty.ids, 1, cam)
    colors, alpha, bins = _rasterize(
        kernels, s, TileGrid(cam.width, cam.height), torch.tensor([0.1, 0.2, 0.3], device=device)
    )
    assert bins.splat_index.numel() == 0
    torch.testing.assert_close(colors, torch.tensor([0.1, 0.2, 0.3], device=device).expand_as(colors))
    assert float(alpha.abs().max()) == 0.0


def test_rejects_what_the_kernels_cannot_compute(impl) -> None:
    kernels, device = impl
    model, cam = _scene("random")
    double = {k: getattr(model, k).double().to(device) for k in LEAVES}
    with pytest.raises(ValueError, match="float32"):
        _project(kernels, double, model.ids.to(device), 1, cam)
    splats, _ = _spec_splats("random", device)
    with pytest.raises(ValueError, match="16 x 16"):
        _rasterize(kernels, splats, TileGrid(cam.width, cam.height, tile_size=8), torch.zeros(3, device=device))


def _project_meta(kernels: KernelBackend, n: int, cam: Camera) -> None:
    """Project ``n`` Gaussians that exist as shapes only (the meta device: no memory)."""
    meta = torch.device("meta")
    means, scales, opacities = (
        torch.empty(n, 3, device=meta),
        torch.empty(n, 3, device=meta),
        torch.empty(n, device=meta),
    )
    quats, sh, ids = (
        torch.empty(n, 4, device=meta),
        torch.empty(n, 1, 3, device=meta),
        torch.empty(n, dtype=torch.long, device=meta),
    )
    kernels.project(means, quats, scales, opacities, sh, 0, cam, ids)


def test_counts_past_the_kernels_int_are_refused() -> None:
    """The kernels count items in a 32-bit int (their indices are 64-bit): 2^31 - 1 Gaussians still launch,
    one more is refused, naming the limit."""
    launched: list[int] = []
    kernels = KernelBackend(lambda name, size, *args: launched.append(size))
    _, cam = _scene("random")
    _project_meta(kernels, MAX_ITEMS, cam)
    assert launched == [MAX_ITEMS]
    with pytest.raises(ValueError, match=r"2\^31 - 1"):
        _project_meta(kernels, MAX_ITEMS + 1, cam)
    assert launched == [MAX_ITEMS]


class _FakeCupy:
    """Enough of CuPy to watch what CupyKernels hands it: compiled sources, launches, DLPack conversions."""

    def __init__(self):
        self.sources, self.launches, self.streams = [], [], []
        fake = self

        class RawModule:
            def __init__(self, code, options):
                fake.sources.append((code, options))

            def get_function(self, name):
                return lambda grid, block, args: fake.launches.append((name, grid, block, args))

        class Ctx:
            def __init__(self, *args):
                fake.streams.append(args)

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                return False

        self.RawModule = RawModule
        self.cuda = type("cuda", (), {"Device": Ctx, "ExternalStream": Ctx})
        self.ndarray = lambda *a, **k: "empty"

    def from_dlpack(self, t):
        assert not t.requires_grad
        return ("dlpack", t.data_ptr())


def test_cupy_launcher_marshals_arguments(monkeypatch) -> None:
    """CupyKernels without a GPU: every source compiled once with the NVRTC options, element kernels get their
    item count first and one thread each, tile kernels one 16 x 16 block per tile, scalars typed as the kernel
    declares, tensors handed over by DLPack (detached) on torch's current stream."""
    import sys

    import numpy as np

    from grendel_py.render import cuda_kernels

    fake = _FakeCupy()
    monkeypatch.setitem(sys.modules, "cupy", fake)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device: type("S", (), {"cuda_stream": 1234})())
    k = cuda_kernels.CupyKernels(torch.device("cpu"))
    assert sorted(code for code, _ in fake.sources) == sorted(
        cuda_kernels.cuda_source(s) for s in ("bin.cu", "loss.cu", "project.cu", "rasterize.cu")
    )
    assert all(opts == cuda_kernels.NVRTC_OPTIONS for _, opts in fake.sources)

    keys = torch.arange(600, dtype=torch.int64)
    offsets = torch.zeros(4, dtype=torch.int64, requires_grad=False)
    k.launch("tile_ranges", 600, keys, 3, offsets)
    name, grid, block, args = fake.launches[-1]
    assert (name, grid, block) == ("tile_ranges", (3,), (256,))
    assert type(args[0]) is np.int64 and args[0] == 600 and type(args[2]) is np.int32
    assert args[1] == ("dlpack", keys.data_ptr())
    assert (1234,) in fake.streams

    f = lambda *s: torch.zeros(*s, requires_grad=True)  # noqa: E731
    i64 = lambda n: torch.zeros(n, dtype=torch.int64)  # noqa: E731
    k.launch(
        "rasterize_forward",
        5,
        i64(5),
        i64(6),
        torch.zeros(0, dtype=torch.int32),
        f(0, 2),
        f(0, 3),
        f(0),
        f(0, 3),
        f(3),
        i64(5),
        1,
        f(5, 256, 3),
        f(5, 256),
        torch.zeros(5, 256, dtype=torch.int32),
    )
    name, grid, block, args = fake.launches[-1]
    assert (grid, block, len(args)) == ((5,), (16, 16), 13)
    assert args[2] == "empty" and type(args[9]) is np.int32
    k.launch(
        "rasterize_forward",
        0,
        i64(0),
        i64(1),
        torch.zeros(0, dtype=torch.int32),
        f(0, 2),
        f(0, 3),
        f(0),
        f(0, 3),
        f(3),
        i64(5),
        1,
        f(0, 256, 3),
        f(0, 256),
        torch.zeros(0, 256, dtype=torch.int32),
    )
    assert fake.launches[-1][0] == "rasterize_forward" and len(fake.launches) == 2  # nothing to launch
    with pytest.raises(ValueError, match="tile_ranges argument 0: expected a contiguous torch.int64"):
        k.launch("tile_ranges", 600, keys.int(), 3, offsets)
