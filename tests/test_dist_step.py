"""Distribution does not change the math: W ranks give the single rank's images, loss and gradients."""

from __future__ import annotations

import pytest
import torch

from grendel_py.config import DensifyConfig
from grendel_py.loss import regions
from grendel_py.loss.pixels import photometric_loss
from grendel_py.model.densify import DensifyStrategy, screen_grad_norms
from grendel_py.model.gaussians import Gaussians
from grendel_py.parallel.runtime import init_distributed
from grendel_py.parallel.step import Batch, StepOptions, batch_loss
from grendel_py.render import render
from grendel_py.render.projection import pixel_radii
from partition.balancer import TileBalancer
from partition.tiles import TileGrid
from tests.dist_util import run_ranks
from tests.render_scenes import random_gaussians, small_camera

FIELDS = ("means", "log_scales", "quats", "opacity_logits", "sh0", "shN")
BG = torch.tensor([0.1, 0.2, 0.3])
BGS = torch.tensor([[0.9, 0.2, 0.3], [0.0, 0.5, 1.0], [0.4, 0.4, 0.1]])  # one per camera


def _setup(dtype: torch.dtype = torch.float32):
    """Gaussians, cameras and photos; ``dtype``: the float32 values in another type."""
    g = random_gaussians(400, seed=12, sh_degree=1, dtype=torch.float32, opacity_shift=1.0)
    g = Gaussians(**{k: getattr(g, k).to(dtype) for k in FIELDS}, ids=g.ids)
    cams = [small_camera(70, 45, 0), small_camera(50, 61, 1), small_camera(33, 20, 2)]
    gen = torch.Generator().manual_seed(3)
    images = [torch.rand(c.height, c.width, 3, generator=gen).to(dtype) for c in cams]
    return g, cams, images


def _leaves(g: Gaussians) -> Gaussians:
    return Gaussians(**{k: getattr(g, k).detach().clone().requires_grad_(True) for k in FIELDS}, ids=g.ids)


STATS = ("grad2d_sum", "count", "max_radius2d")


def _reference(variant: bool = False):
    """Each camera rendered alone; ``variant``: antialiased, each over its own background. Densification's
    statistics from every splat's ``means2d`` gradient, kept by autograd (``retain_grad``)."""
    g, cams, images = _setup()
    model = _leaves(g)
    loss, rendered, splats = 0.0, [], []
    for b, (cam, gt) in enumerate(zip(cams, images)):
        out = render(model, cam, BGS[b] if variant else BG, sh_degree=1, antialiased=variant)
        out.splats.means2d.retain_grad()
        loss = loss + photometric_loss(out.image, gt, 0.2)
        rendered.append(out.image.detach())
        splats.append(out.splats)
    loss.backward()
    densify = DensifyStrategy(DensifyConfig(), 1.0, 0)
    for cam, s in zip(cams, splats):  # every Gaussian, the invisible ones with radius 0
        densify.observe(
            pixel_radii(s.extents),
            screen_grad_norms(s.means2d.grad, cam.width, cam.height),
            torch.arange(len(s)),
            len(s),
        )
    stats = {k: densify.state_dict()[k] for k in STATS}
    return float(loss.detach()), rendered, {k: getattr(model, k).grad for k in FIELDS}, model.ids, stats


def _rank_job(ctx, assignment: str = "locality", variant: bool = False):
    g, cams, images = _setup()
    shard = _leaves(g.select(g.ids % ctx.world_size == ctx.rank))  # ownership scattered through space
    balancer = TileBalancer(assignment, ctx.world_size, calibrate=False)
    batch = Batch(cams, images, 1, BGS if variant else None)
    loss, out = batch_loss(shard, batch, StepOptions(BG, antialiased=variant, balancer=balancer), ctx)
    balance = out.assignment.balance(balancer.work(out.table))
    assert balance >= 1.0 and (ctx.world_size > 1 or balance == 1.0)
    loss.backward()
    grads = {k: getattr(shard, k).grad for k in FIELDS}
    densify = DensifyStrategy(DensifyConfig(), 1.0, 0)
    densify.observe(*out.statistics(), len(shard))  # only the splats the cameras see, all cameras at once
    stats = {k: densify.state_dict()[k] for k in STATS}
    return (
        float(loss.detach()),
        shard.ids,
        grads,
        out.tile_ids,
        [c.detach() for c in out.tile_colors],
        out.bytes_sent,
        stats,
    )


