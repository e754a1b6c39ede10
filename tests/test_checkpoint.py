"""Sharded checkpoints: resuming continues the run exactly on the same world size, and re-partitions with
the Adam state on another; broken checkpoints are reported by file."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from grendel_py.cli import main
from grendel_py.config import load_config
from grendel_py.data.dataset import scene_from_config
from grendel_py.errors import InputError
from grendel_py.model.gaussians import TRAINABLE
from grendel_py.parallel.runtime import single_process
from grendel_py.train.checkpoint import checkpoint_dir, complete_checkpoints, find_checkpoint, load_shards
from grendel_py.train.loop import train
from grendel_py.train.state import initial_state
from tests.dist_util import run_ranks
from tests.shards import rows_by_id


@pytest.fixture(scope="module")
def scene(object_scene_seed2: Path) -> Path:
    return object_scene_seed2


def _cfg(scene: str, out: str, extra: tuple[str, ...] = ()):
    return load_config(
        None,
        [
            *extra,
            f"data.path={scene}",
            "data.downscale=4",
            f"train.out={out}",
            "train.images=40",
            "train.batch_size=2",
            "train.eval_every=0",
            "train.eval_renders=1",
            "train.log_every=2",
            "train.sh_degree_every=20",
            "train.checkpoint_every=20",
            "train.keep_checkpoints=2",
            "model.sh_degree=1",
            "densify.start_images=5",
            "densify.stop_images=35",
            "densify.every_images=10",
            "densify.reset_opacity_every=30",
            "dist.rebalance_threshold=1.0",
            "dist.calibrate=false",
        ],
    )


def _train_job(ctx, scene: str, out: str, resume: str | None = None) -> int:
    cfg = _cfg(scene, out)
    return train(cfg, ctx, find_checkpoint(Path(resume)) if resume else None)["num_gaussians"]


def _run(world: int, *args) -> int:
    if world == 1:
        return _train_job(single_process(), *args)
    counts = run_ranks(world, _train_job, *args)
    assert len(set(counts)) == 1
    return counts[0]


def _losses(run: Path) -> dict[int, float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tb"))
    acc.Reload()
    return {e.step: e.value for e in acc.Scalars("train/loss")}


def _resume_copy(run: Path, copy: Path, images: int) -> Path:
    shutil.copytree(run, copy)
    return checkpoint_dir(copy, images)


@pytest.mark.parametrize("world", [1, 2])
def test_resume_on_the_same_world_size_continues_exactly(scene: Path, tmp_path: Path, world: int) -> None:
    a = tmp_path / "a"
    n = _run(world, str(scene), str(a))
    assert [m.images_seen for m in complete_checkpoints(a)] == [20, 40]
    start = _resume_copy(a, tmp_path / "b", 20)
    assert _run(world, str(scene), str(tmp_path / "b"), str(start)) == n
    assert (a / "model.ply").read_bytes() == (tmp_path / "b" / "model.ply").read_bytes()
    before, after = _losses(a), _losses(tmp_path / "b")
    assert sorted(before) == sorted(after) == list(range(2, 41, 2))
    assert [after[s] for s in range(22, 41, 2)] == [before[s] for s in range(22, 41, 2)]


def test_an_mcmc_run_with_exposures_resumes_exactly(scene: Path, tmp_path: Path) -> None:
    """densify.strategy=mcmc (its relocations, growth and noise draws), per-photo exposures (saved once per
    checkpoint), random backgrounds and antialiasing: resuming at 20 images gives the uninterrupted run."""
    extra = (
        "densify.strategy=mcmc",
        "densify.min_opacity=0.09",
        "optim.exposure_lr=0.01",
        "render.random_background=true",
        "render.antialiased=true",
    )
    a, b = tmp_path / "a", tmp_path / "b"
    n = train(_cfg(str(scene), str(a), extra), single_process())["num_gaussians"]
    start = _resume_copy(a, b, 20)
    assert train(_cfg(str(scene), str(b), extra), single_process(), find_checkpoint(start))["num_gaussians"] == n
    assert (a / "model.ply").read_bytes() == (b / "model.ply").read_bytes()
    assert (a / "exposures.json").read_text() == (b / "exposures.json").read_text()
    before, after = _losses(a), _losses(b)
    assert [after[s] for s in range(22, 41, 2)] == [before[s] for s in range(22, 41, 2)]


def _state_job(ctx, scene: str, ckpt: str) -> dict:
    cfg = _cfg(scene, str(Path(ckpt).parent.parent))
    state = initial_state(cfg, scene_from_config(cfg.data), find_checkpoint(Path(ckpt)), ctx)
    optimizer, densify = state.optimizer, state.densify
    return {"opt": optimizer.state_dict(), "densify": densify.state_dict()}


@pytest.mark.parametrize("saved, resumed", [(2, 1), (1, 2)])
def test_resume_on_another_world_size_keeps_the_adam_state(
    scene: Path, tmp_path: Path, saved: int, resumed: int
) -> None:
    run = tmp_path / "run"
    _run(saved, str(scene), str(run))
    ckpt = checkpoint_dir(run, 20)
    manifest = find_checkpoint(ckpt)
    files = [torch.load(manifest.shard_file(r), weights_only=True) for r in range(saved)]
    want = rows_by_id([f["optimizer"] for f in files], [f["densify"] for f in files])
    if resumed == 1:
        got_states = [_state_job(single_process(), str(scene), str(ckpt))]
    else:
        got_states = run_ranks(resumed, _state_job, str(scene), str(ckpt))
    got = rows_by_id([s["opt"] for s in got_states], [s["densify"] for s in got_states])
    assert want.keys() == got.keys()
    for key in want:
        assert torch.equal(want[key], got[key]), key
    assert float(want["means.exp_avg_sq"].abs().sum()) > 0  # there was Adam state to keep
    # and training goes on from there to the model the saved world size reaches (compared by global id)
    copy = _resume_copy(run, tmp_path / "copy", 20)
    _run(resumed, str(scene), str(tmp_path / "copy"), str(copy))
    a, b = (_final_state(r) for r in (run, tmp_path / "copy"))
    assert torch.equal(a["ids"], b["ids"])
    for field in TRAINABLE:
        x, y = a[field], b[field]
        assert (x - y).abs().max() <= 1e-3 * max(1.0, float(x.abs().max())), field


def _final_state(run: Path) -> dict[str, torch.Tensor]:
    manifest = find_checkpoint(run)
    assert manifest.images_seen == 40
    files = [torch.load(manifest.shard_file(r), weights_only=True) for r in range(manifest.world_size)]
    return rows_by_id([f["optimizer"] for f in files], [f["densify"] for f in files])


def test_broken_checkpoints_are_reported_by_file(
    scene: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    _run(1, str(scene), str(run))
    with pytest.raises(InputError, match="no complete checkpoint"):
        find_checkpoint(tmp_path)
    assert main(["train", "--resume", str(tmp_path / "nowhere")]) == 2
    assert "nowhere" in capsys.readouterr().err

    ckpt = checkpoint_dir(run, 40)
    shard = ckpt / "rank_00000.pt"
    shard.write_bytes(shard.read_bytes()[:100])  # truncated
    with pytest.raises(InputError, match="rank_00000.pt: unreadable checkpoint shard"):
        load_shards(find_checkpoint(run), single_process())
    shard.unlink()
    with pytest.raises(InputError, match="rank_00000.pt: checkpoint shard is missing"):
        load_shards(find_checkpoint(run), single_process())
    (ckpt / "manifest.json").write_text("{not json")
    with pytest.raises(InputError, match="manifest.json: unreadable checkpoint manifest"):
        find_checkpoint(ckpt)
    (ckpt / "manifest.json").unlink()  # an interrupted checkpoint is skipped: the one at 20 is the newest
    assert find_checkpoint(run).images_seen == 20
    # the config of the run must fit the checkpoint
    assert main(["train", "--resume", str(run), "model.sh_degree=2"]) == 2
    assert "SH degree" in capsys.readouterr().err
