"""CPU speed of this checkout against an older commit, interleaved so that the machine's noise hits both.

Usage: python bench/ab_cpu.py [--base 2c25349] [--rounds 5] [--cases render,yardstick,demo] [--load]
                              [--demo-images 300] [--out FILE.jsonl]

Each round runs every case once per side, the sides' order rotating from round to round (each side takes
each place in turn; reversing it each round left ``main`` always between the other two): ``base`` (the
commit, checked out in a temporary git worktree), ``main`` (this checkout, uncommitted changes included) and,
for the render cases, ``gsplat`` (gsplat 1.5.3's PyTorch reference projection and SH colours, forward and
backward: a fixed yardstick whose time tracks the machine's speed; its rasterization reference needs a CUDA
op). Each side runs in a child process whose
``PYTHONPATH`` puts that side's ``grendel_py`` first, with torch's default threads.

Cases:
- ``render``: bench/render_speed.py's scene (20,000 Gaussians in a cube, SH degree 3, 256 x 256), forward and
  backward of ``render`` (``image.sum() + alpha.sum()``); the median of 5 after a warm-up.
- ``yardstick``: the same timing on 20,000 Gaussians drawn as gsplat's tests draw them (means N(0, 1) in front
  of the camera, scales 0.01-0.1, SH degree 3, 256 x 256).
- ``demo``: ``grendel train --config configs/demo.yaml`` (each side's own) for ``--demo-images`` images without
  evaluation on out/demo/scene; metrics.json's train_seconds / images, and what the run said of its CPU
  threads (``train.cpu_threads``, where the side has it).

``--load`` runs a second job for the whole bench (one process multiplying matrices on one thread), as on a
shared machine. Every measurement is one JSON line in ``--out``; the medians per case and side are printed
and appended as a ``summary`` line.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
N, SIZE, REPEAT = 20_000, 256, 5


# ----------------------------------------------------------------------------------------------- children


def _scene(kind: str):
    """(Gaussians, Camera) of the case ``kind``, built with whichever grendel_py is first on the path."""
    import torch

    from grendel_py.data.cameras import Camera, look_at
    from grendel_py.model.gaussians import Gaussians

    g = torch.Generator().manual_seed(0)
    if kind == "render":  # bench/render_speed.py's bench_scene
        log_scales = math.log(0.01) + torch.rand(N, 3, generator=g) * math.log(5.0)
        means = torch.rand(N, 3, generator=g) * 2 - 1
        opacity = torch.randn(N, generator=g) * 2
    else:  # gsplat's tests: Gaussians around the origin, seen from 3 units away
        log_scales = torch.log(torch.rand(N, 3, generator=g) * 0.09 + 0.01)
        means = torch.randn(N, 3, generator=g)
        opacity = torch.logit(torch.rand(N, generator=g).clamp(0.01, 0.99))
    gaussians = Gaussians(
        means=means,
        log_scales=log_scales,
        quats=torch.randn(N, 4, generator=g),
        opacity_logits=opacity,
        sh0=torch.randn(N, 1, 3, generator=g) * 0.5,
        shN=torch.randn(N, 15, 3, generator=g) * 0.05,
        ids=torch.arange(N),
    )
    R, t = look_at(torch.tensor([0.0, -0.5, -3.0]), torch.zeros(3), torch.tensor([0.0, -1.0, 0.0]))
    f = 0.5 * SIZE / math.tan(math.radians(53.0) / 2)
    return gaussians, Camera(0, "bench", SIZE, SIZE, f, f, SIZE / 2, SIZE / 2, R, t)


def _median_seconds(step, params) -> float:
    times = []
    for _ in range(REPEAT + 1):
        for p in params:
            p.grad = None
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return statistics.median(times[1:])


def _gsplat_reference(means, quats, log_scales, opacity_logits, sh, view, K) -> None:
    """Forward and backward of gsplat 1.5.3's PyTorch reference projection and SH colours
    (``gsplat.cuda._torch_impl``, as its ``_rasterization`` chains them). Its rasterization reference is left
    out: it finds its pixel-splat pairs with a CUDA op (``rasterize_to_indices_in_range``)."""
    import torch
    from gsplat.cuda import _torch_impl as g

    covars, _ = g._quat_scale_to_covar_preci(quats, log_scales.exp(), True, False, triu=False)
    radii, means2d, depths, conics, _ = g._fully_fused_projection(means, covars, view[None], K[None], SIZE, SIZE)
    dirs = means - torch.linalg.inv(view)[:3, 3]
    colors = torch.clamp_min(g._spherical_harmonics(3, dirs, sh) + 0.5, 0.0)
    drawn = (radii[0] > 0).all(-1)
    loss = means2d[0][drawn].sum() + conics[0][drawn].sum() + depths[0][drawn].sum() + colors[drawn].sum()
    (loss + torch.sigmoid(opacity_logits)[drawn].sum()).backward()


def child_render(kind: str, side: str) -> dict:
    """Forward + backward seconds of ours (or gsplat's reference) on the scene ``kind``."""
    import torch

    gaussians, camera = _scene(kind)
    if side == "gsplat":
        leaves = [gaussians.means, gaussians.quats, gaussians.log_scales, gaussians.opacity_logits]
        leaves += [torch.cat([gaussians.sh0, gaussians.shN], 1).detach()]
        for p in leaves:
            p.requires_grad_(True)
        view = torch.eye(4)
        view[:3, :3], view[:3, 3] = camera.R.float(), camera.t.float()
        K = torch.tensor([[camera.fx, 0, camera.cx], [0, camera.fy, camera.cy], [0, 0, 1.0]])
        return {"seconds": _median_seconds(lambda: _gsplat_reference(*leaves, view, K), leaves)}
    from grendel_py.render import render

    params = [gaussians.means, gaussians.log_scales, gaussians.quats, gaussians.opacity_logits]
    params += [gaussians.sh0, gaussians.shN]
    for p in params:
        p.requires_grad_(True)
    out = {}

    def step() -> None:
        result = render(gaussians, camera)
        (result.image.sum() + result.alpha.sum()).backward()
        out["intersections"] = int(result.bins.counts.sum())

    seconds = _median_seconds(step, params)
    return {"seconds": seconds, "intersections": out["intersections"]}


def child_demo(images: int) -> dict:
    """Seconds per image of a short demo run of this side's ``grendel train``."""
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        command = [sys.executable, "-m", "grendel_py", "train", "--config", "configs/demo.yaml"]
        command += [f"data.path={REPO / 'out/demo/scene'}", f"train.out={run}", f"train.images={images}"]
        command += ["train.eval_every=0"]
        done = subprocess.run(command, check=True, capture_output=True, text=True)
        metrics = json.loads((run / "metrics.json").read_text())
    said = [line for line in done.stderr.splitlines() if line.startswith("cpu: ")]  # train.cpu_threads' changes
    return {
        "seconds": metrics["train_seconds"] / images,
        "test_psnr": (metrics.get("test") or {}).get("psnr"),
        "thread_changes": said,
    }


# ----------------------------------------------------------------------------------------------- parent


def _commit(root: Path) -> str:
    out = subprocess.run(["git", "-C", root, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", root, "status", "--porcelain", "--untracked-files=no"], capture_output=True)
    return out.stdout.strip() + ("+changes" if dirty.stdout.strip() else "")


def _measure(root: Path, case: str, side: str, demo_images: int) -> dict:
    """One measurement in a child process whose grendel_py is ``root``'s."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))}
    command = [sys.executable, str(Path(__file__).resolve()), "--child", case, "--side", side]
    command += ["--demo-images", str(demo_images)]
    done = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{side} {case} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _load() -> subprocess.Popen:
    """A second job: one thread multiplying matrices until killed."""
    code = "import torch\ntorch.set_num_threads(1)\na = torch.randn(512, 512)\nwhile True:\n    a @ a\n"
    return subprocess.Popen([sys.executable, "-c", code])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", default="2c25349")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--cases", default="render,yardstick,demo")
    ap.add_argument("--load", action="store_true")
    ap.add_argument("--demo-images", type=int, default=300)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--side", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        result = child_demo(args.demo_images) if args.child == "demo" else child_render(args.child, args.side)
        import grendel_py

        print(json.dumps({**result, "grendel_py": str(Path(grendel_py.__file__).parent)}))
        return

    worktree = Path(tempfile.mkdtemp(prefix="ab_base_"))
    subprocess.run(
        ["git", "-C", REPO, "worktree", "add", "--detach", worktree, args.base], check=True, capture_output=True
    )
    roots = {"base": worktree, "main": REPO, "gsplat": REPO}
    commits = {"base": _commit(worktree), "main": _commit(REPO), "gsplat": "gsplat 1.5.3"}
    load = _load() if args.load else None
    rows = []
    out = open(args.out, "a") if args.out else None  # noqa: SIM115 (closed below)
    try:
        for r in range(args.rounds):
            for case in args.cases.split(","):
                sides = ["base", "main"] + (["gsplat"] if case != "demo" else [])
                sides = sides[r % len(sides) :] + sides[: r % len(sides)]  # each side in each place in turn
                for side in sides:
                    result = _measure(roots[side], case, side, args.demo_images)
                    expected = str(roots[side] / "grendel_py")
                    assert result["grendel_py"] == expected, (result["grendel_py"], expected)
                    row = {"round": r, "case": case, "side": side, "commit": commits[side], "load": args.load}
                    row.update(result, host=platform.node(), date=time.strftime("%Y-%m-%dT%H:%M:%S"))
                    rows.append(row)
                    print(json.dumps(row), flush=True)
                    if out:
                        out.write(json.dumps(row) + "\n")
                        out.flush()
        summary = {"summary": True, "load": args.load, "rounds": args.rounds, "commits": commits, "median_s": {}}
        for case in args.cases.split(","):
            for side in ("base", "main", "gsplat"):
                got = [row["seconds"] for row in rows if row["case"] == case and row["side"] == side]
                if got:
                    summary["median_s"][f"{case}/{side}"] = statistics.median(got)
        print(json.dumps(summary), flush=True)
        if out:
            out.write(json.dumps(summary) + "\n")
    finally:
        if out:
            out.close()
        if load:
            load.kill()
        subprocess.run(["git", "-C", REPO, "worktree", "remove", "--force", worktree], capture_output=True)


if __name__ == "__main__":
    main()