def _check(results, reference) -> None:
    ref_loss, ref_images, ref_grads, ref_ids, ref_stats = reference
    assert sum(r[0] for r in results) == pytest.approx(ref_loss, rel=1e-5)
    _, cams, _ = _setup()
    for b, cam in enumerate(cams):
        grid = TileGrid(cam.width, cam.height)
        tiles = torch.cat([r[3][b] for r in results])
        assert torch.equal(torch.sort(tiles).values, grid.all_tiles())  # every tile rendered exactly once
        image = grid.tiles_to_image(torch.cat([r[4][b] for r in results]), tiles)
        assert (image - ref_images[b]).abs().max() <= 1e-5
    ids = torch.cat([r[1] for r in results])
    where = torch.argsort(ids)
    order = torch.argsort(ref_ids)
    for k in FIELDS:
        got = torch.cat([r[2][k] for r in results])[where]
        want = ref_grads[k][order]
        assert (got - want).norm() <= 1e-4 * want.norm(), k
    for k in STATS:  # densification's statistics, from the gradients the step's backward observed
        got = torch.cat([r[6][k] for r in results])[where].double()
        want = ref_stats[k][order].double()
        assert (got - want).norm() <= 1e-4 * want.norm() and want.norm() > 0, k


@pytest.mark.parametrize("loss_rows", [regions.LOSS_ROWS, 7])
def test_single_rank_matches_plain_rendering(loss_rows: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Also with the loss computed in bands of 7 rows (the cameras are 20 to 61 rows high)."""
    monkeypatch.setattr(regions, "LOSS_ROWS", loss_rows)
    _check([_rank_job(init_distributed(env={}))], _reference())


def test_keeping_or_recomputing_for_the_backward_gives_the_same_bits(monkeypatch: pytest.MonkeyPatch) -> None:
    """Small steps keep what their backward needs (grendel_py.backward_state.KEEP_BYTES); large ones recompute
    it (the projection's graphs, the loss's SSIM maps, the compositor's chunk starts): the same loss, pictures,
    gradients and statistics, bit for bit."""
    from grendel_py import backward_state
    from grendel_py.render import batch_projection

    ctx = init_distributed(env={})
    calls = {"checkpoint": 0, "projected without a graph": 0}
    checkpoint, project_all = regions.checkpoint, batch_projection._project_all

    def counting(name, fn):
        def counted(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)

        return counted

    monkeypatch.setattr(regions, "checkpoint", counting("checkpoint", checkpoint))
    monkeypatch.setattr(batch_projection, "_project_all", counting("projected without a graph", project_all))
    kept = _rank_job(ctx)
    assert calls == {"checkpoint": 0, "projected without a graph": 0}  # this small step keeps everything
    monkeypatch.setattr(backward_state, "KEEP_BYTES", 0)
    recomputed = _rank_job(ctx)
    assert calls["checkpoint"] > 0 and calls["projected without a graph"] > 0
    assert recomputed[0] == kept[0]
    for k in FIELDS:
        assert torch.equal(recomputed[2][k], kept[2][k]), k
    for a, b in zip(recomputed[4], kept[4]):
        assert torch.equal(a, b)
    for k in STATS:
        assert torch.equal(recomputed[6][k], kept[6][k]), k


@pytest.mark.parametrize("world", [2, 4])
def test_w_ranks_match_one_rank(world: int) -> None:
    results = run_ranks(world, _rank_job)
    _check(results, _reference())
    assert sum(r[5] for r in results) > 0  # splats really crossed ranks


@pytest.mark.parametrize("assignment", ["rows", "balanced", "majority"])
def test_every_tile_assignment_gives_the_same_result(assignment: str) -> None:
    results = run_ranks(3, _rank_job, assignment)
    _check(results, _reference())


def test_antialiased_over_a_background_per_camera_w_ranks_match_one_camera_at_a_time() -> None:
    results = run_ranks(2, _rank_job, "locality", True)
    _check(results, _reference(variant=True))


def _gradients_job(ctx, dtype: torch.dtype) -> tuple[torch.Tensor, dict[str, torch.Tensor], list, list]:
    """One step of the scene of :func:`_setup` in ``dtype`` on this rank: ids and gradients of its shard, its
    tiles and their colours."""
    g, cams, images = _setup(dtype)
    shard = _leaves(g.select(g.ids % ctx.world_size == ctx.rank))
    options = StepOptions(BG.to(dtype), balancer=TileBalancer("locality", ctx.world_size, calibrate=False))
    loss, out = batch_loss(shard, Batch(cams, images, 1), options, ctx)
    loss.backward()
    return shard.ids, {k: getattr(shard, k).grad for k in FIELDS}, out.tile_ids, [c.detach() for c in out.tile_colors]


def _whole(results) -> tuple[dict[str, torch.Tensor], list[torch.Tensor]]:
    """Every rank's gradients together, rows by global id (float64), and each camera's image."""
    ids = torch.cat([r[0] for r in results])
    where = torch.argsort(ids)
    grads = {k: torch.cat([r[1][k] for r in results])[where].double() for k in FIELDS}
    _, cams, _ = _setup()
    images = []
    for b, cam in enumerate(cams):
        grid = TileGrid(cam.width, cam.height)
        tiles = torch.cat([r[2][b] for r in results])
        images.append(grid.tiles_to_image(torch.cat([r[3][b] for r in results]), tiles).double())
    return grads, images


def test_w_ranks_differ_from_one_rank_by_float_rounding_alone() -> None:
    """What W ranks compute differently from one rank is the order of float operations, nothing else: in
    float64 the two agree to float64 rounding (a splat binned, culled or cut off differently would show there
    at the size of its contribution), and in float32 each is as far from the float64 result as float32
    rounding puts the one-rank step itself (the measured noise floor, here 2e-7 to 1e-6 of each field's
    largest gradient). A gradient component that cancels to within that floor can then change sign between
    the two, and Adam, whose step does not depend on the gradient's scale, moves such a Gaussian by a whole
    learning rate either way: what makes a long W-rank run drift from one rank's at a few Gaussians
    (bench/results/w_equivalence.md)."""
    one64, one32 = (_whole(run_ranks(1, _gradients_job, d)) for d in (torch.float64, torch.float32))
    two64, two32 = (_whole(run_ranks(2, _gradients_job, d)) for d in (torch.float64, torch.float32))
    for k in FIELDS:
        scale = one64[0][k].abs().max()
        floor = (one32[0][k] - one64[0][k]).abs().max() / scale  # float32 rounding of one rank's step
        assert 0 < floor < 1e-5, k
        assert (two64[0][k] - one64[0][k]).abs().max() / scale <= 1e-13, k  # float64 rounding alone
        # each float32 step within 1.25x the one-rank floor of the exact result (float32 rounding, in another order)
        assert (two32[0][k] - one64[0][k]).abs().max() / scale <= 1.25 * floor, k
    for a, b, exact, b64 in zip(one32[1], two32[1], one64[1], two64[1]):  # the images, likewise
        assert (b64 - exact).abs().max() <= 1e-14
        assert (b - exact).abs().max() <= 1.25 * (a - exact).abs().max() + 1e-7  # + one float32 ulp of a colour ~1
