"""``grendel plan``'s predictions against measured runs on this machine (issue 38, item 4): seconds per
iteration of W = 1, 2, 4 gloo ranks (torchrun, one thread each, as torchrun gives them) on a scene, predicted
from a profile calibrated here with one thread (``bench/calibrate.py --threads 1 --link-world 2``), the ranks
sharing this machine's cores (``--devices``: the cores) and joined by the measured gloo link.

    python bench/plan_validation.py --profile P.json --scene SCENE [--config configs/demo.yaml] [--images 150] [--worlds 1,2,4] [--devices 2] [key.sub=value ...] [--out FILE.json]

Each run trains ``--images`` images from the model training starts from, with densification off and learning
rates of 1e-12 (so the model the planner sees is the one trained throughout: training moves opacities, and a
splat's extent, hence its intersections, follows its opacity; the step's work is the same at any rate) and no
evaluation or checkpoints; the measured figure is metrics.json's
seconds per iteration over the whole run (the loop's own work included: photos, logging, statistics). Prints a
markdown table, writes the JSON (``--out``) with the commands.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.provenance import provenance  # noqa: E402
from grendel_py.config import load_config  # noqa: E402
from grendel_py.data.dataset import scene_from_config  # noqa: E402
from grendel_py.model.initialize import initial_gaussians  # noqa: E402
from grendel_py.plan.planner import plan  # noqa: E402
from grendel_py.plan.profile import Profile  # noqa: E402
from grendel_py.simulate import SimScene  # noqa: E402

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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", type=Path, required=True)
    ap.add_argument("--scene", type=Path, required=True)
    ap.add_argument("--config", type=Path, default=ROOT / "configs" / "demo.yaml")
    ap.add_argument("--images", type=int, default=150)
    ap.add_argument("--worlds", default="1,2,4")
    ap.add_argument("--devices", type=int, default=os.cpu_count())
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
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for w, p in zip(worlds, predicted):
            m = measure(w, args.config, overrides, args.images, Path(tmp) / f"w{w}")
            rows.append({"world_size": w, "predicted": p["seconds_per_iteration"], **m, "prediction": p})
            ratio = p["seconds_per_iteration"] / m["seconds_per_iteration"]
            print(f"W={w}: predicted {p['seconds_per_iteration']:.4f} s, measured {m['seconds_per_iteration']:.4f} s "
                  f"({ratio - 1:+.0%})", file=sys.stderr)  # fmt: skip
    print("| scene | W | Gaussians | predicted s / iteration | measured | predicted / measured - 1 |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        err = r["predicted"] / r["seconds_per_iteration"] - 1
        print(f"| {sim.name} | {r['world_size']} | {len(model):,} | {r['predicted']:.4f} | "
              f"{r['seconds_per_iteration']:.4f} | {err:+.1%} |")  # fmt: skip
    if args.out:
        setup = {"command": " ".join(sys.argv), **provenance(), "profile": str(args.profile), "devices": args.devices}
        args.out.write_text(json.dumps({**setup, "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
