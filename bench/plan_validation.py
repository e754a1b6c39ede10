"""``grendel plan``'s predictions against measured runs on this machine (issue 38, item 4): seconds per
iteration of W = 1, 2, 4 gloo ranks (torchrun, one thread each, as torchrun gives them) on a scene, predicted
from a profile calibrated here with one thread (``bench/calibrate.py --threads 1 --link-world 2``), the ranks
sharing this machine's cores (``--devices``: the cores) and joined by the measured gloo link.

    python bench/plan_validation.py --profile P.json --scene SCENE [--config configs/demo.yaml] [--images 150] [--worlds 1,2,4] [--devices 2] [--memory-images 16] [key.sub=value ...] [--out FILE.json]

Each run trains ``--images`` images from the model training starts from, with densification off and learning
rates of 1e-12 (so the model the planner sees is the one trained throughout: training moves opacities, and a
splat's extent, hence its intersections, follows its opacity; the step's work is the same at any rate) and no
evaluation or checkpoints; the measured figure is metrics.json's
seconds per iteration over the whole run (the loop's own work included: photos, logging, statistics).

Memory (``--memory-images``, 0: not measured): W ranks (gloo) each build the run's training state as the loop
does (:func:`~grendel_py.train.state.initial_state`: the shard, its gradients, Adam, densification's
statistics) and train that many images with the loop's pass (:func:`~grendel_py.train.loop.train_pass`) and
Adam, glibc's bytes in use read after every operation (``bench/bytes_per_gaussian.py``'s LivePeak); the
measured figure is the largest rank's peak above what it held before the state was built (the scene and its
decoded photos, which the plan does not count, already held). Predicted: the plan of the same images' peak of
the busiest rank in the heaviest batch. Prints markdown tables, writes the JSON (``--out``) with the commands.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from bench.bytes_per_gaussian import LivePeak  # noqa: E402
from bench.provenance import provenance  # noqa: E402
from grendel_py.config import load_config  # noqa: E402
from grendel_py.data.dataset import scene_from_config  # noqa: E402
from grendel_py.data.photo_cache import photo_cache  # noqa: E402
from grendel_py.model.initialize import initial_gaussians  # noqa: E402
from grendel_py.parallel.step import Batch, StepOptions  # noqa: E402
from grendel_py.plan.planner import plan  # noqa: E402
from grendel_py.plan.profile import Profile  # noqa: E402
from grendel_py.render import get_backend  # noqa: E402
from grendel_py.simulate import SimScene  # noqa: E402
from grendel_py.train.images import GroundTruth  # noqa: E402
from grendel_py.train.loop import train_pass  # noqa: E402
from grendel_py.train.state import initial_state  # noqa: E402
from partition.balancer import TileBalancer  # noqa: E402
from tests.dist_util import run_ranks  # noqa: E402

FIXED_MODEL = ("densify.start_images=1000000000", "train.eval_every=0", "train.checkpoint_every=0",
               "train.eval_renders=0", "optim.position_lr_init=1e-12", "optim.position_lr_final=1e-12",
               "optim.sh0_lr=1e-12", "optim.shN_lr=1e-12", "optim.opacity_lr=1e-12", "optim.scaling_lr=1e-12",
               "optim.rotation_lr=1e-12")  # fmt: skip


def measure(world: int, config: Path, overrides: list[str], images: int, out: Path) -> dict:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={world}", "-m",
           "grendel_py", "train", "--config", str(config), f"train.out={out}", f"train.images={images}",
           *FIXED_MODEL, *overrides]  # fmt: skip
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, cwd=ROOT)
    metrics = json.loads((out / "metrics.json").read_text())
    return {"seconds_per_iteration": metrics["seconds_per_iteration"], "command": " ".join(cmd[1:])}


def _rank_peak(ctx, config: Path, overrides: list[str], images: int) -> float:
    """This rank's peak bytes in use above what it held before its training state was built (module
    docstring), over ``images`` images of the loop's passes and Adam steps; after a warm-up of one image on a
    state of its own, freed, so that what the first pass imports and caches for the whole process is not
    counted."""
    torch.set_num_threads(1)
    cfg = load_config(config, overrides)
    scene = scene_from_config(cfg.data)
    background = torch.tensor(cfg.render.background)
    truth = GroundTruth(photo_cache(cfg.data, scene), ctx.device, background)
    for camera in scene.train_cameras:
        truth.cache.warm(camera)
    _train(cfg, scene, truth, 1, ctx)
    gc.collect()
    peak = _train(cfg, scene, truth, images, ctx)
    truth.close()
    return peak


def _train(cfg, scene, truth: GroundTruth, images: int, ctx) -> float:
    live = LivePeak(LivePeak.in_use())
    state = initial_state(cfg, scene, None, ctx)
    d = cfg.dist
    balancer = TileBalancer(d.assignment, ctx.world_size, d.tolerance, d.link_gbps * 1e9 / 8, calibrate=d.calibrate)
    options = StepOptions(truth.background, get_backend("torch"), cfg.render.antialiased, cfg.train.lambda_dssim,
                          balancer)  # fmt: skip
    with live:
        while state.seen < images:
            cameras = [scene.train_cameras[i] for i in state.sampler.next_batch()]
            sh_degree = min(cfg.model.sh_degree, state.seen // cfg.train.sh_degree_every)
            train_pass(state.shard, Batch(cameras, truth.batch(cameras), sh_degree), options, ctx, state.densify)
            state.optimizer.step()
            state.seen += len(cameras)
    return float(live.peak)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", type=Path, required=True)
    ap.add_argument("--scene", type=Path, required=True)
    ap.add_argument("--config", type=Path, default=ROOT / "configs" / "demo.yaml")
    ap.add_argument("--images", type=int, default=150)
    ap.add_argument("--worlds", default="1,2,4")
    ap.add_argument("--devices", type=int, default=os.cpu_count())
    ap.add_argument("--memory-images", type=int, default=16, help="images each memory run trains (0: none)")
    ap.add_argument("--out", type=Path)
    args, overrides = ap.parse_known_args(argv)
    overrides = [f"data.path={args.scene}", *overrides]
    worlds = [int(w) for w in args.worlds.split(",")]
    profile = Profile.load(args.profile)
    cfg = load_config(args.config, [*overrides, *FIXED_MODEL])
    scene = scene_from_config(cfg.data)
    model = initial_gaussians(cfg.model, scene.points, scene.cameras, scene.extent, cfg.seed)
    sim = SimScene(args.scene.name, model, scene.train_cameras)
    predicted = plan(sim, cfg, worlds, profile, profile.links["gloo"], args.images, devices=args.devices)
    memory_plan = plan(sim, cfg, worlds, profile, profile.links["gloo"], max(args.memory_images, 1))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for w, p, pm in zip(worlds, predicted, memory_plan):
            m = measure(w, args.config, overrides, args.images, Path(tmp) / f"w{w}")
            rows.append({"world_size": w, "predicted": p["seconds_per_iteration"], **m, "prediction": p})
            ratio = p["seconds_per_iteration"] / m["seconds_per_iteration"]
            print(f"W={w}: predicted {p['seconds_per_iteration']:.4f} s, measured {m['seconds_per_iteration']:.4f} s "
                  f"({ratio - 1:+.0%})", file=sys.stderr)  # fmt: skip
            if args.memory_images:
                peaks = run_ranks(w, _rank_peak, args.config, [*overrides, *FIXED_MODEL], args.memory_images,
                                  timeout=3600.0)  # fmt: skip
                rows[-1]["memory"] = {"images": args.memory_images, "peak_bytes_by_rank": peaks,
                                      "predicted_peak_bytes": pm["peak_bytes_per_rank"]}  # fmt: skip
    print("| scene | W | Gaussians | predicted s / iteration | measured | predicted / measured - 1 |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        err = r["predicted"] / r["seconds_per_iteration"] - 1
        print(f"| {sim.name} | {r['world_size']} | {len(model):,} | {r['predicted']:.4f} | "
              f"{r['seconds_per_iteration']:.4f} | {err:+.1%} |")  # fmt: skip
    if args.memory_images:
        print("\n| scene | W | predicted peak MB (busiest rank) | measured | predicted / measured - 1 |")
        print("|---|---|---|---|---|")
        for r in rows:
            want, got = r["memory"]["predicted_peak_bytes"]["peak"], max(r["memory"]["peak_bytes_by_rank"])
            print(f"| {sim.name} | {r['world_size']} | {want / 1e6:.1f} | {got / 1e6:.1f} | {want / got - 1:+.1%} |")
    if args.out:
        setup = {"command": " ".join(sys.argv), **provenance(), "profile": str(args.profile), "devices": args.devices}
        args.out.write_text(json.dumps({**setup, "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
