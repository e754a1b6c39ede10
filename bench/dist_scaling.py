"""Bytes exchanged and wall time per iteration for W = 1, 2, 4 ranks on the demo scene (torchrun, gloo on CPU).

    python bench/dist_scaling.py [--scene out/demo/scene] [--images 300] [--worlds 1 2 4] [--out FILE.json]

Each world size trains ``--images`` images of configs/demo.yaml from scratch (no evaluation during training,
no checkpoints) with ``torchrun --standalone``; the numbers come from the run's metrics.json: seconds per
iteration over the whole run (so including the densification at 300 images) and the bytes the splat
exchange sent to other ranks per iteration, summed over ranks. The scene is generated when missing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run(world: int, scene: Path, images: int, out: Path) -> dict:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={world}",
        "-m",
        "grendel_py",
        "train",
        "--config",
        str(ROOT / "configs/demo.yaml"),
        f"data.path={scene}",
        f"train.out={out}",
        f"train.images={images}",
        "train.eval_every=0",
        "train.checkpoint_every=0",
        "train.eval_renders=0",
    ]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    metrics = json.loads((out / "metrics.json").read_text())
    return {
        "world_size": world,
        "images": images,
        "iterations": metrics["iterations"],
        "seconds_per_iteration": metrics["seconds_per_iteration"],
        "exchange_bytes_per_iteration": metrics["exchange_bytes_per_iteration"],
        "mean_balance": metrics["mean_balance"],
        "num_gaussians": metrics["num_gaussians"],
        "test_psnr": metrics["test"]["psnr"] if metrics["test"] else None,
        "command": " ".join(cmd),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scene", type=Path, default=ROOT / "out/demo/scene")
    p.add_argument("--images", type=int, default=300)
    p.add_argument("--worlds", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--out", type=Path, help="also write the rows as JSON here")
    args = p.parse_args()
    if not (args.scene / "sparse").exists():
        subprocess.run([sys.executable, "-m", "grendel_py", "synth", str(args.scene), "--preset", "object"], check=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for world in args.worlds:
            rows.append(run(world, args.scene, args.images, Path(tmp) / f"w{world}"))
            r = rows[-1]
            print(
                f"W={world}: {r['seconds_per_iteration']:.3f} s/iter, "
                f"{r['exchange_bytes_per_iteration'] / 1024:.1f} KiB/iter exchanged, {r['num_gaussians']} Gaussians, "
                f"test PSNR {r['test_psnr']:.2f} dB",
                flush=True,
            )
    result = {"machine": f"{platform.node()} {os.cpu_count()} CPU cores", "rows": rows}
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
