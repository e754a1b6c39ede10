"""``grendel simulate``: its byte count is what the real exchange sends; the sweep, the JSON and the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from grendel_py.parallel.step import Batch, StepOptions, render_batch
from grendel_py.pictures import rank_colours
from grendel_py.simulate import SimScene, batch_table, city_scene, exchange_bytes, run_config, sweep
from partition.balancer import SPLAT_BYTES, TileBalancer
from partition.spatial import assign_owners

REQUIRED = {"ownership", "assignment", "world_size", "batch_size", "scene", "bytes_per_iter", "balance", "model_time"}


@pytest.fixture(scope="module")
def tiny_city() -> SimScene:
    return city_scene(n_gaussians=6000, scale=1, seed=0)


def _real_bytes(ctx, model, cameras, strategy):
    owner = assign_owners(model.means, ctx.world_size, "kd")
    shard = model.select(owner == ctx.rank)
    with torch.no_grad():
        options = StepOptions(torch.zeros(3), balancer=TileBalancer(strategy, ctx.world_size, calibrate=False))
        out = render_batch(shard, Batch(cameras, None, 0), options, ctx)
    return out.bytes_sent


@pytest.mark.parametrize("strategy", ["rows", "locality"])
def test_simulated_bytes_are_what_the_exchange_sends(tiny_city: SimScene, strategy: str) -> None:
    from tests.dist_util import run_ranks

    batch = [0, 150, 200]  # a nadir view and two oblique ones
    cameras = [tiny_city.cameras[k] for k in batch]
    world = 3
    real = run_ranks(world, _real_bytes, tiny_city.model, cameras, strategy)
    owner = assign_owners(tiny_city.model.means, world, "kd").numpy()
    plan = TileBalancer(strategy, world, calibrate=False).plan(batch_table(tiny_city, batch, owner, world))
    sent, received = exchange_bytes(tiny_city, batch, owner, plan)
    assert sum(real) > 0
    assert sent.tolist() == [float(b) for b in real]
    assert received.sum() == sent.sum()


def test_simulated_bytes_past_64_ranks(tiny_city: SimScene) -> None:
    """More ranks than bits in a word: every splat goes once to each other rank that renders a tile of it."""
    batch, world = [0, 150], 96
    owner = assign_owners(tiny_city.model.means, world, "kd").numpy()
    plan = TileBalancer("rows", world, calibrate=False).plan(batch_table(tiny_city, batch, owner, world))
    sent, received = exchange_bytes(tiny_city, batch, owner, plan)
    want_sent, want_received, offset = np.zeros(world), np.zeros(world), 0
    for slot, k in enumerate(batch):
        rows, tiles = tiny_city.intersections(k)
        for g, r in {(int(g), int(plan.rank[offset + t])) for g, t in zip(rows, tiles)}:
            if r != owner[g]:
                want_sent[owner[g]] += SPLAT_BYTES
                want_received[r] += SPLAT_BYTES
        offset += plan.grids[slot].n_tiles
    assert received[64:].sum() > 0 and sent.tolist() == want_sent.tolist()  # ranks past a 64-bit mask
    assert received.tolist() == want_received.tolist()


def test_locality_beats_row_bands_on_the_city(tiny_city: SimScene) -> None:
    kw = dict(world_size=4, batch_size=4, iterations=3, intersection_seconds=1e-9, link_bytes_per_s=12.5e9)
    grendel = run_config(tiny_city, "array-order", "random", "rows", None, **kw)
    ours = run_config(tiny_city, "kd", "random", "locality", 0.0, **kw)
    assert ours.balance <= 1.05 < grendel.balance
    assert ours.bytes_per_iter < 0.6 * grendel.bytes_per_iter
    assert ours.model_time < grendel.model_time


def test_sweep_rows_cover_every_combination(tiny_city: SimScene) -> None:
    rows = sweep([tiny_city], [2], [1, 4], [0.0, None], 8, 1e-9, 12.5e9)
    kinds = {(r.ownership, r.sampler, r.assignment, r.tolerance, r.batch_size) for r in rows}
    assert len(kinds) == len(rows) == 2 * (4 + 2 * 5)  # array-order: 4 plans; kd: 2 samplers x 5 plans
    assert {r.assignment for r in rows} == {"rows", "balanced", "locality", "majority"}
    assert all(r.balance >= 1.0 and r.bytes_per_iter >= 0 and r.model_time > 0 for r in rows)


def test_cli_json_and_errors(tmp_path: Path) -> None:
    cmd = [
        sys.executable,
        "-m",
        "grendel_py",
        "simulate",
        "--scenes",
        "city,fox",
        "--fox",
        str(tmp_path / "nope"),
        "--worlds",
        "2",
        "--batch-factors",
        "1",
        "--images",
        "2",
        "--city-gaussians",
        "2000",
        "--city-scale",
        "1",
        "--tolerances",
        "auto",
        "--json",
        "--pictures",
        str(tmp_path / "pictures"),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "skipping fox" in done.stderr
    rows = json.loads(done.stdout)["rows"]
    assert rows and all(set(r) >= REQUIRED and r["scene"] == "city" for r in rows)
    # One tile picture per configuration, tiles in both ranks' colours.
    pictures = sorted(p.name for p in (tmp_path / "pictures").iterdir())
    assert len(pictures) == len(rows) and "city_w2_b2_kd_owner-aware_locality-tol-auto.png" in pictures
    image = np.asarray(Image.open(tmp_path / "pictures" / "city_w2_b2_array-order_random_rows.png").convert("RGB"))
    for colour in rank_colours(2):
        assert np.all(image == colour, axis=-1).any()  # the bars, drawn in the ranks' colours
    bad = subprocess.run(cmd[:8] + ["--worlds", "0,2"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "must be >= 1" in bad.stderr


def test_fox_when_present(fox: Path) -> None:
    from grendel_py.simulate import captured_scene

    scene = captured_scene(fox, None, downscale=8)
    row = run_config(scene, "kd", "random", "locality", 0.0, 2, 2, 1, 1e-9, 12.5e9)
    assert row.balance <= 1.05 and np.isfinite(row.bytes_per_iter)
