"""The ``grendel`` command end to end: synth -> info -> init -> render, and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from grendel_py.cli import main
from grendel_py.model.ply import read_ply


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "scene"
    assert main(["synth", str(out), "--preset", "object", "--seed", "0"]) == 0
    return out


def test_info_init_render(scene: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", str(scene), "data.test_every=4"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["cameras"] == info["train_cameras"] + info["test_cameras"]
    assert info["test_cameras"] == -(-info["cameras"] // 4) and info["points"] > 1000

    ply = tmp_path / "init.ply"
    assert main(["init", str(scene), str(ply), "model.sh_degree=1"]) == 0
    gaussians = read_ply(ply)
    assert len(gaussians) == info["points"] and gaussians.sh_degree == 1

    out = tmp_path / "renders"
    assert (
        main(["render", str(ply), "--data", str(scene), "--out", str(out), "data.downscale=2", "data.test_every=4"])
        == 0
    )
    pngs = sorted(out.glob("*.png"))
    assert len(pngs) == info["test_cameras"]
    first = np.asarray(Image.open(pngs[0]))
    assert first.shape == (60, 80, 3) and first.std() > 5  # downscaled 160x120, not blank
    assert not list(tmp_path.glob(".*tmp*"))

    every = tmp_path / "every"
    assert (
        main(
            [
                "render",
                str(ply),
                "--data",
                str(scene),
                "--out",
                str(every),
                "--outputs",
                "depth, alpha,rgb",
                "data.downscale=2",
                "data.test_every=4",
            ]
        )
        == 0
    )
    stem = pngs[0].stem
    assert np.array_equal(np.asarray(Image.open(every / f"{stem}.png")), first)
    alpha = np.asarray(Image.open(every / f"{stem}_alpha.png"))
    depth = np.load(every / f"{stem}_depth.npy")
    preview = np.asarray(Image.open(every / f"{stem}_depth.png"))
    assert alpha.shape == depth.shape == preview.shape == (60, 80) and alpha.dtype == preview.dtype == np.uint8
    assert depth.dtype == np.float32 and bool(np.isfinite(depth).all())
    drawn = alpha > 128
    assert drawn.any() and (depth[drawn] > 0).all() and (preview[drawn] > 0).all()
    assert len(list(every.iterdir())) == 4 * info["test_cameras"]
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(["render", str(ply), "--data", str(scene), "--out", str(tmp_path / "x"), "--outputs", "rgb,normals"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "--outputs" in err and "unknown: normals" in err
    assert not (tmp_path / "x").exists()


def test_random_init(scene: Path, tmp_path: Path) -> None:
    ply = tmp_path / "rand.ply"
    assert (
        main(["init", str(scene), str(ply), "model.init=random", "model.random_points=500", "model.sh_degree=0"]) == 0
    )
    assert len(read_ply(ply)) == 500


def _error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err
    return err


def test_bad_input_is_one_line_and_exit_2(scene: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ply = tmp_path / "m.ply"
    assert main(["init", str(scene), str(ply)]) == 0
    assert "model.sh_degre" in _error(capsys, ["info", str(scene), "model.sh_degre=2"])
    assert "data.downscale" in _error(capsys, ["info", str(scene), "data.downscale=0.5"])
    assert "missing.ply" in _error(
        capsys, ["render", str(tmp_path / "missing.ply"), "--data", str(scene), "--out", str(tmp_path / "r")]
    )
    assert not (tmp_path / "r").exists()
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("x")
    assert "not empty" in _error(capsys, ["render", str(ply), "--data", str(scene), "--out", str(busy)])
    assert "not empty" in _error(capsys, ["synth", str(busy)])


def test_broken_scenes(scene: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(scene, broken)
    cams = broken / "sparse" / "0" / "cameras.bin"
    cams.write_bytes(cams.read_bytes()[:-5])
    assert "cameras.bin" in _error(capsys, ["info", str(broken)])

    shutil.copy(scene / "sparse" / "0" / "cameras.bin", cams)
    victim = sorted((broken / "images").iterdir())[3]
    victim.unlink()
    assert victim.name in _error(capsys, ["info", str(broken)])

    Image.new("RGB", (10, 10)).save(victim)
    err = _error(capsys, ["info", str(broken)])
    assert victim.name in err and "10x10" in err


def test_override_words_anywhere_and_bad_words_rejected(scene: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", "data.test_every=0", str(scene)]) == 0
    assert json.loads(capsys.readouterr().out)["test_cameras"] == 0
    with pytest.raises(SystemExit) as e:
        main(["info", str(scene), "stray"])
    assert e.value.code == 2


def test_render_backend_choice(scene: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``auto`` renders wherever it runs; ``cupy`` without a GPU is a one-line error that writes nothing."""
    ply = tmp_path / "m.ply"
    assert main(["init", str(scene), str(ply), "model.sh_degree=0"]) == 0
    common = ["--data", str(scene), "data.downscale=4", "data.test_every=4"]
    assert main(["render", str(ply), *common, "--out", str(tmp_path / "auto"), "render.backend=auto"]) == 0
    assert len(list((tmp_path / "auto").glob("*.png"))) > 0
    assert "render.backend" in _error(
        capsys, ["render", str(ply), *common, "--out", str(tmp_path / "x"), "render.backend=gpu"]
    )
    if not torch.cuda.is_available():
        for argv in (
            ["render", str(ply), *common, "--out", str(tmp_path / "c"), "render.backend=cupy"],
            ["train", f"data.path={scene}", f"train.out={tmp_path / 'run'}", "render.backend=cupy"],
        ):
            assert "render.backend=cupy" in _error(capsys, argv)
        assert not (tmp_path / "c").exists() and not (tmp_path / "run").exists()
