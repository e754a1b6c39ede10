"""The device's cost profile (issue 38): every stage of the training step timed on one rank over scenes of
several sizes, and fitted to the counts that drive it (grendel_py/plan/profile.py); written as JSON.

    python bench/calibrate.py [--device cpu|cuda] [--backend torch|cupy] [--iterations 3] [--threads N] [--quick] [--link-world 2] --out PROFILE.json

Scenes: random Gaussians in a cube of half size ``spread`` around the origin, sigmas up to ``sigma``, seen by
batches of cameras on a circle at distance 3 looking at the origin; the sizes (Gaussians, image size, batch,
spread, sigma, SH degree) vary independently so that each stage's drivers (Gaussians x cameras, visible splats, pairs,
pixels) vary independently too. Each size runs a warm-up iteration and ``--iterations`` timed ones
(:class:`grendel_py.parallel.stage_clock.StageClock`: the forward stages marked by the step, the backward
ones by autograd, then Adam); every timed iteration is a sample. The JSON holds the profile, and next to it
(``--samples``) the samples, so a fit can be checked or redone. ``--quick``: the smallest sizes only (CI). On a
GPU (``--device cuda``) the sizes are the GPU step's (:data:`GPU_SIZES`: up to 2M Gaussians at 1080p).
``--threads N``: torch's CPU threads (as each rank of a CPU run gets from torchrun: 1). ``--link-world W``:
also the link between W gloo ranks on this machine (``gloo`` in the profile's links): all-to-all calls of
1 kB to 16 MB per rank, each timed from a barrier, fitted to a latency and a bandwidth. ``--world W``: the
sizes also on W gloo ranks (kd shards), every rank's iterations samples; the stages that hold a collective
(the exchange, the halo, the exchange's backward) are fitted to those, their collectives' modelled time on
the measured link taken out (:func:`local_work`), since on one rank they do nothing.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bytes_per_gaussian import LivePeak  # noqa: E402
from bench.gpu_check import _views  # noqa: E402
from bench.provenance import provenance  # noqa: E402
from bench.render_speed import random_model  # noqa: E402
from grendel_py.config import OptimConfig  # noqa: E402
from grendel_py.model.gaussians import TRAINABLE, Gaussians  # noqa: E402
from grendel_py.model.optim import GaussianOptimizer  # noqa: E402
from grendel_py.parallel.runtime import single_process  # noqa: E402
from grendel_py.parallel.stage_clock import StageClock  # noqa: E402
from grendel_py.parallel.step import Batch, StepOptions, batch_loss  # noqa: E402
from grendel_py.plan.model import INSIDE, local_seconds  # noqa: E402
from grendel_py.plan.profile import DRIVERS, fit_link, fit_profile  # noqa: E402
from grendel_py.render import get_backend  # noqa: E402
from partition.balancer import TileBalancer  # noqa: E402
from partition.spatial import assign_owners  # noqa: E402
from tests.dist_util import run_ranks  # noqa: E402

# (Gaussians, width, height, batch, spread, sigma, SH degree)
SIZES = [
    (4_000, 160, 120, 1, 1.0, 0.02, 3),
    (16_000, 160, 120, 1, 1.0, 0.02, 0),
    (4_000, 480, 270, 1, 1.0, 0.05, 1),
    (16_000, 320, 240, 2, 3.0, 0.02, 3),
    (48_000, 320, 180, 1, 1.0, 0.01, 2),
    (8_000, 640, 360, 1, 1.0, 0.03, 0),
    (32_000, 480, 270, 2, 2.0, 0.02, 3),
    (64_000, 160, 120, 3, 1.5, 0.01, 1),
]
QUICK = SIZES[:4]
GPU_SIZES = [  # the GPU step's scale: up to 2M Gaussians at 1080p
    (250_000, 1920, 1080, 1, 1.0, 0.01, 3),
    (1_000_000, 1920, 1080, 1, 1.0, 0.005, 0),
    (500_000, 960, 540, 2, 2.0, 0.01, 1),
    (2_000_000, 1920, 1080, 1, 1.0, 0.003, 3),
    (250_000, 1280, 720, 4, 3.0, 0.01, 2),
    (1_000_000, 960, 540, 1, 1.0, 0.01, 3),
    (500_000, 1920, 1080, 2, 1.5, 0.005, 0),
    (2_000_000, 1280, 720, 1, 2.0, 0.005, 1),
]


def measure(
    size: tuple, device: torch.device, backend: str, iterations: int, seed: int = 0, ctx=None, memory: bool = False
) -> list[tuple[dict, dict]]:
    """``iterations`` samples (counts, seconds per stage) of one size, after a warm-up iteration; with ``ctx``
    (a rank of W), this rank's, its shard the kd cell of the scene it owns; ``memory``: and a sample of the
    pass's transient bytes (counts, {"transient": bytes})."""
    n, width, height, batch, spread, sigma, sh_degree = size
    ctx = ctx or single_process(device.type)
    model = random_model(n, spread, sigma, 0.2, str(device), seed)
    if ctx.world_size > 1:
        model = model.select(assign_owners(model.means, ctx.world_size) == ctx.rank)
    optimizer = GaussianOptimizer(model, OptimConfig(), extent=2.0, batch_size=batch)
    shard = optimizer.gaussians
    cameras = _views(batch, width, height)
    g = torch.Generator().manual_seed(seed + 1)
    photos = [torch.rand(height, width, 3, generator=g).to(device) for _ in cameras]
    clock = StageClock(device)
    options = StepOptions(
        torch.zeros(3, device=device),
        get_backend(backend),
        balancer=TileBalancer("locality", ctx.world_size, calibrate=False),
        clock=clock,
    )
    samples = []
    for i in range(iterations + 1):
        clock.start()
        loss, _ = batch_loss(shard, Batch(cameras, photos, sh_degree), options, ctx)
        loss.backward()
        clock.mark("project_backward")
        optimizer.step()
        clock.mark("adam")
        if i:
            samples.append(({**clock.counts, "world": ctx.world_size}, clock.seconds()))
    if memory:  # one more pass for its transient bytes (untimed: the CPU's tracking slows every operation)
        clock.start()
        transient = _transient(shard, Batch(cameras, photos, sh_degree), options, ctx)
        samples.append(({**clock.counts, "world": ctx.world_size}, {"transient": transient}))
    return samples


