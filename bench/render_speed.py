"""Forward+backward time and peak GPU memory of the render backends on one camera.

Usage: python bench/render_speed.py [--n 20000[,N2...]] [--size 256 | --width W --height H]
                                    [--backend torch[,cupy]] [--device cpu|cuda] [--repeat 5]
The scene: N Gaussians uniform in a cube of side 2 seen from distance 3 (about 53 degrees vertical field of
view), log-uniform scales 0.01..0.05, random rotations, opacities sigmoid(N(0, 2)), SH degree 3. Prints one JSON
line per (backend, N): median forward and backward seconds over ``repeat`` runs after one warm-up, and on CUDA
the peak memory torch allocated during them. The issue-6 run on a GPU:
    python bench/render_speed.py --device cuda --backend torch,cupy --n 100000,1000000 --width 1920 --height 1080
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time

import torch

from grendel_py.data.cameras import Camera, look_at
from grendel_py.model.gaussians import Gaussians
from grendel_py.render import render


def random_model(n: int, spread: float, sigma: float, sigma_span: float, device: str, seed: int = 0) -> Gaussians:
    """``n`` random Gaussians (SH degree 3) in the cube of half size ``spread``, sigmas from ``sigma`` times
    ``sigma_span`` (log-uniform)."""
    g = torch.Generator().manual_seed(seed)
    log_scales = math.log(sigma) + torch.rand(n, 3, generator=g) * math.log(sigma_span)  # drawn first, as ever
    return Gaussians(
        means=(torch.rand(n, 3, generator=g) * 2 - 1) * spread,
        log_scales=log_scales,
        quats=torch.randn(n, 4, generator=g),
        opacity_logits=torch.randn(n, generator=g) * 2,
        sh0=torch.randn(n, 1, 3, generator=g) * 0.5,
        shN=torch.randn(n, 15, 3, generator=g) * 0.05,
        ids=torch.arange(n),
    ).to(device)


def bench_scene(n: int, width: int, height: int, device: str, seed: int = 0) -> tuple[Gaussians, Camera]:
    gaussians = random_model(n, 1.0, 0.01, 5.0, device, seed)
    R, t = look_at(torch.tensor([0.0, -0.5, -3.0]), torch.zeros(3), torch.tensor([0.0, -1.0, 0.0]))
    f = 0.5 * height / math.tan(math.radians(53.0) / 2)
    return gaussians, Camera(0, "bench", width, height, f, f, width / 2, height / 2, R, t)


def run(n: int, width: int, height: int, backend: str, device: str, repeat: int) -> dict:
    """Time ``repeat`` forward and backward passes (after one warm-up) of ``backend`` on the bench scene."""
    gaussians, camera = bench_scene(n, width, height, device)
    params = [
        gaussians.means,
        gaussians.log_scales,
        gaussians.quats,
        gaussians.opacity_logits,
        gaussians.sh0,
        gaussians.shN,
    ]
    for p in params:
        p.requires_grad_(True)
    cuda = device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    fwd, bwd = [], []
    for i in range(repeat + 1):
        if cuda and i == 1:
            torch.cuda.reset_peak_memory_stats()
        for p in params:
            p.grad = None
        sync()
        t0 = time.perf_counter()
        out = render(gaussians, camera, backend=backend)
        sync()
        t1 = time.perf_counter()
        (out.image.sum() + out.alpha.sum()).backward()
        sync()
        t2 = time.perf_counter()
        fwd.append(t1 - t0)
        bwd.append(t2 - t1)
    fwd, bwd = sorted(fwd[1:]), sorted(bwd[1:])
    counts = out.bins.counts
    return {
        "backend": backend,
        "device": torch.cuda.get_device_name() if cuda else platform.processor() or "cpu",
        "host": platform.node(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "n": n,
        "width": width,
        "height": height,
        "visible": int(out.splats.visible.sum()),
        "intersections": int(counts.sum()),
        "max_per_tile": int(counts.max()),
        "mean_alpha": float(out.alpha.detach().mean()),
        "forward_s": fwd[len(fwd) // 2],
        "backward_s": bwd[len(bwd) // 2],
        "total_s": fwd[len(fwd) // 2] + bwd[len(bwd) // 2],
        "peak_memory_bytes": torch.cuda.max_memory_allocated() if cuda else None,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", default="20000", help="Gaussian counts, comma separated")
    ap.add_argument("--size", type=int, default=256, help="square image side (unless --width/--height)")
    ap.add_argument("--width", type=int)
    ap.add_argument("--height", type=int)
    ap.add_argument("--backend", default="torch", help="backends, comma separated: torch, cupy")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    width, height = args.width or args.size, args.height or args.size
    for backend in args.backend.split(","):
        for n in (int(v) for v in args.n.split(",")):
            print(json.dumps(run(n, width, height, backend, args.device, args.repeat)), flush=True)


if __name__ == "__main__":
    main()
