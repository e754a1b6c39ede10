"""Where W ranks and one rank part ways: one training step from the same checkpoint on 1 rank and on W, compared
splat by splat, tile by tile, pixel by pixel and Gaussian by Gaussian.

    python bench/w_equivalence.py step RUN --data SCENE [--worlds 2] [--steps 4] [--initial] [--float64] [--ids I,J] [--json OUT]
    python bench/w_equivalence.py runs RUN_A RUN_B [--json OUT]

RUN is a run folder with a checkpoint (its newest is loaded, or give a checkpoint folder); each world size
loads it as ``grendel train --resume`` would (a one-rank checkpoint is split into kd shards for W ranks) and
renders the next ``--steps`` batches of the run's camera order, one step at a time, each from the
checkpoint's parameters (no optimizer step in between). For every step the report gives:

- the projected splats each rank received (by global id): whether W ranks projected them to the same bits;
- each rank's tile bins as lists of global ids: whether every tile composited the same splats in the same order;
- the rendered pixels: their largest difference;
- every Gaussian's gradient: largest difference relative to the field's largest gradient, and the Gaussians
  beyond ``--outlier`` of it, with the tiles they were composited in and, there, what sets them apart: the
  smallest margin of their alpha to the 1/255 cutoff and of the transmittance to the 1e-4 stop over the pixels.

Ranks run as gloo processes on the CPU, one thread each (as torchrun gives them).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.provenance import provenance
from grendel_py.config import load_config
from grendel_py.data.dataset import scene_from_config
from grendel_py.data.photo_cache import photo_cache
from grendel_py.model.gaussians import TRAINABLE, Gaussians
from grendel_py.parallel import step as step_module
from grendel_py.render.composite import ALPHA_MAX, T_MIN
from grendel_py.render.projection import ALPHA_MIN
from grendel_py.train.checkpoint import complete_checkpoints, find_checkpoint, run_dir_of
from grendel_py.train.images import GroundTruth
from grendel_py.train.state import initial_state
from partition.balancer import TileBalancer
from partition.tiles import TileGrid
from tests.dist_util import run_ranks
from tests.model_match import checkpoint_model, differences

SPLAT_FIELDS = ("means2d", "conics", "opacities", "colors", "depths")


def _rank_job(ctx, run: str, data: str, steps: int, initial: bool, dtype: torch.dtype) -> list[dict]:
    """On one rank of ``ctx``: the checkpoint of ``run`` loaded as a resume would (``initial``: the run's
    initial model instead), then ``steps`` single steps (forward and backward, no update) in ``dtype``, each
    with what this rank received, binned, rendered and the gradients."""
    torch.set_num_threads(1)
    manifest = None if initial else find_checkpoint(Path(run))
    cfg = load_config((Path(run) if initial else run_dir_of(manifest)) / "config.yaml", [f"data.path={data}"])
    scene = scene_from_config(cfg.data)
    state = initial_state(cfg, scene, manifest, ctx)
    model, sampler, seen = state.shard, state.sampler, state.seen
    shard = Gaussians(
        **{f: getattr(model, f).detach().to(dtype).requires_grad_(True) for f in TRAINABLE}, ids=model.ids
    )
    background = torch.tensor(cfg.render.background)
    photos = GroundTruth(photo_cache(cfg.data, scene), ctx.device, background)
    whole = (slice(None), slice(None))
    captured: list[dict] = []
    rasterize = step_module.rasterize_batch

    def capture(splats, parts, tiles, bg, backend):  # what the step composites, kept for the report
        colors, alpha, bins = rasterize(splats, parts, tiles, bg, backend)
        captured.append(
            {
                "ids": splats.ids.clone(),
                **{f: getattr(splats, f).detach().clone() for f in SPLAT_FIELDS},
                "tile_ids": bins.tile_ids.clone(),
                "offsets": bins.offsets.clone(),
                "splat_index": bins.splat_index.long().clone(),
            }
        )
        return colors, alpha, bins

    step_module.rasterize_batch = capture
    out = []
    try:
        for k in range(steps):
            slots = sampler.next_batch()
            cameras = [scene.train_cameras[i] for i in slots]
            sh_degree = min(cfg.model.sh_degree, (seen + k * len(cameras)) // cfg.train.sh_degree_every)
            balancer = TileBalancer(cfg.dist.assignment, ctx.world_size, cfg.dist.tolerance, calibrate=False)
            for p in (getattr(shard, f) for f in TRAINABLE):
                p.grad = None
            captured.clear()
            photo_batch = [p[whole].to(dtype) for p in photos.batch(cameras)]
            options = step_module.StepOptions(
                background.to(dtype),
                antialiased=cfg.render.antialiased,
                lambda_dssim=cfg.train.lambda_dssim,
                balancer=balancer,
            )
            loss, rendered = step_module.batch_loss(
                shard, step_module.Batch(cameras, photo_batch, sh_degree), options, ctx
            )
            loss.backward()
            (seen_splats,) = captured
            tiles = [TileGrid(c.width, c.height).n_tiles for c in cameras]
            out.append(
                {
                    "cameras": [c.name for c in cameras],
                    "loss": float(loss.detach()),
                    "ids": shard.ids.clone(),
                    "grads": {f: getattr(shard, f).grad.clone() for f in TRAINABLE},
                    "tiles": [t + b * n for b, (t, n) in enumerate(zip(rendered.tile_ids, tiles))],
                    "colors": [c.detach().clone() for c in rendered.tile_colors],
                    "splats": seen_splats,
                    "widths": [c.width for c in cameras],
                    "tiles_per_camera": tiles[0],
                }
            )
    finally:
        step_module.rasterize_batch = rasterize
        photos.close()
    return out


def _by_id(rows: list[torch.Tensor], values: list[torch.Tensor]) -> dict[int, torch.Tensor]:
    return {int(i): v for r, vals in zip(rows, values) for i, v in zip(r.tolist(), vals)}


def _tile_lists(s: dict) -> dict[int, list[int]]:
    """Batch tile id -> the global ids composited there, front to back."""
    starts = s["offsets"].tolist()
    ids = s["ids"][s["splat_index"]].tolist()
    return {int(t): ids[starts[k] : starts[k + 1]] for k, t in enumerate(s["tile_ids"].tolist())}


def _margins(s: dict, tile: int, gid: int, width: int, tiles_per_camera: int) -> dict:
    """For the splat ``gid`` in ``tile`` (a batch tile id) of one rank's capture ``s``: over the tile's pixels,
    the smallest |log(alpha * 255)| (0: alpha at the 1/255 cutoff) where it reaches, and the smallest
    |log(T / 1e-4)| after it (0: at the stop), in float64 from the float32 values composited."""
    lists = _tile_lists(s)
    order = lists[tile]
    row_of = {int(i): r for r, i in enumerate(s["ids"].tolist())}
    local = tile % tiles_per_camera
    nx = math.ceil(width / 16)
    x0, y0 = (local % nx) * 16, (local // nx) * 16
    ys, xs = torch.meshgrid(
        torch.arange(16, dtype=torch.float64) + y0 + 0.5,
        torch.arange(16, dtype=torch.float64) + x0 + 0.5,
        indexing="ij",
    )
    t = torch.ones(16, 16, dtype=torch.float64)
    alive = torch.ones(16, 16, dtype=torch.bool)
    best_alpha, best_t = math.inf, math.inf
    for g in order:
        r = row_of[g]
        m, c, o = s["means2d"][r].double(), s["conics"][r].double(), float(s["opacities"][r])
        dx, dy = m[0] - xs, m[1] - ys
        raw = o * torch.exp(-0.5 * (c[0] * dx * dx + c[2] * dy * dy) - c[1] * dx * dy)
        alpha = raw.clamp(max=ALPHA_MAX) * (raw >= ALPHA_MIN)
        after = t * (1 - alpha)
        if g == gid:
            reach = alive & (raw > 0)
            if reach.any():
                best_alpha = float((raw[reach] * 255).log().abs().min())
                best_t = float((after[reach] / T_MIN).log().abs().min())
            break
        alive &= after >= T_MIN
        t = torch.where(alive, after, t)
    return {"alpha_margin": best_alpha, "transmittance_margin": best_t}


def compare(one: list[dict], many: list[list[dict]], outlier: float, show: list[int]) -> list[dict]:
    """Step by step, the W-rank results ``many`` (one list per rank) against the one-rank ``one``."""
    report = []
    for k, ref in enumerate(one):
        ranks = [r[k] for r in many]
        row: dict = {"cameras": ref["cameras"], "loss_one": ref["loss"], "loss_sum": sum(r["loss"] for r in ranks)}
        # projected splats, by global id: the one rank's against every copy a rank received
        s1 = ref["splats"]
        ref_rows = {int(i): r for r, i in enumerate(s1["ids"].tolist())}
        diff = dict.fromkeys(SPLAT_FIELDS, 0.0)
        for r in ranks:
            s = r["splats"]
            idx = torch.tensor([ref_rows[int(i)] for i in s["ids"].tolist()], dtype=torch.long)
            for f in SPLAT_FIELDS:
                diff[f] = max(diff[f], float((s[f] - s1[f][idx]).abs().max()) if len(idx) else 0.0)
        row["splat_max_abs_difference"] = diff
        # bins: every tile's list of ids, front to back
        lists1 = _tile_lists(s1)
        listed = {}
        for r in ranks:
            listed.update(_tile_lists(r["splats"]))
        row["tiles"] = len(lists1)
        row["tiles_with_other_lists"] = sorted(t for t in lists1 if listed.get(t) != lists1[t])
        # pixels
        img1 = _by_id(ref["tiles"], ref["colors"])
        imgw = _by_id([t for r in ranks for t in r["tiles"]], [c for r in ranks for c in r["colors"]])
        row["pixel_max_abs_difference"] = max(float((imgw[t] - v).abs().max()) for t, v in img1.items())
        # gradients by global id
        ids_w = torch.cat([r["ids"] for r in ranks])
        where = torch.argsort(ids_w)
        order = torch.argsort(ref["ids"])
        gids = ref["ids"][order]
        worst, rel = {}, {}
        grads_w = {f: torch.cat([r["grads"][f] for r in ranks])[where] for f in TRAINABLE}
        for f in TRAINABLE:
            g1 = ref["grads"][f][order].double().reshape(len(gids), -1)
            rel[f] = (grads_w[f].double().reshape(len(gids), -1) - g1).abs().amax(dim=1) / g1.abs().max().clamp_min(
                1e-30
            )
            worst[f] = float(rel[f].max())
        row["grad_max_relative_difference"] = worst
        # the Gaussians beyond ``outlier`` and those named: their gradients on one rank and on W, and the tiles
        # they were composited in, with their margins to the alpha cutoff and the transmittance stop there
        beyond = {int(gids[i]) for f in TRAINABLE for i in torch.nonzero(rel[f] > outlier).flatten().tolist()}
        n_tiles = ref["tiles_per_camera"]
        row["gaussians"] = {}
        for gid in sorted(beyond | set(show)):
            i = int(torch.searchsorted(gids, gid))
            row["gaussians"][gid] = {
                "relative_difference": {f: float(rel[f][i]) for f in TRAINABLE},
                "gradients": {
                    f: {"one": ref["grads"][f][order[i]].flatten().tolist(), "w": grads_w[f][i].flatten().tolist()}
                    for f in TRAINABLE
                },
                "tiles": {
                    t: _margins(s1, t, gid, ref["widths"][t // n_tiles], n_tiles)
                    for t, ids in lists1.items()
                    if gid in ids
                },
            }
        report.append(row)
    return report


def runs(run_a: Path, run_b: Path) -> list[dict]:
    """Checkpoint by checkpoint (those both run folders hold at the same image count), the two runs' models
    compared through their global ids: per field the worst difference relative to max(1, the field's
    largest value), the Gaussian it concerns, and how many Gaussians are beyond 1e-3 and 1e-2."""
    a = {m.images_seen: m for m in complete_checkpoints(run_a)}
    b = {m.images_seen: m for m in complete_checkpoints(run_b)}
    rows = []
    for images in sorted(set(a) & set(b)):
        (ids_a, fields_a), (ids_b, fields_b) = (checkpoint_model(m) for m in (a[images], b[images]))
        row: dict = {"images": images, "gaussians": [len(ids_a), len(ids_b)]}
        if torch.equal(ids_a, ids_b):
            row["fields"] = {
                f: {
                    "worst": float(d.max()),
                    "worst_id": int(ids_a[d.argmax()]),
                    "beyond_1e-3": int((d > 1e-3).sum()),
                    "beyond_1e-2": int((d > 1e-2).sum()),
                }
                for f, d in differences(fields_a, fields_b).items()
            }
        rows.append(row)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="what", required=True)
    p = sub.add_parser("step", help="one step from the same state on 1 rank and on W")
    p.add_argument("run", type=Path)
    p.add_argument("--data", required=True)
    p.add_argument("--worlds", default="2")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--outlier", type=float, default=1e-4, help="relative gradient difference that names a Gaussian")
    p.add_argument("--initial", action="store_true", help="start from RUN's initial model, not a checkpoint")
    p.add_argument("--float64", action="store_true", help="the steps in float64 (the model converted)")
    p.add_argument("--ids", default="", help="global ids whose gradients to show, comma separated")
    p = sub.add_parser("runs", help="two run folders' checkpoints compared, Gaussian by Gaussian")
    p.add_argument("run_a", type=Path)
    p.add_argument("run_b", type=Path)
    for p in sub.choices.values():
        p.add_argument("--json", type=Path)
    args = ap.parse_args()
    if args.what == "runs":
        result = {"runs": [str(args.run_a), str(args.run_b)], "checkpoints": runs(args.run_a, args.run_b)}
    else:
        result = step(args)
    result = {"command": " ".join(sys.argv), **provenance(), **result}
    text = json.dumps(result, indent=1)
    if args.json:
        args.json.write_text(text + "\n")
    print(text)
    return 0


def step(args: argparse.Namespace) -> dict:
    """The ``step`` subcommand's report."""
    job = (
        _rank_job,
        str(args.run),
        args.data,
        args.steps,
        args.initial,
        torch.float64 if args.float64 else torch.float32,
    )
    show = [int(i) for i in args.ids.split(",") if i]
    one = run_ranks(1, *job, timeout=1800)[0]
    start = "initial model" if args.initial else str(find_checkpoint(args.run).folder)
    result = {"run": str(args.run), "start": start, "dtype": "float64" if args.float64 else "float32", "worlds": {}}
    for w in (int(x) for x in args.worlds.split(",")):
        result["worlds"][w] = compare(one, run_ranks(w, *job, timeout=1800), args.outlier, show)
    return result


if __name__ == "__main__":
    raise SystemExit(main())
