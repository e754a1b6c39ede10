"""The measurements of bench/gpu_check.sh, one subcommand each; every one prints one JSON object, which holds
``ok`` (its expectation met) where the step has one, and exits 1 when it is false.

    python bench/gpu_check.py facts
    python bench/gpu_check.py gsplat-build
    python bench/gpu_check.py tests [PYTEST ARGS...]
    python bench/gpu_check.py parity [--n 200000] [--width 1920 --height 1080] [--device cuda] [--candidate cupy] [--plant]
    python bench/gpu_check.py trained RUN [--reference CPU.json] [--within-db 0.2]
    python bench/gpu_check.py share SCENE OUT [--device cuda] [--backend cupy] [--plant]
    python bench/gpu_check.py step [--n 1000000] [--width 1920 --height 1080] [--batch 1,4] [--device cuda] [--sync-budget N]

- facts: the machine (GPU name, memory, driver), Python, torch, CUDA, CuPy, and what the code was
  (bench/provenance.py: the commit, whether the tree differed from it, a hash of the GPU path's sources).
- gsplat-build: gsplat's CUDA extension compiled (or loaded when built before) for the step's side by side
  (bench/peer.py); expected: it loads.
- tests: pytest with the given arguments, its report on stderr; the counts of passed, failed, skipped and
  errored tests. Expected: no failure and no skip (every test the GPU steps select needs only a GPU and CuPy,
  so a skip there means they are missing: a silent pass otherwise).
- parity: one scene rendered by the ``torch`` spec and the ``candidate`` (``cupy``: the kernels on the GPU):
  images, alpha, bins (tile ids, splat order, offsets: must be equal) and the gradient of every parameter for a
  random output gradient, as max errors relative to the spec's largest value, with the spec in float64 as the
  yardstick. Expected: see :func:`parity_ok`.
- trained: a training run's metrics.json; expected: test PSNR within ``--within-db`` of the CPU reference run.
- share: the W-equivalence job of tests/test_dist_train.py (tests/model_match.py) trained on one rank and on
  two ranks sharing the device (gloo, ``dist.share_gpus``); expected: the same model Gaussian by Gaussian
  within that test's bounds, and test PSNRs within its PSNR bound.
- step: training iterations of one rank (the distributed step, loss, backward, Adam) with N Gaussians and
  batches of 1080p views: seconds per iteration (CUDA events) and those of its Adam step (torch's fused
  Adam over every Gaussian: what a sparse Adam could save at most), the seconds the GPU was busy (its own events
  in torch.profiler, CuPy's kernels seen through CUPTI; the busiest kernels' table on stderr) and their share,
  peak memory (and per Gaussian), the host synchronisations per iteration (grendel_py.host_syncs) and the
  device work per iteration: torch operations and kernel launches, counted as tests/test_launch_budget.py
  counts them on the CPU (the GPU step's target: at most 150 at batch 1; reported, not yet expected); and
  gsplat's step on the same scene, cameras and photos (:func:`side_by_side`), its seconds per iteration and
  ours over its. Expected: host synchronisations per iteration within the budget the CPU tests hold the
  same path to (on a GPU the kernel path's, tests/launch_budget.json; on a CPU the torch path's,
  tests/host_sync_budget.json, one rank); gsplat seeing the scene as our spec does and
  drawing our image (bench/peer.py).

``--plant`` (parity, share) and ``--plant-peer`` (step) plant a difference the expectation must catch (for bench/gpu_check.sh --plant,
which tests use to see each expectation fail). With ``--device cpu`` and small sizes the same code runs on a
CPU machine (bench/gpu_check.sh --dry-run), so CI checks everything here that does not need a GPU: parity
then takes the ``torch`` backend as its candidate.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import math
import platform
import subprocess
import sys
import time
from dataclasses import fields
from pathlib import Path

import torch
from torch.autograd import DeviceType

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import peer
from bench.provenance import provenance
from bench.render_speed import bench_scene
from grendel_py.config import OptimConfig
from grendel_py.data.cameras import Camera, look_at
from grendel_py.host_syncs import HostSyncCounter
from grendel_py.model.gaussians import TRAINABLE, Gaussians
from grendel_py.model.optim import GaussianOptimizer
from grendel_py.parallel.runtime import single_process
from grendel_py.parallel.step import Batch, StepOptions, batch_loss
from grendel_py.render import get_backend, project, rasterize, render, resolve_backend
from grendel_py.render.cuda_kernels import cupy_kernels
from grendel_py.render.kernel_backend import KernelBackend
from partition.balancer import TileBalancer
from partition.tiles import TileGrid
from tests.model_match import BOUNDS, EQUIVALENCE_OVERRIDES, compare_runs

# the kernel tests' bounds (tests/test_kernels.py): relative to the spec's largest magnitude
IMAGE_ATOL, GRAD_ATOL = 1e-5, 1e-4
# parity against float64 (see parity_ok): the kernels may be this much further from it than the float32 spec,
# plus a few float32 ulps of the largest value
FLOAT64_FACTOR, FLOAT64_SLACK = 1.25, 4 * 2.0**-23
SYNC_BUDGET = ROOT / "tests" / "host_sync_budget.json"
LAUNCH_BUDGET = ROOT / "tests" / "launch_budget.json"


def facts() -> dict:
    """The machine and the software: what a result is to be read against."""
    cuda = torch.cuda.is_available()
    out = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "host": platform.node(),
        "cpu_threads": torch.get_num_threads(),
        "cuda_available": cuda,
        "cupy": _version("cupy"),
        **provenance(),
    }
    if cuda:
        props = torch.cuda.get_device_properties(0)
        out.update(
            gpu=props.name,
            gpu_memory_bytes=props.total_memory,
            capability=f"{props.major}.{props.minor}",
            gpus=torch.cuda.device_count(),
            driver=_run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]),
        )
    return out


def _version(module: str) -> str | None:
    if importlib.util.find_spec(module) is None:
        return None
    return getattr(__import__(module), "__version__", "unknown")


def _run(cmd: list[str]) -> str | None:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


class _Outcomes:
    """pytest plugin: the session's counts of each outcome of its tests."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def pytest_terminal_summary(self, terminalreporter) -> None:
        # tests only: a module skipped whole at collection (one needing the viewer extra, say) is not a GPU test
        self.counts = {
            k: sum(getattr(r, "when", None) != "collect" for r in v)
            for k, v in terminalreporter.stats.items()
            if k in ("passed", "failed", "skipped", "error")
        }


