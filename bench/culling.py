"""What exact tile culling saves: intersections per camera and splat-exchange bytes per iteration, with the
culling (``tile_pairs``) and with every tile of the splats' boxes (``cull=False``, the binning before it).

    python bench/culling.py --out bench/results/culling [--scenes city,fox] [--fox-model out/fox/run/model.ply]

Writes OUT.json (every number) and OUT.md (tables). Intersections are counted exactly; bytes are those of
``grendel simulate`` (equal, by its tests, to what ``exchange_splats`` sends), for kd ownership, random
batches and the locality assignment at its automatic tolerance, the training default. Each mode feeds its
own tile table to the balancer, as training would, so the assignments may differ a little between the modes.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from grendel_py import simulate as sim
from grendel_py.fileio import atomic_open

INTERSECTION_SECONDS = 1e-9  # the simulator's defaults (bench/results/simulate.md)
LINK_BYTES_PER_S = 100e9 / 8


def intersections(scenes: dict[bool, sim.SimScene], cameras: list[int]) -> dict:
    """Intersections per camera with and without culling."""
    box = np.array([scenes[False].intersections(k)[0].size for k in tqdm(cameras, desc="box", disable=None)])
    cull = np.array([scenes[True].intersections(k)[0].size for k in tqdm(cameras, desc="culled", disable=None)])
    ratio = cull / np.maximum(box, 1)
    return {
        "cameras": len(cameras),
        "box_mean": float(box.mean()),
        "culled_mean": float(cull.mean()),
        "culled_over_box": float(cull.sum() / max(box.sum(), 1)),
        "culled_over_box_min": float(ratio.min()),
        "culled_over_box_max": float(ratio.max()),
    }


def exchange(scenes: dict[bool, sim.SimScene], worlds: list[int], batch: int, images: int, seed: int) -> list[dict]:
    """Bytes per iteration and balance, with and without culling, for each world size."""
    out = []
    for w in worlds:
        row = {"world_size": w, "batch_size": batch, "iterations": max(1, images // batch)}
        for cull, scene in scenes.items():
            r = sim.run_config(
                scene,
                "kd",
                "random",
                "locality",
                None,
                w,
                batch,
                row["iterations"],
                INTERSECTION_SECONDS,
                LINK_BYTES_PER_S,
                seed,
            )
            key = "culled" if cull else "box"
            row[f"{key}_bytes_per_iter"] = r.bytes_per_iter
            row[f"{key}_balance"] = r.balance
        row["culled_over_box"] = row["culled_bytes_per_iter"] / max(row["box_bytes_per_iter"], 1.0)
        out.append(row)
    return out


def markdown(results: dict) -> str:
    lines = ["# Exact tile culling: intersections and exchanged bytes", "", f"Command: `{results['command']}`", ""]
    for name, r in results["scenes"].items():
        i = r["intersections"]
        lines += [
            f"## {name}",
            "",
            r["description"],
            "",
            "| intersections per camera | box | culled | culled / box (all) | per camera min .. max |",
            "|---|---|---|---|---|",
            f"| mean over {i['cameras']} cameras | {i['box_mean']:,.0f} | {i['culled_mean']:,.0f} | "
            f"{i['culled_over_box']:.3f} | {i['culled_over_box_min']:.3f} .. {i['culled_over_box_max']:.3f} |",
            "",
            "| W | batch | iterations | box MB/iter | culled MB/iter | culled / box | balance box | balance culled |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for e in r["exchange"]:
            lines.append(
                f"| {e['world_size']} | {e['batch_size']} | {e['iterations']} | {e['box_bytes_per_iter'] / 1e6:.2f} | "
                f"{e['culled_bytes_per_iter'] / 1e6:.2f} | {e['culled_over_box']:.3f} | {e['box_balance']:.3f} | "
                f"{e['culled_balance']:.3f} |"
            )
        lines.append("")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="writes OUT.json and OUT.md")
    p.add_argument("--scenes", default="city,fox")
    p.add_argument("--fox", type=Path, default=Path("../shared/data/fox"))
    p.add_argument("--fox-model", type=Path, default=None, help="trained model.ply (default: the random initial model)")
    p.add_argument("--fox-downscale", type=float, default=4)
    p.add_argument("--city-gaussians", type=int, default=300_000)
    p.add_argument("--city-scale", type=int, default=6)
    p.add_argument("--cameras", type=int, default=48, help="cameras counted, evenly spaced over the scene's")
    p.add_argument("--worlds", default="4,8,16")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--images", type=int, default=64, help="images per exchange configuration")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    results = {"command": "python bench/culling.py " + " ".join(sys.argv[1:]), "scenes": {}}
    for name in args.scenes.split(","):
        if name == "city":
            scene = sim.city_scene(args.city_gaussians, args.city_scale, args.seed)
            cam = scene.cameras[0]
            description = f"Synthetic city, {args.city_gaussians:,} flat Gaussians, {len(scene.cameras)} cameras at {cam.width}x{cam.height}."
        elif name == "fox":
            if args.fox_model is not None and not args.fox_model.is_file():
                print(f"culling: {args.fox_model}: model PLY not found", file=sys.stderr)
                return 2
            if not args.fox.exists():
                print(f"culling: skipping fox: {args.fox} not found", file=sys.stderr)
                continue
            scene = sim.captured_scene(args.fox, args.fox_model, args.fox_downscale, args.seed)
            cam = scene.cameras[0]
            model = str(args.fox_model) if args.fox_model else "the random initial model"
            description = f"{args.fox} training views at downscale {args.fox_downscale:g} ({cam.width}x{cam.height}), {len(scene.model.means):,} Gaussians from {model}."
        else:
            print(f"culling: unknown scene {name!r}; choose from city, fox", file=sys.stderr)
            return 2
        scenes = {cull: sim.SimScene(scene.name, scene.model, scene.cameras, cull) for cull in (False, True)}
        n = len(scene.cameras)
        cameras = sorted({round(i * (n - 1) / max(args.cameras - 1, 1)) for i in range(min(args.cameras, n))})
        results["scenes"][name] = {
            "description": description,
            "intersections": intersections(scenes, cameras),
            "exchange": exchange(scenes, [int(w) for w in args.worlds.split(",")], args.batch, args.images, args.seed),
        }
    with atomic_open(args.out.with_suffix(".json"), "w") as f:
        f.write(json.dumps(results, indent=1) + "\n")
    with atomic_open(args.out.with_suffix(".md"), "w") as f:
        f.write(markdown(results))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