def _transient(shard: Gaussians, batch: Batch, options: StepOptions, ctx) -> float:
    """Bytes a forward and backward pass holds at its peak beyond what was alive when it began, less the
    gradients it allocates (counted with the state): CUDA's allocator peak on a GPU, glibc's bytes in use
    after every operation on the CPU (bench/bytes_per_gaussian.py's LivePeak)."""
    grads = sum(getattr(shard, f).numel() * 4 for f in TRAINABLE)
    if shard.means.device.type == "cuda":
        torch.cuda.synchronize()
        start = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        loss, _ = batch_loss(shard, batch, options, ctx)
        loss.backward()
        peak = torch.cuda.max_memory_allocated()
    else:
        live = LivePeak(LivePeak.in_use())
        live.pass_peak = start = 0
        with live:
            loss, _ = batch_loss(shard, batch, options, ctx)
            loss.backward()
        peak = live.pass_peak
    for f in TRAINABLE:
        getattr(shard, f).grad = None
    return float(peak - start - grads)


def _rank_samples(ctx, sizes: list[tuple], backend: str, iterations: int, threads: int | None) -> list:
    if threads:
        torch.set_num_threads(threads)
    return [s for size in sizes for s in measure(size, torch.device("cpu"), backend, iterations, ctx=ctx, memory=True)]


def local_work(samples: list[tuple[dict, dict]], link) -> list[tuple[dict, dict]]:
    """The samples as the fit takes them: on W > 1 ranks, the stages that hold a collective
    (:data:`grendel_py.plan.model.INSIDE`) with its modelled time taken out; on one rank, where those stages
    do nothing, without them when there are samples of more ranks to fit them on."""
    several = any(c["world"] > 1 for c, _ in samples)
    out = []
    for counts, seconds in samples:
        if counts["world"] > 1:
            seconds = {
                k: local_seconds(k, v, counts, int(counts["world"]), link) if k in INSIDE else v
                for k, v in seconds.items()
            }
        elif several:
            seconds = {k: v for k, v in seconds.items() if k not in INSIDE}
        out.append((counts, seconds))
    return out