def tests(args: list[str]) -> dict:
    import pytest

    outcomes = _Outcomes()
    with contextlib.redirect_stdout(sys.stderr):
        code = int(pytest.main(["-p", "no:cacheprovider", "-rs", *args], plugins=[outcomes]))
    return {"exit_code": code, **outcomes.counts, "ok": tests_ok(code, outcomes.counts)}


def tests_ok(exit_code: int, counts: dict[str, int]) -> bool:
    """The tests step's expectation: pytest succeeded, ran tests, and skipped none."""
    return exit_code == 0 and counts.get("passed", 0) > 0 and not counts.get("skipped")


def _params(gaussians) -> list[torch.Tensor]:
    return [getattr(gaussians, f) for f in TRAINABLE]


def _render_with(
    backend: str, n: int, width: int, height: int, device: str, dtype: torch.dtype = torch.float32, plant: bool = False
) -> dict:
    """Forward and backward of ``backend`` on the bench scene (its float fields in ``dtype``) with a fixed random
    output gradient; ``plant``: one colour of the image off by 1e-3 of the largest (a difference parity must
    catch)."""
    gaussians, camera = bench_scene(n, width, height, device)
    gaussians = Gaussians(**{f.name: _as(getattr(gaussians, f.name), dtype) for f in fields(gaussians)})
    for p in _params(gaussians):
        p.requires_grad_(True)
    grid = TileGrid(width, height)
    background = torch.tensor([0.1, 0.2, 0.3], device=device, dtype=dtype)
    splats = project(gaussians, camera, 3, backend)
    colors, alpha, bins = rasterize(splats, grid, background, None, backend)
    if plant:
        bump = torch.zeros_like(colors)
        bump.view(-1)[colors.numel() // 2] = 1e-3 * colors.detach().abs().max()
        colors = colors + bump
    g = torch.Generator(device=device).manual_seed(1)
    weights = [torch.rand(x.shape, generator=g, device=device).to(dtype) for x in (colors, alpha)]
    ((colors * weights[0]).sum() + (alpha * weights[1]).sum()).backward()
    return {
        "colors": colors.detach(),
        "alpha": alpha.detach(),
        "tile_ids": bins.tile_ids,
        "splat_index": bins.splat_index,
        "offsets": bins.offsets,
        "grads": {f: getattr(gaussians, f).grad for f in TRAINABLE},
        "intersections": int(bins.offsets[-1]),
    }


def _as(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return t.to(dtype) if t.is_floating_point() else t


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| over max |b| (0 for two empty tensors)."""
    if b.numel() == 0:
        return 0.0
    return float((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-30))


def parity(n: int, width: int, height: int, device: str, candidate: str = "cupy", plant: bool = False) -> dict:
    """The ``candidate`` backend against the float32 spec (bins must be equal), and both against the spec in
    float64: see :func:`parity_ok`. (A direct bound fails at 1080p for reasons of float32 alone: where a pixel
    is nearly opaque its colour hangs on splats whose alpha has an exponent of ten or more, and the spec on
    the CPU and on CUDA differ there too.)"""
    if candidate == "cupy" and (device != "cuda" or not torch.cuda.is_available() or _version("cupy") is None):
        return {"error": "needs a CUDA GPU and CuPy", "ok": False}
    spec, kernels = (
        _render_with("torch", n, width, height, device),
        _render_with(candidate, n, width, height, device, plant=plant),
    )
    exact = _render_with("torch", n, width, height, device, torch.float64)
    bins_equal = all(torch.equal(spec[k], kernels[k]) for k in ("tile_ids", "splat_index", "offsets"))
    same_tiles = torch.equal(spec["tile_ids"], exact["tile_ids"])
    pick = {"colors": lambda r: r["colors"], "alpha": lambda r: r["alpha"]}
    pick.update({f"grad_{f}": (lambda r, f=f: r["grads"][f]) for f in TRAINABLE})
    errors = {}
    for name, get in pick.items():
        e = {
            "cupy_vs_spec": _rel(get(kernels), get(spec)),
            "cupy_vs_float64": _rel(get(kernels), get(exact)),
            "spec_vs_float64": _rel(get(spec), get(exact)),
        }
        errors[name] = {**e, "ok": parity_ok(name, e)}
    worst = _worst(spec, kernels, exact, TileGrid(width, height))
    return {
        "n": n,
        "width": width,
        "height": height,
        "candidate": candidate,
        "intersections": spec["intersections"],
        "bins_equal": bins_equal,
        "float64_same_tiles": same_tiles,
        "max_rel_error": errors,
        "worst": worst,
        "ok": bins_equal and same_tiles and all(e["ok"] for e in errors.values()),
    }


def parity_ok(name: str, e: dict[str, float]) -> bool:
    """Whether the kernels' ``name`` (colors, alpha or grad_<field>) passes, from its errors ``e`` (relative to
    the largest value): within the kernel tests' bound of the float32 spec, or no further from the float64
    spec than float32 rounding puts the float32 spec itself, ``FLOAT64_FACTOR`` x its distance plus
    ``FLOAT64_SLACK``. The reasoning: the kernels and the spec compute the same sums in float32 in another
    order, so each lands about as far from the exact (float64) result as the other; 1.25x leaves room for
    that spread (run 3 on the H200: kernels 2.28e-3 and spec 2.28e-3 on colours, gradients the same within
    4%), where the former 2x let the kernels be twice as wrong as float32 explains. The slack, 4 float32 ulps
    of the largest value, is for a quantity the float32 spec happens to get almost exactly."""
    bound = IMAGE_ATOL if name in ("colors", "alpha") else GRAD_ATOL
    return e["cupy_vs_spec"] <= bound or e["cupy_vs_float64"] <= FLOAT64_FACTOR * e["spec_vs_float64"] + FLOAT64_SLACK


def _worst(spec: dict, kernels: dict, exact: dict, grid: TileGrid) -> dict:
    """For colours and alpha: the pixel where the kernels differ most from the float32 spec, the three values
    there (spec, kernels, spec in float64) and how many values differ by more than the kernel tests' bound."""
    worst = {}
    for name in ("colors", "alpha"):
        diff = (kernels[name].double() - spec[name].double()).abs()
        flat = int(diff.argmax())
        index = [int(i) for i in torch.unravel_index(torch.tensor(flat), diff.shape)]
        x0, y0 = (int(v) for v in grid.tile_origins(spec["tile_ids"][index[0]].cpu()))
        worst[name] = {
            "y": y0 + index[1] // grid.tile_size,
            "x": x0 + index[1] % grid.tile_size,
            "spec": spec[name].flatten()[flat].item(),
            "cupy": kernels[name].flatten()[flat].item(),
            "float64": exact[name].flatten()[flat].item(),
            "spec_alpha": spec["alpha"][index[0], index[1]].item(),
            "values_over_bound": int((diff > IMAGE_ATOL * spec[name].double().abs().max()).sum()),
        }
    return worst


def trained(run: Path, reference: Path | None, within_db: float) -> dict:
    """A training run's numbers (its metrics.json), with the CPU reference run's (a JSON file with
    ``test_psnr``) and the expectation: test PSNR within ``within_db`` of it."""
    m = json.loads((run / "metrics.json").read_text())
    out = {
        "world_size": m["world_size"],
        "images": m["images"],
        "train_seconds": m["train_seconds"],
        "seconds_per_iteration": m["seconds_per_iteration"],
        "num_gaussians": m["num_gaussians"],
        "test_psnr": m["test"]["psnr"],
        "test_ssim": m["test"]["ssim"],
    }
    out.update({k: m[k] for k in ("peak_rss_bytes", "peak_device_bytes", "data_seconds_per_iteration") if k in m})
    if reference is not None:
        ref = json.loads(reference.read_text())
        out["cpu_reference"] = ref
        out["psnr_minus_cpu_reference"] = out["test_psnr"] - ref["test_psnr"]
        out["expected"] = f"test PSNR within {within_db:g} dB of the CPU reference ({reference.name})"
        out["ok"] = abs(out["psnr_minus_cpu_reference"]) <= within_db
    return out


def share(scene: Path, out: Path, device: str, backend: str, plant: bool = False) -> dict:
    """The W-equivalence job on one rank and on two ranks sharing ``device`` (gloo), compared by the W-
    equivalence test's bounds. ``plant``: the two-rank run starts from another seed (a different model, which
    the comparison must catch)."""
    common = [f"data.path={scene}", *EQUIVALENCE_OVERRIDES, f"train.device={device}", f"render.backend={backend}"]
    runs = {1: out / "w1", 2: out / "w2"}
    launch = {
        1: [sys.executable, "-m", "grendel_py"],
        2: [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "grendel_py"],
    }
    for w, run in runs.items():
        extra = ["dist.share_gpus=true"] if w == 2 else []
        extra += ["seed=1"] if plant and w == 2 else []
        cmd = [*launch[w], "train", *common, *extra, f"train.out={run}"]
        print("$", " ".join(cmd), file=sys.stderr, flush=True)
        done = subprocess.run(cmd, stdout=sys.stderr, stderr=sys.stderr)
        if done.returncode != 0:
            return {"error": f"the {w}-rank run exited {done.returncode}", "ok": False}
    psnr = [json.loads((r / "metrics.json").read_text())["test"]["psnr"] for r in runs.values()]
    same = compare_runs(runs[1], runs[2])
    ok = same["ok"] and abs(psnr[1] - psnr[0]) <= BOUNDS.psnr_db
    failures = same["failures"] + (
        [] if abs(psnr[1] - psnr[0]) <= BOUNDS.psnr_db else [f"test PSNRs {psnr[0]:.3f} and {psnr[1]:.3f} dB"]
    )
    return {
        "device": device,
        "backend": backend,
        "test_psnr": psnr,
        **same,
        "failures": failures,
        "expected": "the one-rank model, Gaussian by Gaussian within tests/model_match.py's BOUNDS",
        "ok": ok,
    }


def _views(batch: int, width: int, height: int) -> list[Camera]:
    """``batch`` cameras on a circle around the bench scene."""
    f = 0.5 * height / math.tan(math.radians(53.0) / 2)
    cams = []
    for b in range(batch):
        a = 2 * math.pi * b / max(batch, 1)
        R, t = look_at(
            torch.tensor([3.0 * math.sin(a), -0.5, -3.0 * math.cos(a)]), torch.zeros(3), torch.tensor([0.0, -1.0, 0.0])
        )
        cams.append(Camera(b, f"view{b}", width, height, f, f, width / 2, height / 2, R, t))
    return cams


def step(n: int, width: int, height: int, batch: int, device: str, iterations: int, plant_peer: bool = False) -> dict:
    """Seconds per training iteration, kernel share, peak memory, host syncs and device work (torch operations
    and kernel launches, counted as tests/test_launch_budget.py counts them on the CPU) of one rank; and gsplat's
    step side by side on the same scene, cameras and photos (:func:`side_by_side`)."""
    ctx = single_process("cuda" if device == "cuda" else "cpu")
    cuda = ctx.device.type == "cuda"
    gaussians, _ = bench_scene(n, width, height, str(ctx.device))
    backend = resolve_backend("auto", ctx.device)
    optimizer = GaussianOptimizer(gaussians, OptimConfig(), extent=2.0, batch_size=batch)
    shard = optimizer.gaussians
    cameras = _views(batch, width, height)
    g = torch.Generator().manual_seed(2)
    images = [torch.rand(height, width, 3, generator=g).to(ctx.device) for _ in cameras]
    balancer = TileBalancer("locality", 1, calibrate=False)
    counter = HostSyncCounter(ctx.device)  # its launcher counts the kernels launched inside its with block
    renderer = KernelBackend(counter.counted(cupy_kernels(ctx.device).launch)) if backend == "cupy" else None
    options = StepOptions(
        torch.zeros(3, device=ctx.device),
        renderer or get_backend(backend),
        balancer=balancer,
        loss_kernels=renderer.launch if renderer else None,
    )

    def iteration(marks: tuple | None = None) -> None:
        """One iteration; ``marks``: three timers (CUDA events, or lists that take perf_counter readings) at
        its start, before Adam and at its end."""

        def stamp(i: int) -> None:
            if marks is not None and cuda:
                marks[i].record()
            elif marks is not None:
                marks[i].append(time.perf_counter())

        stamp(0)
        loss, _ = batch_loss(shard, Batch(cameras, images, 3), options, ctx)
        loss.backward()
        stamp(1)
        optimizer.step()
        stamp(2)

    iteration()  # warm-up: kernels compiled, allocator filled
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    with counter as syncs:
        iteration()
    times, adam = [], []
    for _ in range(iterations):  # timed without the profiler, whose bookkeeping per operation slows the host
        marks = tuple(torch.cuda.Event(enable_timing=True) if cuda else [] for _ in range(3))
        iteration(marks)
        if cuda:
            marks[2].synchronize()
            seconds = [marks[0].elapsed_time(m) / 1000.0 for m in marks[1:]]
        else:
            seconds = [m[0] - marks[0][0] for m in marks[1:]]
        times.append(seconds[1])
        adam.append(seconds[1] - seconds[0])
    busy = launches = None
    if cuda:  # the same iterations again under the profiler: what ran on the GPU, and for how long
        with torch.profiler.profile(
            activities=[torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
        ) as prof:
            for _ in range(iterations):
                iteration()
            torch.cuda.synchronize()
        # the device's own events (kernels, copies, CuPy's through CUPTI): an aten operation's "self CUDA time"
        # repeats its kernels' time, so summing the table's rows counts every kernel twice
        on_gpu = [e for e in prof.events() if e.device_type != DeviceType.CPU]
        busy = sum(e.time_range.elapsed_us() for e in on_gpu) / 1e6 / iterations
        launches = len(on_gpu) / iterations
        print(
            f"step n={n} {width}x{height} batch {batch}: the busiest GPU work over {iterations} iterations",
            file=sys.stderr,
        )
        print(prof.key_averages().table(sort_by="self_device_time_total", row_limit=30), file=sys.stderr)
    times.sort()
    peak = torch.cuda.max_memory_allocated() if cuda else None
    gsplat = side_by_side(n, cameras, images, iterations, options, plant_peer)
    if "seconds_per_iteration" in gsplat:
        gsplat["ours_over_gsplat"] = times[len(times) // 2] / gsplat["seconds_per_iteration"]
    return {
        "n": n,
        "width": width,
        "height": height,
        "batch": batch,
        "backend": backend,
        "device": str(ctx.device),
        "iterations": iterations,
        "seconds_per_iteration": times[len(times) // 2],
        "seconds_min": times[0],
        "adam_seconds_per_iteration": sorted(adam)[len(adam) // 2],  # torch's fused Adam over every Gaussian
        "gpu_busy_seconds_per_iteration": busy,
        "gpu_busy_share": None if busy is None else busy / times[len(times) // 2],
        "gpu_events_per_iteration": launches,
        "peak_memory_bytes": peak,
        "peak_bytes_per_gaussian": None if peak is None else peak / n,
        "host_syncs_per_iteration": syncs.total,
        "host_syncs_by_kind": dict(syncs.kinds),
        "host_syncs_by_site": dict(syncs.sites),
        "device_work_per_iteration": syncs.work,
        "kernel_launches_per_iteration": dict(syncs.launches),
        "device_work_by_site": dict(syncs.work_sites),
        "gsplat": gsplat,
    }


def side_by_side(
    n: int, cameras: list[Camera], photos: list, iterations: int, options: StepOptions, plant: bool
) -> dict:
    """gsplat's training step on the bench scene of ``n`` Gaussians (afresh), ``cameras`` and ``photos``
    (bench/peer.py): that it sees the scene as we do (conventions: its torch reference projection against our
    spec), that its image is ours (agreement, against our step's renderer) and its seconds per iteration, with
    our step's loss (its fused kernels on the GPU, else the torch spec). On a CPU our torch renderer stands in for
    gsplat's rasterizer. ``plant``: gsplat given the quaternions in the wrong order. Where gsplat cannot be
    loaded on a GPU, why (and ``ok`` from the conventions alone)."""
    device = photos[0].device
    gaussians, _ = bench_scene(n, cameras[0].width, cameras[0].height, str(device))
    result = {"conventions": peer.conventions(gaussians, cameras[0], plant)}
    try:
        rasterize = peer.gsplat_rasterization() if device.type == "cuda" else peer.spec_rasterization
    except Exception as e:  # any failure to load the peer is reported, not fatal to our own figures
        return {
            **result,
            "error": f"gsplat could not be loaded: {type(e).__name__}: {e}",
            "ok": result["conventions"]["ok"],
        }
    with torch.no_grad():
        theirs = rasterize(**peer.gsplat_inputs(gaussians, cameras[:1], plant), packed=False)[0][0]
        result["agreement"] = peer.agreement(theirs, render(gaussians, cameras[0], backend=options.backend).image)
    result.update(
        peer.peer_step(rasterize, gaussians, cameras, photos, iterations, options.lambda_dssim, options.loss_kernels)
    )
    result["ok"] = result["conventions"]["ok"] and result["agreement"]["ok"]
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="what", required=True)
    sub.add_parser("facts")
    sub.add_parser("gsplat-build")
    sub.add_parser("tests")  # every further argument is pytest's
    for name, n in (("parity", 200_000), ("step", 1_000_000)):
        p = sub.add_parser(name)
        p.add_argument("--n", type=int, default=n)
        p.add_argument("--width", type=int, default=1920)
        p.add_argument("--height", type=int, default=1080)
        p.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
        if name == "step":
            p.add_argument("--batch", default="1,4", help="batch sizes, comma separated")
            p.add_argument("--iterations", type=int, default=5)
            p.add_argument(
                "--sync-budget",
                type=int,
                help="host synchronisations per iteration allowed (default: the kernel path's budget on a GPU,"
                " tests/launch_budget.json; the torch path's on a CPU, tests/host_sync_budget.json)",
            )
            p.add_argument("--plant-peer", action="store_true", help="gsplat given a wrong convention")
        else:
            p.add_argument(
                "--candidate", choices=["cupy", "torch"], default="cupy", help="the backend checked against the spec"
            )
            p.add_argument("--plant", action="store_true", help="a difference the check must catch")
    p = sub.add_parser("trained")
    p.add_argument("run", type=Path)
    p.add_argument("--reference", type=Path, help="the CPU reference run's JSON (test_psnr)")
    p.add_argument("--within-db", type=float, default=0.2)
    p = sub.add_parser("share")
    p.add_argument("scene", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    p.add_argument("--backend", choices=["cupy", "torch"], default="cupy")
    p.add_argument("--plant", action="store_true", help="a difference the check must catch")
    args, rest = ap.parse_known_args(argv)
    if rest and args.what != "tests":
        ap.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.what == "facts":
        result = facts()
    elif args.what == "gsplat-build":
        result = peer.build()
    elif args.what == "tests":
        result = tests(rest)
    elif args.what == "parity":
        result = parity(args.n, args.width, args.height, args.device, args.candidate, args.plant)
    elif args.what == "trained":
        result = trained(args.run, args.reference, args.within_db)
    elif args.what == "share":
        result = share(args.scene, args.out, args.device, args.backend, args.plant)
    else:
        batches = [int(b) for b in args.batch.split(",")]
        if args.sync_budget is None:
            args.sync_budget = (
                json.loads(LAUNCH_BUDGET.read_text())["syncs"]
                if args.device == "cuda"
                else json.loads(SYNC_BUDGET.read_text())["W1_B1"]
            )
        runs = [
            step(args.n, args.width, args.height, b, args.device, args.iterations, args.plant_peer) for b in batches
        ]
        syncs_ok = all(r["host_syncs_per_iteration"] <= args.sync_budget for r in runs)
        peer_ok = all(r["gsplat"]["ok"] for r in runs)
        result = {
            "runs": runs,
            "expected": f"at most {args.sync_budget} host synchronisations per iteration; gsplat sees the scene as"
            " we do and draws our image (bench/peer.py)",
            "syncs_ok": syncs_ok,
            "gsplat_ok": peer_ok,
            "ok": syncs_ok and peer_ok,
        }
    print(json.dumps(result))
    return 1 if result.get("ok") is False else 0


if __name__ == "__main__":
    raise SystemExit(main())
