"""``grendel plan`` on paper (issue 38, item 5): the synthetic city scaled to a billion Gaussians on W = 64, 128
and 256 H200s (NVLink 4 within 8-GPU nodes, 400 Gb/s InfiniBand across), and the tile assignments compared in
predicted time at W = 64 and 256, on that model and on the simulator's city.

    python bench/plan_1b.py [--profile bench/results/plan/profile_cpu_1thread_<commit>.json] [--gaussians 1e9] [--out-dir bench/results/plan]

Assumptions, all written into the results:

- The scene: blocks like ``grendel simulate``'s city (:func:`grendel_py.simulate.city_scene`: 300k flat
  Gaussians over the ground and the buildings, its 336 aerial cameras at 960 x 720), side by side, each seen
  only by its own cameras (:class:`grendel_py.plan.blocks.BlockScene`): a billion Gaussians are 3,334 blocks.
  Simulated with W blocks (one a rank under kd ownership; a rank of the real model holds 3,334 / W blocks that
  the batch's cameras see as often): every count of the batch is the simulator's, and the Gaussians per rank
  (its Adam and its visibility tests) are scaled to the billion (the planner's ``grow="area"``).
- The run: batch W (one image a GPU, as Grendel trains), SH degree 3 (batches from image 10,000 of the run
  on), 3 batches.
- The device: no H200 profile is measured yet (issue 37 is blocked on a GPU). Two GPU speeds are assumed, each
  this machine's CPU profile with every stage sped up by one factor, chosen so that the profile's step of
  ``bench/gpu_check.py``'s scene (1M Gaussians, 1080p, batch 1) takes ``reference`` seconds: 0.093 (measured
  on the H200 at 33934ee, bench/results/gpu_check/run4_step.json) and 0.010 (issue 37's target). The stage
  shares are then the CPU's, which they are not on a GPU: the comparisons between assignments at one speed
  carry more weight than the absolute seconds. Memory: the state per Gaussian (:func:`state_bytes`) and a
  transient of 237 bytes per visible splat (the kernel path's count at batch 4,
  bench/results/bytes_per_gaussian_1M_b4_kernels_e5da5ab_cpu.json), in the H200's 150.1 GB (run1's facts).
- The links (:data:`grendel_py.plan.links.LINKS`, datasheet figures): NVLink 4 between the 8 GPUs of a node,
  NDR InfiniBand (one 400 Gb/s port a GPU) across; a collective takes the slower link's latency and the longer
  of its bytes within and across nodes over each link; all of the tile table's and the halo's bytes are
  counted across (an upper bound).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.gpu_check import _views  # noqa: E402
from bench.provenance import provenance  # noqa: E402
from bench.render_speed import bench_scene  # noqa: E402
from grendel_py.config import load_config  # noqa: E402
from grendel_py.plan.blocks import BlockScene  # noqa: E402
from grendel_py.plan.counts import rank_counts  # noqa: E402
from grendel_py.plan.links import LINKS, Fabric  # noqa: E402
from grendel_py.plan.model import predict  # noqa: E402
from grendel_py.plan.planner import plan  # noqa: E402
from grendel_py.plan.profile import Profile, StageCost  # noqa: E402
from grendel_py.simulate import SimScene, batch_table, city_scene  # noqa: E402
from partition.balancer import TileBalancer  # noqa: E402

REFERENCES = {"measured (H200, 33934ee)": 0.093, "target (issue 37)": 0.010}
H200_BYTES = 150_109_880_320
TRANSIENT_PER_VISIBLE = 237.0
FABRIC = Fabric(LINKS["nvlink4"], LINKS["ndr"], 8)
START = 10_000  # images into the run: SH degree 3
# (label, ownership, batch sampling, assignment, tolerance)
STRATEGIES = [
    ("Grendel: array order, row bands", "array-order", "random", "rows", None),
    ("kd, balanced", "kd", "random", "balanced", None),
    ("kd, locality (tol 0)", "kd", "random", "locality", 0.0),
    ("kd, locality (auto)", "kd", "random", "locality", None),
    ("kd, owner-aware batches, locality (auto)", "kd", "owner-aware", "locality", None),
    ("kd, majority", "kd", "random", "majority", None),
]


def assumed_gpu(cpu: Profile, reference_seconds: float, label: str) -> Profile:
    """``cpu`` with every stage sped up by the factor that makes gpu_check's step take ``reference_seconds``
    (module docstring), the kernel path's transient bytes and the H200's memory."""
    model, _ = bench_scene(1_000_000, 1920, 1080, "cpu")
    scene = SimScene("gpu_check step", model, _views(1, 1920, 1080))
    owner = model.means.new_zeros(len(model), dtype=int).numpy()
    step = TileBalancer("locality", 1, calibrate=False).plan(batch_table(scene, [0], owner, 1))
    counts = rank_counts(scene, [0], owner, step, 3)
    factor = predict(counts, cpu, None).seconds / reference_seconds
    stages = {k: StageCost(c.fixed / factor, {d: v / factor for d, v in c.per.items()}) for k, c in cpu.stages.items()}
    transient = StageCost(0.0, {"visible": TRANSIENT_PER_VISIBLE})
    device = f"H200 (assumed: {label}; this CPU's profile / {factor:.0f})"
    return dataclasses.replace(cpu, device=device, stages=stages, transient=transient, memory_bytes=H200_BYTES)


def _config(world: int, ownership: str, sampling: str, assignment: str, tolerance: float | None):
    overrides = [f"train.batch_size={world}", f"dist.ownership={ownership}", f"dist.batch_sampling={sampling}",
                 f"dist.assignment={assignment}", "model.sh_degree=3"]  # fmt: skip
    if tolerance is not None:
        overrides.append(f"dist.tolerance={tolerance}")
    return load_config(ROOT / "configs" / "demo.yaml", overrides)


def _row(label: str, r: dict) -> dict:
    comm = sum(s["comm"] for s in r["segments"])
    return {"strategy": label, **{k: r[k] for k in ("world_size", "gaussians", "seconds_per_iteration", "balance",
            "link_bytes_per_iteration", "fits")}, "communication_seconds": comm,
            "peak_bytes_per_rank": r["peak_bytes_per_rank"]["peak"], "segments": r["segments"]}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", type=Path, required=True, help="this machine's CPU profile (bench/calibrate.py)")
    ap.add_argument("--gaussians", type=float, default=1e9)
    ap.add_argument("--worlds", default="64,128,256")
    ap.add_argument("--batches", type=int, default=3, help="batches of an epoch planned")
    ap.add_argument("--out-dir", type=Path, default=ROOT / "bench" / "results" / "plan")
    args = ap.parse_args(argv)
    worlds = [int(w) for w in args.worlds.split(",")]
    cpu = Profile.load(args.profile)
    gpus = {label: assumed_gpu(cpu, s, label) for label, s in REFERENCES.items()}
    city = city_scene(300_000, 6, 0)
    out = {"command": " ".join(sys.argv), **provenance(), "profile": str(args.profile), "fabric": str(FABRIC),
           "assumptions": __doc__, "gpus": {k: p.device for k, p in gpus.items()}, "billion": [], "city": []}  # fmt: skip
    path = args.out_dir / f"plan_1b_{out['commit'][:7]}.json"
    first, *others = gpus.items()
    for name, kind in (("billion", "blocks"), ("city", "one city")):
        for w in worlds if kind == "blocks" else [64, 256]:
            scene = BlockScene(city, w) if kind == "blocks" else city
            gaussians = int(args.gaussians) if kind == "blocks" else None
            for strategy in STRATEGIES:
                cfg = _config(w, *strategy[1:])
                row = plan(scene, cfg, [w], first[1], FABRIC, args.batches * w, gaussians, grow="area", start=START)[0]
                rows = [(first[0], row)]
                for label, gpu in others:  # the same counts, another speed
                    p = predict(row["counts"], gpu, FABRIC)
                    rows.append((label, {**row, "seconds_per_iteration": p.seconds, "segments": p.segments}))
                for label, r in rows:
                    out[name].append({"gpu": label, **_row(strategy[0], r)})
                    print(f"{name} {label} W={w} {strategy[0]}: {r['seconds_per_iteration']:.4f} s, "
                          f"{r['link_bytes_per_iteration'] / 1e6:.0f} MB, balance {r['balance']:.3f}",
                          file=sys.stderr, flush=True)  # fmt: skip
                path.write_text(json.dumps(out, indent=1) + "\n")  # after each plan: a long run keeps what it did
    print(json.dumps({"wrote": str(path)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
