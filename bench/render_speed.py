"""Forward+backward time of the renderer on one camera.

Usage: python bench/render_speed.py [--n 20000] [--size 256] [--backend torch] [--device cpu] [--repeat 5]
The scene: N Gaussians uniform in a cube of side 2 seen from distance 3 (about 53 degrees field of view),
log-uniform scales 0.01..0.05, random rotations, opacities sigmoid(N(0, 2)), SH degree 3. Prints one JSON line.
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


def bench_scene(n: int, size: int, device: str, seed: int = 0) -> tuple[Gaussians, Camera]:
    g = torch.Generator().manual_seed(seed)
    log_scales = math.log(0.01) + torch.rand(n, 3, generator=g) * math.log(5.0)
    gaussians = Gaussians(
        means=torch.rand(n, 3, generator=g) * 2 - 1,
        log_scales=log_scales,
        quats=torch.randn(n, 4, generator=g),
        opacity_logits=torch.randn(n, generator=g) * 2,
        sh0=torch.randn(n, 1, 3, generator=g) * 0.5,
        shN=torch.randn(n, 15, 3, generator=g) * 0.05,
        ids=torch.arange(n),
    ).to(device)
    R, t = look_at(torch.tensor([0.0, -0.5, -3.0]), torch.zeros(3), torch.tensor([0.0, -1.0, 0.0]))
    f = 0.5 * size / math.tan(math.radians(53.0) / 2)
    return gaussians, Camera(0, "bench", size, size, f, f, size / 2, size / 2, R, t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--backend", default="torch")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()

    gaussians, camera = bench_scene(args.n, args.size, args.device)
    params = [gaussians.means, gaussians.log_scales, gaussians.quats, gaussians.opacity_logits, gaussians.sh0, gaussians.shN]
    for p in params:
        p.requires_grad_(True)
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    fwd, bwd = [], []
    for _ in range(args.repeat + 1):
        sync()
        t0 = time.perf_counter()
        out = render(gaussians, camera, backend=args.backend)
        sync()
        t1 = time.perf_counter()
        (out.image.sum() + out.alpha.sum()).backward()
        sync()
        t2 = time.perf_counter()
        fwd.append(t1 - t0)
        bwd.append(t2 - t1)
    fwd, bwd = sorted(fwd[1:]), sorted(bwd[1:])
    counts = out.bins.counts
    print(json.dumps({
        "backend": args.backend, "device": args.device if args.device == "cpu" else torch.cuda.get_device_name(),
        "host": platform.node(), "threads": torch.get_num_threads(), "n": args.n, "size": args.size,
        "visible": int(out.splats.visible.sum()), "intersections": int(counts.sum()),
        "max_per_tile": int(counts.max()), "mean_alpha": float(out.alpha.detach().mean()),
        "forward_s": fwd[len(fwd) // 2], "backward_s": bwd[len(bwd) // 2],
        "total_s": fwd[len(fwd) // 2] + bwd[len(bwd) // 2],
    }))


if __name__ == "__main__":
    main()
