"""Host memory and data waiting of training ranks as the number of photos grows (issue 17, item 3).

    python bench/image_pipeline.py --out bench/results/image_pipeline [--views 200,2000] [--ranks 2] [--images N]

For each view count, a scene of that many 1920x1080 views is written (a transforms.json; the poses go round
the synthetic city's centre on rings at three heights; each photo is one of ``--distinct`` pictures of the
city rendered by ``grendel synth --preset city`` and enlarged to 1920x1080, saved as its own JPEG file, so
every view is decoded and cached on its own). The photos do not match the poses: the measure is memory and
waiting, not quality. Then ``--ranks`` gloo ranks train on it with torchrun on ``--images`` photos (default:
one pass over the views; batch ``--batch``, a small random model, no densification), twice: a cold photo cache, then a warm
one. Reported per run: every rank's peak resident memory, its seconds per iteration spent waiting for
photos and its share of the step, from the run's metrics.json. Writes OUT.json and OUT.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from grendel_py.fileio import atomic_open

WIDTH, HEIGHT = 1920, 1080


def city_pictures(work: Path, count: int) -> list[Image.Image]:
    """``count`` photos of the synthetic city, enlarged to 1920x1080."""
    scene = work / "city"
    if not (scene / "images").is_dir():
        subprocess.run(
            [sys.executable, "-m", "grendel_py", "synth", str(scene), "--preset", "city", "--seed", "0"], check=True
        )
    files = sorted((scene / "images").iterdir())
    picks = [files[round(i * (len(files) - 1) / max(count - 1, 1))] for i in range(count)]
    return [Image.open(f).convert("RGB").resize((WIDTH, HEIGHT), Image.Resampling.BICUBIC) for f in picks]


def write_scene(folder: Path, views: int, pictures: list[Image.Image]) -> None:
    """A transforms.json scene of ``views`` views on three rings around the origin, one JPEG each."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    f = 0.5 * WIDTH / math.tan(math.radians(60.0) / 2)
    frames = []
    for i in range(views):
        angle, ring = 2 * math.pi * (i * 0.618034 % 1.0), i % 3
        eye = np.array([6.0 * math.cos(angle), 6.0 * math.sin(angle), 2.0 + 1.5 * ring])
        forward = -eye / np.linalg.norm(eye)  # looking at the origin
        right = np.cross(forward, [0.0, 0.0, 1.0])
        right /= np.linalg.norm(right)
        up = np.cross(right, forward)
        c2w = np.eye(4)
        c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = right, up, -forward, eye  # OpenGL camera axes
        name = f"images/v{i:05d}.jpg"
        pictures[i % len(pictures)].save(folder / name, quality=90)
        frames.append({"file_path": name, "transform_matrix": c2w.tolist()})
    meta = {"fl_x": f, "fl_y": f, "cx": WIDTH / 2, "cy": HEIGHT / 2, "w": WIDTH, "h": HEIGHT, "frames": frames}
    with atomic_open(folder / "transforms.json", "w") as out:
        json.dump(meta, out)


def train(scene: Path, run: Path, cache: Path, ranks: int, images: int, batch: int) -> dict:
    """One training run; its metrics.json."""
    shutil.rmtree(run, ignore_errors=True)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={ranks}",
        "-m",
        "grendel_py",
        "train",
        f"data.path={scene}",
        f"data.cache_dir={cache}",
        "data.test_every=0",
        f"train.out={run}",
        f"train.images={images}",
        f"train.batch_size={batch}",
        "train.eval_every=0",
        "train.checkpoint_every=0",
        "model.init=random",
        "model.random_points=20000",
        "model.sh_degree=0",
        f"densify.start_images={images + 1}",
        "train.device=cpu",
        "render.backend=torch",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    return json.loads((run / "metrics.json").read_text())


def run_record(views: int, cache: str, images: int, m: dict) -> dict:
    """One run's line of the report, from its metrics.json."""
    return {
        "views": views,
        "cache": cache,
        "images": images,
        "iterations": m["iterations"],
        "seconds_per_iteration": m["seconds_per_iteration"],
        "peak_rss_bytes": m["peak_rss_bytes"],
        "data_seconds_per_iteration": m["data_seconds_per_iteration"],
    }


def write_report(results: dict, out: Path) -> None:
    """OUT.json (the raw numbers) and OUT.md (a table)."""
    lines = [
        "# Photo pipeline: memory and waiting versus the number of views",
        "",
        f"Command: `{results['command']}`",
        "",
        "| views | cache | images | s/iteration | peak RSS per rank (GB) | waiting for photos, s/iteration per rank | share of the step |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results["runs"]:
        rss = ", ".join(f"{b / 1e9:.2f}" for b in r["peak_rss_bytes"])
        wait = ", ".join(f"{s:.3f}" for s in r["data_seconds_per_iteration"])
        share = ", ".join(f"{s / r['seconds_per_iteration']:.2%}" for s in r["data_seconds_per_iteration"])
        lines.append(
            f"| {r['views']} | {r['cache']} | {r['images']} | {r['seconds_per_iteration']:.2f} | {rss} | {wait} | {share} |"
        )
    with atomic_open(out.with_suffix(".json"), "w") as f:
        f.write(json.dumps(results, indent=1) + "\n")
    with atomic_open(out.with_suffix(".md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="writes OUT.json and OUT.md")
    p.add_argument("--work", type=Path, default=Path("out/bench_image_pipeline"), help="scenes, photo cache and runs")
    p.add_argument("--views", default="200,2000")
    p.add_argument("--distinct", type=int, default=50, help="distinct city pictures among the views")
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument(
        "--images",
        type=int,
        default=0,
        help="photos per run, the same for every view count (0: one pass over the views)",
    )
    args = p.parse_args()
    pictures = city_pictures(args.work, args.distinct)
    results = {"command": "python bench/image_pipeline.py " + " ".join(sys.argv[1:]), "runs": []}
    for views in (int(v) for v in args.views.split(",")):
        scene, cache = args.work / f"scene_{views}", args.work / f"cache_{views}"
        if not (scene / "transforms.json").is_file():
            write_scene(scene, views, pictures)
        shutil.rmtree(cache, ignore_errors=True)
        images = max(args.batch, round((args.images or views) / args.batch) * args.batch)
        for state in ("cold", "warm"):
            m = train(scene, args.work / f"run_{views}_{state}", cache, args.ranks, images, args.batch)
            results["runs"].append(run_record(views, state, images, m))
            write_report(results, args.out)  # after every run, so an interrupted bench keeps what it measured
    return 0


if __name__ == "__main__":
    sys.exit(main())
