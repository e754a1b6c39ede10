"""The CUDA runtime of the tests (tests/cuda_runtime/gpu_runtime.h, built by tests/host_runtime.py) on the
small kernels of tests/cuda_runtime/probe_kernels.cu: shared memory, barriers, warp ops and atomics give
CUDA's results under every seed (and with blocks on two OS threads), seeds change the interleaving, and
barrier or warp divergence raises a RuntimeError that names kernel, block, threads and call sites. Last, the
real rasterize kernels under more seeds against the host emulation, and every runtime run of the kernel
tests again under AddressSanitizer and UndefinedBehaviorSanitizer."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from grendel_py.render import torch_backend
from grendel_py.render.intersect import BatchTiles
from grendel_py.render.kernel_backend import KernelBackend
from grendel_py.render.projection import Splats
from partition.tiles import TileGrid
from tests.host_kernels import HostKernels, compiler
from tests.host_runtime import RUNTIME_DIR, RuntimeKernels, RuntimeLibrary, available
from tests.render_scenes import random_gaussians, small_camera

pytestmark = pytest.mark.skipif(not available(), reason="needs g++ on x86-64")
REPO = Path(__file__).resolve().parents[1]

SIGNATURES = {
    RUNTIME_DIR / "probe_kernels.cu": {
        "block_reduce": ("i32", "f32*", "f32*"),
        "racy_neighbour": ("i32*", "i32*"),
        "synced_neighbour": ("i32*", "i32*"),
        "count_positive": ("i32*", "i32*"),
        "warp_ops": ("i32*", "i32*"),
        "warp_float_sum": ("f32*", "f32*"),
        "atomics": ("i32", "f32*", "f32*", "i32*", "i64*", "i32*"),
        "arrival_order": ("i32*", "i32*"),
        "exit_before_barrier": ("i32*",),
        "divergent_barriers": ("i32*",),
        "shfl_after_exit": ("i32", "i32", "i32*"),
        "vote_beside_barrier": ("i32*",),
        "divergent_votes": ("i32*",),
    }
}
SEEDS = [0, 1, 7]


@pytest.fixture(scope="module")
def lib() -> RuntimeLibrary:
    return RuntimeLibrary(SIGNATURES)


def _ints(n: int, seed: int, low: int = -10, high: int = 100) -> torch.Tensor:
    return torch.randint(low, high, (n,), generator=torch.Generator().manual_seed(seed), dtype=torch.int32)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("block", [256, 64])
def test_block_reduction_through_shared_memory(lib, seed: int, block: int) -> None:
    x = torch.rand(1000, generator=torch.Generator().manual_seed(seed))
    grid = -(-1000 // block)
    sums = torch.empty(grid)
    lib.launch("block_reduce", (grid,), (block,), (1000, x, sums), seed=seed, workers=2)
    expected = torch.nn.functional.pad(x, (0, grid * block - 1000)).view(grid, block).sum(1)
    torch.testing.assert_close(sums, expected)


def test_seeds_change_the_interleaving(lib) -> None:
    """Without a barrier, what a thread reads of its neighbour's shared-memory slot depends on who ran first:
    the seeds give different results. With the barrier, every seed gives the right one."""
    x = torch.arange(4 * 256, dtype=torch.int32)
    right = x.view(4, 256).roll(-1, dims=1).reshape(-1)
    racy = set()
    for seed in range(4):
        out = torch.empty_like(x)
        lib.launch("synced_neighbour", (4,), (256,), (x, out), seed=seed)
        assert torch.equal(out, right)
        lib.launch("racy_neighbour", (4,), (256,), (x, out), seed=seed)
        racy.add(tuple(out.tolist()))
    assert len(racy) > 1 and tuple(right.tolist()) not in racy


def test_same_seed_same_interleaving(lib) -> None:
    def order(seed: int) -> torch.Tensor:
        out, counters = torch.empty(3 * 256, dtype=torch.int32), torch.zeros(3, dtype=torch.int32)
        lib.launch("arrival_order", (3,), (256,), (out, counters), seed=seed, workers=2)
        assert torch.equal(out.view(3, 256).sort(1).values, torch.arange(256, dtype=torch.int32).expand(3, 256))
        return out

    assert torch.equal(order(5), order(5))
    assert not torch.equal(order(5), order(6))


@pytest.mark.parametrize("seed", SEEDS)
def test_syncthreads_count(lib, seed: int) -> None:
    x = _ints(4 * 96, seed)
    counts = torch.empty_like(x)
    lib.launch("count_positive", (4,), (8, 12), (x, counts), seed=seed)  # 3 warps per 2D block
    assert torch.equal(counts.view(4, 96), (x.view(4, 96) > 0).sum(1, dtype=torch.int32)[:, None].expand(4, 96))


def _warp_expected(v: list[int]) -> list[list[int]]:
    """warp_ops' eight results for each lane of one warp, computed lane by lane as CUDA defines them."""
    down, butterfly, scan = list(v), list(v), list(v)
    for off in (16, 8, 4, 2, 1):
        down = [down[lane] + (down[lane + off] if lane + off < 32 else down[lane]) for lane in range(32)]
        butterfly = [butterfly[lane] + butterfly[lane ^ off] for lane in range(32)]
    for off in (1, 2, 4, 8, 16):
        scan = [scan[lane] + (scan[lane - off] if lane >= off else 0) for lane in range(32)]
    ballot = sum(1 << lane for lane in range(32) if v[lane] & 1)
    ballot -= (1 << 32) if ballot >= 1 << 31 else 0
    any_, all_ = int(any(x > 90 for x in v)), int(all(x >= 0 for x in v))
    return [
        [down[lane], butterfly[lane], scan[lane], v[3], v[lane // 8 * 8 + 1], ballot, any_, all_] for lane in range(32)
    ]


@pytest.mark.parametrize("seed", SEEDS)
def test_warp_shuffles_and_votes(lib, seed: int) -> None:
    x = _ints(3 * 64, seed)
    x[:32] = x[:32].abs()  # a warp where __all_sync(v >= 0) holds
    out = torch.empty(3 * 64 * 8, dtype=torch.int32)
    lib.launch("warp_ops", (3,), (16, 4), (x, out), seed=seed)  # lanes follow the linear thread id of a 2D block
    warps = x.view(-1, 32).tolist()
    expected = [row for w in warps for row in _warp_expected(w)]
    assert out.view(-1, 8).tolist() == expected


@pytest.mark.parametrize("seed", SEEDS)
def test_float_warp_sum(lib, seed: int) -> None:
    x = torch.rand(256, generator=torch.Generator().manual_seed(seed))
    out = torch.empty_like(x)
    lib.launch("warp_float_sum", (1,), (256,), (x, out), seed=seed)
    torch.testing.assert_close(out[::32], x.view(8, 32).sum(1))


@pytest.mark.parametrize("seed", SEEDS)
def test_atomics_from_many_blocks(lib, seed: int) -> None:
    n = 5000
    # Multiples of 1/1024 below 1: every partial sum (at most 1250) is exact in float32, so the float
    # atomics' sums do not depend on the order the threads reach them and must equal the reference exactly.
    x = torch.randint(0, 1024, (n,), generator=torch.Generator().manual_seed(seed)).float() / 1024
    fsum, icount = torch.zeros(4), torch.zeros(4, dtype=torch.int32)
    usum, imax = torch.zeros(1, dtype=torch.int64), torch.full((1,), -1, dtype=torch.int32)
    lib.launch("atomics", (7,), (256,), (n, x, fsum, icount, usum, imax), seed=seed, workers=2)
    assert fsum.tolist() == x.view(-1, 4).sum(0).tolist()
    assert icount.tolist() == [n // 4] * 4
    assert int(usum) == n * (n - 1) // 2
    assert int(imax) == int((x * 1000).int().max())


def _fails(lib, name: str, block, args, *patterns: str) -> None:
    """Under every seed, launching ``name`` over two blocks raises an error whose message matches every regex."""
    for seed in SEEDS:
        with pytest.raises(RuntimeError) as err:
            lib.launch(name, (2,), block, args, seed=seed)
        for p in (rf"kernel {name}, block \([01],0,0\): ", *patterns):
            assert re.search(p, str(err.value)), str(err.value)


def test_thread_exited_before_barrier(lib) -> None:
    out = torch.zeros(64, dtype=torch.int32)
    _fails(
        lib,
        "exit_before_barrier",
        (64,),
        (out,),
        "a thread exited while others wait at a barrier",
        "exited: 5[;\\]]",
        r"at __syncthreads \(probe_kernels.cu:\d+:\d+\): ",
    )


def test_threads_at_different_barriers(lib) -> None:
    out = torch.zeros(64, dtype=torch.int32)
    _fails(
        lib,
        "divergent_barriers",
        (64,),
        (out,),
        "threads wait at different barriers",
        r"at __syncthreads \(probe_kernels.cu:(\d+):\d+\): .*at __syncthreads \(probe_kernels.cu:(?!\1)\d+:\d+\): ",
    )


def test_full_mask_shuffle_after_lanes_exited(lib) -> None:
    out = torch.full((64,), -1, dtype=torch.int32)
    _fails(
        lib,
        "shfl_after_exit",
        (64,),
        (-1, 32, out),
        r"__shfl_down_sync \(probe_kernels.cu:\d+:\d+\) in warp [01] "
        "with mask 0xffffffff: the lanes at the op are 0x0000ffff, the live lanes 0x0000ffff",
        "exited: (16-31|48-63)",
    )
    # The mask of the lanes left: legal, within 16-lane segments; reading lane 16 (width 32) is not.
    lib.launch("shfl_after_exit", (1,), (64,), (0xFFFF, 16, out), seed=3)
    assert out.view(2, 32)[:, :16].tolist() == [[*range(1, 16), 15], [*range(33, 48), 47]]
    _fails(
        lib,
        "shfl_after_exit",
        (64,),
        (0xFFFF, 32, out),
        "lane 15 of warp [01] reads lane 16, outside the mask 0x0000ffff",
    )


def test_vote_beside_barrier(lib) -> None:
    out = torch.zeros(32, dtype=torch.int32)
    _fails(
        lib,
        "vote_beside_barrier",
        (32,),
        (out,),
        r"__any_sync \(probe_kernels.cu:\d+:\d+\) in warp 0 with mask 0xffffffff: "
        "the lanes at the op are 0x0000ffff, the live lanes 0xffffffff",
        r"at __syncthreads \(probe_kernels.cu:\d+:\d+\): 16-31",
    )


def test_lanes_at_different_votes(lib) -> None:
    out = torch.zeros(32, dtype=torch.int32)
    _fails(
        lib,
        "divergent_votes",
        (32,),
        (out,),
        "lanes of warp 0 wait at different warp ops",
        r"at __any_sync \(probe_kernels.cu:\d+:\d+\): 0-15",
        r"at __all_sync \(probe_kernels.cu:\d+:\d+\): 16-31",
    )


def test_bad_launch_and_arguments(lib) -> None:
    out = torch.zeros(32, dtype=torch.int32)
    with pytest.raises(RuntimeError, match="bad launch configuration"):
        lib.launch("divergent_votes", (1,), (2048,), (out,))
    with pytest.raises(ValueError, match="argument 0"):
        lib.launch("divergent_votes", (1,), (32,), (out.float(),))
    with pytest.raises(ValueError, match="tensor on meta"):
        RuntimeKernels().launch(
            "tile_ranges",
            3,
            torch.zeros(3, dtype=torch.int64, device="meta"),
            1,
            torch.zeros(2, dtype=torch.int64, device="meta"),
        )


@pytest.mark.parametrize("seed", [1, 2])
def test_rasterize_kernels_match_the_host_emulation(seed: int) -> None:
    """cuda/rasterize.cu under more interleavings, on tiles of over 512 splats (several shared-memory batches)
    with pixels that stop early: the image is the host emulation's bit for bit, the gradients equal up to the
    order of the atomics."""
    model, cam = (
        random_gaussians(5000, seed=2, sh_degree=2, dtype=torch.float32, opacity_shift=4.0),
        small_camera(97, 113),
    )
    with torch.no_grad():
        splats = torch_backend.project(
            model.means, model.quats, model.scales(), model.opacities(), model.sh(), model.sh_degree, cam, model.ids
        )
    tiles = BatchTiles([TileGrid(cam.width, cam.height)], [None], torch.device("cpu"))
    results = []
    for launch in (HostKernels().launch, RuntimeKernels(seed, workers=2).launch):
        leaves = [
            t.clone().requires_grad_(True) for t in (splats.means2d, splats.conics, splats.opacities, splats.colors)
        ]
        s = Splats(leaves[0], leaves[1], splats.depths, leaves[2], leaves[3], splats.extents, splats.ids)
        colors, alpha, bins = KernelBackend(launch).rasterize_batch(s, [len(s)], tiles, torch.tensor([0.2, 0.5, 0.9]))
        (colors.sum() + alpha.sum()).backward()
        results.append((colors.detach(), alpha.detach(), bins, [t.grad for t in leaves]))
    (c_ref, a_ref, b_ref, g_ref), (c_got, a_got, b_got, g_got) = results
    assert int(b_ref.counts.max()) > 512 and float(a_ref.max()) > 1 - 1e-3
    assert torch.equal(c_got, c_ref) and torch.equal(a_got, a_ref)
    for got, ref in zip(g_got, g_ref):
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-6 * float(ref.abs().max()))


def _sanitizer_env(sanitize: str) -> dict[str, str] | None:
    """The environment that builds the runtime with ``-fsanitize=sanitize`` and stops at the first report;
    None when a needed sanitizer runtime is missing."""
    env = {**os.environ, "GP_RUNTIME_SANITIZE": sanitize, "UBSAN_OPTIONS": "halt_on_error=1:print_stacktrace=1"}
    if "address" in sanitize:
        asan = subprocess.run(
            [compiler(), "-print-file-name=libasan.so"], capture_output=True, text=True
        ).stdout.strip()
        if not os.path.isabs(asan) or not os.path.exists(asan):
            return None
        env.update(LD_PRELOAD=asan, ASAN_OPTIONS="detect_leaks=0:halt_on_error=1")
    return env


@pytest.mark.parametrize("sanitize", ["address,undefined"])
def test_real_kernels_under_sanitizers(sanitize: str) -> None:
    """The runtime's runs of the real kernels against the spec (tests/test_kernels.py), again in a process
    whose runtime library is built with AddressSanitizer and UndefinedBehaviorSanitizer: an out-of-bounds
    access to a tensor, an overflow or a bad float-to-int conversion in any kernel ends the run (checked by
    hand: a rasterize_forward reading one splat past its tile's list stops with a heap-buffer-overflow
    report)."""
    env = _sanitizer_env(sanitize)
    if env is None:
        pytest.skip("the compiler has no AddressSanitizer runtime (libasan.so)")
    # --capture=no: a sanitizer report ends the process, and pytest's captured output would go with it
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "--capture=no",
        "-p",
        "no:cacheprovider",
        "tests/test_kernels.py",
        "-k",
        "runtime",
    ]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
    assert re.search(r"\b\d+ passed", proc.stdout) and " failed" not in proc.stdout, proc.stdout[-2000:]
