"""Peak resident memory of one training rank per Gaussian (issue 17's measure), on the CPU.

    python bench/bytes_per_gaussian.py [--gaussians 2000000] [--world 1] [--width 1920 --height 1080] [--batch 4] [--micro-batch 0] [--iterations 2] [--malloc-trim] [--live [--census]] [--kernels]

One rank (the distributed step on a single process) trains N Gaussians at SH degree 3 on batches of views
around them: loss, backward, densification statistics, Adam, as the training loop does it (``--micro-batch``:
cameras per forward and backward pass, ``train.micro_batch``; 0: the whole batch). ``--world W``: W gloo
ranks in W processes (one thread each, as torchrun gives them), each owning a kd shard of the N Gaussians,
the exchange of splats and halos live; every rank's peak per Gaussian of its shard, and the ranks' peaks
summed per Gaussian of the model. Counted: parameters, gradients, Adam state,
densification statistics and every per-iteration buffer, i.e. the peak resident set size after the photos
(random 8-bit images, excluded as the issue asks) and the rest of the process were set up, divided by N.
Gaussians are small (sigma ``--scale`` of the scene's half size at most), so the CPU renderer stays fast
enough; the per-Gaussian cost of projection does not depend on their size. Prints one JSON object.

``--live`` also reads glibc's bytes in use (``mallinfo2``: heap blocks in use plus mapped blocks) after
every aten operation of the passes: the peak of live allocations, without the freed memory glibc keeps
resident (which the resident size counts), and the operation and project code where it was reached; also
the highest peaks of the other phases of the pass (``live_peaks_by_phase``). Slower (one ``mallinfo2`` and a
walk of the stack per operation). ``--census`` adds what made the storages alive near the peak (within 0.2%
of it: the operation and project lines that made each; storages made before the passes, such as Adam's
moments, are not listed): about three times slower again. With ``--live``, the step's transient bytes (issue
37, item 3): each pass's peak of live bytes above those alive when it began, less the gradient buffers it
allocates (counted with the parameters and Adam), per visible Gaussian per camera.

``--kernels``: the GPU step's code path on the CPU: the CUDA kernels (projection, binning, rasterization, the
fused loss) run by the host launcher of the kernel tests (tests/host_kernels.py) instead of the torch
renderer. Every buffer the step holds is a torch tensor allocated as on a GPU, so ``--live`` then counts the
bytes the GPU step holds (less what the GPU adds: its caching allocator's rounding, the sort's scratch).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import math
import os
import resource
import sys
import time
import weakref
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.gpu_check import _views
from bench.provenance import provenance
from grendel_py.config import DensifyConfig, OptimConfig
from grendel_py.model.densify import DensifyStrategy
from grendel_py.model.gaussians import TRAINABLE, Gaussians
from grendel_py.model.optim import GaussianOptimizer
from grendel_py.parallel.runtime import single_process
from grendel_py.parallel.step import Batch, StepOptions
from grendel_py.render import visible_rows
from grendel_py.render.kernel_backend import KernelBackend
from grendel_py.train.loop import micro_batches, train_pass
from partition.balancer import TileBalancer
from partition.spatial import assign_owners
from tests.dist_util import run_ranks
from tests.host_kernels import HostKernels


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


_LIBC = ctypes.CDLL("libc.so.6")
_LIBC.mallinfo2.restype = _MallInfo2


class LivePeak(TorchDispatchMode):
    """The peak of glibc's bytes in use (minus ``base``), read after every aten operation, and where it was:
    the operation and the innermost lines of the project's code that ran it. Also the peak of each phase
    (the outermost line of the project's code, the training pass's, then the functions of the next two
    frames), so that one run shows the peaks that come after the highest."""

    def __init__(self, base: int, census: bool = False):
        super().__init__()
        self.take_census = census
        self.base, self.peak, self.where = base, 0, ""
        self.pass_peak = 0  # the peak since the caller last set it
        self.phases: dict[str, tuple[int, str]] = {}
        self._names: dict[str, str | None] = {}
        # storages made by the passes' operations: data_ptr -> (bytes, where)
        self._alive: dict[int, tuple[int, str]] = {}
        self.census: list[tuple[str, int]] = []  # near the peak: bytes alive by where they were made, largest first
        self._census_at = 0  # the bytes in use when the census was taken

    @staticmethod
    def in_use() -> int:
        info = _LIBC.mallinfo2()
        return info.uordblks + info.hblkhd

    def _ours(self) -> list[tuple[str, str]]:
        """The project's lines on the stack, innermost first: ("file:line", "file:function")."""
        out, frame = [], sys._getframe(2)
        while frame is not None:
            filename = frame.f_code.co_filename
            if filename not in self._names:
                self._names[filename] = (
                    str(Path(filename).relative_to(ROOT)) if filename.startswith(str(ROOT / "grendel_py")) else None
                )
            if self._names[filename] is not None:
                out.append(
                    (f"{self._names[filename]}:{frame.f_lineno}", f"{self._names[filename]}:{frame.f_code.co_name}")
                )
            frame = frame.f_back
        return out

    def _track(self, out, where: str) -> None:
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.device.type == "cpu":
                storage = t.untyped_storage()
                key = storage.data_ptr()
                if key and key not in self._alive:
                    self._alive[key] = (storage.nbytes(), where)
                    weakref.finalize(storage, self._alive.pop, key, None)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        now = self.in_use() - self.base
        self.pass_peak = max(self.pass_peak, now)
        ours = self._ours()
        if self.take_census:
            self._track(out, f"{func.__name__} at {' < '.join(line for line, _ in ours[:2])}")
        phase = " > ".join([line for line, _ in ours[-1:]] + [name for _, name in ours[-3:-1][::-1]])
        if now > self.phases.get(phase, (-1, ""))[0] or now > self.peak:
            where = f"{func} at {' < '.join(line for line, _ in ours[:3])}"
            if now > self.phases.get(phase, (-1, ""))[0]:
                self.phases[phase] = (now, where)
            if now > self.peak:
                # within 0.2% of the peak: fewer walks of the census
                if self.take_census and now > self._census_at + (self.peak >> 9):
                    by_where: dict[str, int] = {}
                    for nbytes, made in self._alive.values():
                        by_where[made] = by_where.get(made, 0) + nbytes
                    self.census, self._census_at = sorted(by_where.items(), key=lambda kv: -kv[1]), now
                self.peak, self.where = now, where
        return out

    def report(self, n: int, top: int = 10) -> dict:
        """The peak and the ``top`` highest phase peaks, in bytes per Gaussian of ``n``."""
        phases = sorted(self.phases.items(), key=lambda kv: -kv[1][0])[:top]
        return {
            "peak_live_bytes_per_gaussian": self.peak / n,
            "peak_live_at": self.where,
            "live_peaks_by_phase": [
                {"bytes_per_gaussian": round(b / n, 1), "phase": k, "at": at} for k, (b, at) in phases
            ],
            **(
                {
                    "near_peak_made_in_the_passes": [
                        {"bytes_per_gaussian": round(b / n, 1), "made_by": w} for w, b in self.census[: top * 2]
                    ],
                    "near_peak_made_in_the_passes_total": round(sum(b for _, b in self.census) / n, 1),
                }
                if self.take_census
                else {}
            ),
        }