def _all_to_all_samples(ctx, repeats: int = 5) -> list[tuple[float, float]]:
    """(bytes a rank sends, seconds) of all-to-all calls of several sizes, timed from a barrier."""
    import torch.distributed as dist

    samples = []
    for size in (2**10, 2**14, 2**18, 2**21, 2**24):
        x = torch.zeros(size // 4, dtype=torch.float32)
        out = torch.empty_like(x)
        for _ in range(repeats + 1):
            dist.barrier()
            tic = time.perf_counter()
            dist.all_to_all_single(out, x)
            seconds = time.perf_counter() - tic
            samples.append((size * (ctx.world_size - 1) / ctx.world_size, seconds))
        del samples[-repeats - 1]  # the first of each size: a warm-up
    return samples


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--backend", choices=["torch", "cupy"], default="torch")
    ap.add_argument("--iterations", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="the smallest sizes only")
    ap.add_argument("--threads", type=int, help="torch's CPU threads (default: torch's own choice)")
    ap.add_argument("--link-world", type=int, help="also measure the gloo link between this many ranks")
    ap.add_argument(
        "--world",
        type=int,
        default=1,
        help="also run the sizes on this many gloo ranks (CPU), to fit the exchange's and halo's local work",
    )
    ap.add_argument("--out", type=Path, required=True, help="the profile's JSON")
    ap.add_argument("--samples", type=Path, help="also the samples, as JSON")
    args = ap.parse_args(argv)
    if args.world > 1 and args.device != "cpu":
        ap.error("--world runs CPU ranks (gloo) only")
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    links = {}
    if args.link_world:
        ranks = run_ranks(args.link_world, _all_to_all_samples)
        slowest = [(b, max(r[i][1] for r in ranks)) for i, (b, _) in enumerate(ranks[0])]  # ends for the last rank
        links["gloo"] = fit_link(
            "gloo", slowest, f"measured: gloo all-to-all between {args.link_world} processes on this machine"
        )
        print(f"calibrate: gloo link {links['gloo']}", file=sys.stderr)
    samples = []
    sizes = QUICK if args.quick else GPU_SIZES if device.type == "cuda" else SIZES
    for size in sizes:
        samples += measure(size, device, args.backend, args.iterations, memory=True)
        print(f"calibrate: {size}: {sum(samples[-2][1].values()):.3f} s per iteration", file=sys.stderr)  # [-1]: bytes
    if args.world > 1:
        if "gloo" not in links:
            ap.error("--world needs --link-world: the collectives' time is taken out of the exchange's")
        for rank in run_ranks(args.world, _rank_samples, sizes, args.backend, args.iterations, args.threads):
            samples += rank
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    fitted = local_work(samples, links.get("gloo"))
    memory = (
        torch.cuda.get_device_properties(device).total_memory
        if device.type == "cuda"
        else os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    )
    commit = provenance()["commit"]
    profile = fit_profile(fitted, name, args.backend, commit, torch.get_num_threads(), links, memory)
    profile.save(args.out)
    if args.samples:
        args.samples.write_text(json.dumps([{"counts": c, "seconds": s} for c, s in samples], indent=1) + "\n")
    worst = max(profile.fit.items(), key=lambda kv: kv[1])
    print(
        f"calibrate: wrote {args.out}; the worst stage's fit is {worst[0]}, {worst[1]:.0%} off at worst",
        file=sys.stderr,
    )
    # the last line: what bench/gpu_check.sh records (expected: a profile of every stage, each fit finite)
    ok = set(profile.stages) == set(DRIVERS) and all(math.isfinite(v) for v in profile.fit.values())
    print(json.dumps({"profile": str(args.out), "device": profile.device, "fit": profile.fit, "ok": ok}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
