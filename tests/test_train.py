"""Training end to end on a tiny synthetic scene: it learns, writes its outputs, and rejects bad runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from grendel_py.cli import main
from grendel_py.config import load_config
from grendel_py.data.dataset import load_scene
from grendel_py.model.initialize import initial_gaussians
from grendel_py.model.splat_formats import read_model
from grendel_py.parallel.runtime import init_distributed
from grendel_py.synth.writer import write_synthetic
from grendel_py.train.evaluate import evaluate
from grendel_py.train.loop import train


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("train") / "scene"
    write_synthetic(out, "object", seed=1)
    return out


def _overrides(scene: Path, out: Path, images: int = 120) -> list[str]:
    return [
        f"data.path={scene}",
        "data.downscale=4",
        f"train.out={out}",
        f"train.images={images}",
        "train.eval_every=60",
        "train.log_every=20",
        "train.eval_renders=2",
        "train.sh_degree_every=40",
        "densify.start_images=30",
        "densify.stop_images=100",
        "densify.every_images=30",
        "densify.reset_opacity_every=80",
        "model.sh_degree=1",
    ]


def test_training_learns_and_writes_outputs(scene: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    cfg = load_config(None, [*_overrides(scene, out), "train.export=[spz, ply-compressed]"])
    data = load_scene(scene, downscale=4)
    start = evaluate(
        initial_gaussians(cfg.model, data.points, data.cameras, data.extent, cfg.seed),
        data,
        data.test_cameras,
        torch.zeros(3),
    )
    result = train(cfg, init_distributed(env={}))
    assert result["test"]["psnr"] > start["psnr"] + 3.0  # it really learns
    assert result["num_gaussians"] != len(data.points_xyz)  # densification and pruning ran
    assert (out / "model.ply").is_file() and (out / "config.yaml").is_file()
    assert json.loads((out / "metrics.json").read_text())["test"]["count"] == len(data.test_cameras)
    assert len(list((out / "renders").glob("*.png"))) == 2
    # Pictures of the work at each evaluation (60 and 120 images); the model also in the asked formats.
    assert sorted(p.name for p in (out / "work").iterdir()) == ["00000060", "00000120"]
    assert len(list((out / "work" / "00000120").glob("*_tiles.png"))) == 2
    for name in ("model.spz", "model.compressed.ply"):
        assert len(read_model(out / name)) == result["num_gaussians"]
    assert list((out / "tb").glob("events.out.tfevents.*"))
    assert load_config(out / "config.yaml", []) == cfg  # the resolved config is saved with the run
    assert not list(tmp_path.rglob(".*tmp*"))


def test_same_seed_same_model(scene: Path, tmp_path: Path) -> None:
    a = train(load_config(None, _overrides(scene, tmp_path / "a", images=40)), init_distributed(env={}))
    b = train(load_config(None, _overrides(scene, tmp_path / "b", images=40)), init_distributed(env={}))
    assert (tmp_path / "a" / "model.ply").read_bytes() == (tmp_path / "b" / "model.ply").read_bytes()
    assert a["test"]["psnr"] == b["test"]["psnr"]


def test_cli_train_and_eval(scene: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    assert main(["train", *_overrides(scene, out, images=20)]) == 0
    assert "test PSNR" in capsys.readouterr().out
    assert (
        main(
            [
                "eval",
                str(out / "model.ply"),
                "--data",
                str(scene),
                "data.downscale=4",
                "--out",
                str(tmp_path / "e.json"),
            ]
        )
        == 0
    )
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads((tmp_path / "e.json").read_text())
    saved = json.loads((out / "metrics.json").read_text())["test"]
    assert printed["psnr"] == pytest.approx(saved["psnr"], abs=0.05)  # PLY round trip, same cameras


def test_bad_runs_exit_2_and_write_nothing(scene: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    assert main(["train", *_overrides(scene, out), "train.imges=5"]) == 2
    assert "train.imges" in capsys.readouterr().err and not out.exists()
    assert main(["train", *_overrides(scene, out), "train.batch_size=0"]) == 2
    assert "train.batch_size" in capsys.readouterr().err
    assert main(["train", f"train.out={out}"]) == 2
    assert "data.path" in capsys.readouterr().err
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "x").write_text("keep")
    assert main(["train", *_overrides(scene, busy)]) == 2
    assert "not empty" in capsys.readouterr().err and sorted(p.name for p in busy.iterdir()) == ["x"]