def measure(ctx, args: argparse.Namespace) -> dict:
    """This rank's measurement: its shard of the N Gaussians (all of them on one rank), trained for
    ``args.iterations`` + 1 iterations."""
    if ctx.distributed:
        torch.set_num_threads(1)
    trim = _LIBC.malloc_trim if args.malloc_trim else lambda _: None
    n = args.gaussians
    cameras = _views(args.batch, args.width, args.height)
    g = torch.Generator().manual_seed(0)
    photos = [
        torch.randint(0, 256, (args.height, args.width, 3), generator=g, dtype=torch.uint8).float().div_(255)
        for _ in cameras
    ]
    balancer = TileBalancer("locality", ctx.world_size, calibrate=False)
    if args.kernels:
        kernels = KernelBackend(HostKernels().launch)
        options = StepOptions(torch.zeros(3), kernels, balancer=balancer, loss_kernels=kernels.launch)
    else:
        options = StepOptions(torch.zeros(3), balancer=balancer)
    # the photos and the process are not counted, nor on several ranks the whole model their shards are taken
    # from; one rank's shard is the model, its parameters counted
    baseline, live_base = rss_bytes(), LivePeak.in_use()
    model = Gaussians(
        means=torch.rand(n, 3, generator=g) * 2 - 1,
        log_scales=math.log(args.scale / 4) + torch.rand(n, 3, generator=g) * math.log(4.0),
        quats=torch.randn(n, 4, generator=g),
        opacity_logits=torch.randn(n, generator=g) * 2,
        sh0=torch.randn(n, 1, 3, generator=g) * 0.5,
        shN=torch.randn(n, 15, 3, generator=g) * 0.05,
        ids=torch.arange(n),
    )
    if ctx.world_size == 1:
        gaussians = model
    else:
        gaussians = model.select(assign_owners(model.means, ctx.world_size) == ctx.rank)
        del model
        baseline, live_base = rss_bytes(), LivePeak.in_use()
    live = LivePeak(live_base, args.census) if args.live else contextlib.nullcontext()
    optimizer = GaussianOptimizer(gaussians, OptimConfig(), extent=2.0, batch_size=args.batch)
    shard = optimizer.gaussians
    densify = DensifyStrategy(DensifyConfig(), extent=2.0, seed=0)
    seconds, sent, transient, visible = [], 0, 0, 0
    for _ in range(args.iterations + 1):
        tic = time.perf_counter()
        for part in micro_batches(len(cameras), args.micro_batch):
            if args.live:
                live.pass_peak = start = LivePeak.in_use() - live.base
                grads_before = sum(
                    getattr(shard, f).grad.nbytes for f in TRAINABLE if getattr(shard, f).grad is not None
                )
            with live:
                rendered = train_pass(shard, Batch(cameras[part], photos[part], 3), options, ctx, densify)
            if args.live:
                grads = (
                    sum(getattr(shard, f).grad.nbytes for f in TRAINABLE if getattr(shard, f).grad is not None)
                    - grads_before
                )
                seen = sum(visible_rows(shard, cameras[part], options.backend)[1])
                if (live.pass_peak - start - grads) / seen > (transient / visible if visible else -1):
                    transient, visible = live.pass_peak - start - grads, seen
            sent += rendered.bytes_sent
            trim(0)
        optimizer.step()
        trim(0)
        seconds.append(time.perf_counter() - tic)
    steady = rss_bytes() - baseline
    peak = peak_rss_bytes() - baseline
    mine = len(shard)
    return {
        "rank": ctx.rank,
        "gaussians": mine,
        "seconds_per_iteration": seconds,
        "exchange_bytes_sent": sent,
        "peak_bytes_per_gaussian": peak / mine,
        "steady_bytes_per_gaussian": steady / mine,
        "peak_bytes": peak,
        "peak_rss_gb": peak_rss_bytes() / 1e9,
        "baseline_rss_gb": baseline / 1e9,
        **(live.report(mine) if args.live else {}),
        **(
            {
                "transient_bytes": transient,
                "visible_gaussian_cameras": visible,
                "transient_bytes_per_visible_gaussian_per_camera": transient / visible,
            }
            if args.live
            else {}
        ),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--gaussians", type=int, default=2_000_000)
    p.add_argument("--world", type=int, default=1, help="ranks (gloo processes), each with a kd shard")
    p.add_argument("--width", type=int, default=1920)
    p.add_argument("--height", type=int, default=1080)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--micro-batch", type=int, default=0, help="cameras per forward and backward pass (0: all)")
    p.add_argument("--iterations", type=int, default=2)
    p.add_argument("--scale", type=float, default=0.004, help="largest sigma, in units of the scene's half size")
    p.add_argument("--malloc-trim", action="store_true", help="glibc malloc_trim(0) after each pass and step")
    p.add_argument("--live", action="store_true", help="also the peak of glibc's bytes in use (slower)")
    p.add_argument(
        "--census",
        action="store_true",
        help="with --live: what the storages alive near the peak were made by (much slower)",
    )
    p.add_argument("--kernels", action="store_true", help="the GPU step's kernels, on the host launcher")
    args = p.parse_args()
    if args.world == 1:
        ranks = [measure(single_process("cpu"), args)]
    else:
        ranks = run_ranks(args.world, measure, args, timeout=24 * 3600)
    setup = {
        "command": " ".join(sys.argv),
        **provenance(),
        "gaussians": args.gaussians,
        "world": args.world,
        "width": args.width,
        "height": args.height,
        "batch": args.batch,
        "micro_batch": args.micro_batch,
        "sh_degree": 3,
        "iterations": args.iterations + 1,
        "malloc_trim": args.malloc_trim,
        "renderer": "kernels (host launcher)" if args.kernels else "torch",
        "torch": torch.__version__,
        "malloc_env": {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")},
    }
    if args.world == 1:
        (rank,) = ranks
        print(
            json.dumps(
                {**setup, **{k: v for k, v in rank.items() if k not in ("rank", "gaussians", "exchange_bytes_sent")}}
            )
        )
    else:
        total = sum(r["peak_bytes"] for r in ranks)
        print(
            json.dumps(
                {
                    **setup,
                    "peak_bytes_per_gaussian_all_ranks": total / args.gaussians,
                    "max_rank_peak_bytes_per_gaussian": max(r["peak_bytes_per_gaussian"] for r in ranks),
                    "ranks": ranks,
                }
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
