"""Bad input, end to end: every case exits with status 2, prints exactly one line ``error: <file>: <problem>``
on stderr naming the offending file (or override) and the problem, and leaves no partial output (the output
does not exist or is unchanged, and no ``.*tmp*`` file is left anywhere under the test's folder).

Quick commands run in-process through :func:`grendel_py.cli.main`. ``grendel train`` runs as a real process
(``python -m grendel_py`` in a clean environment, CPU only) for one case of each kind of bad input (COLMAP
model, image, config; in-process for the others), and so do the commands writing into a folder the user may
not write, and the jobs with more ranks than Gaussians (3 ranks started directly, and under torchrun).
Root ignores permission bits: as root, those children run without the two capabilities that let it
(CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH), so a read-only folder is read-only to them as to any user (running
them as ``nobody`` is not possible where the interpreter lives in a private home such as /root).
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from plyfile import PlyData, PlyElement

from grendel_py.cli import main
from grendel_py.data.colmap import qvec_to_rotmat, read_model, write_model
from tests.dist_util import finish_child, free_port, start_child

TIMEOUT_S = 120
GARBAGE_PROBLEM = r"corrupt|truncated|malformed|unknown|invalid"  # what a reader says depends on the bytes


# ------------------------------------------------------------------------------------------------ running


@dataclass
class Result:
    rc: int
    out: str
    err: str


def _run_inprocess(args: list[str]) -> Result:
    """``grendel ARGS`` through :func:`main`; an exception escaping it counts as exit 1 with its traceback, as
    the interpreter would report it."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main([str(a) for a in args])
        except SystemExit as e:
            rc = e.code if isinstance(e.code, int) else 1
        except Exception:
            traceback.print_exc()
            rc = 1
    return Result(rc, out.getvalue(), err.getvalue())


def _drop_permission_override() -> None:
    """In the child, before exec: remove CAP_DAC_OVERRIDE (1) and CAP_DAC_READ_SEARCH (2) from the bounding
    set, so that even root's process obeys file permission bits after exec."""
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2):
        if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed: cannot drop root's permission override")


def _start(cmd: list, cwd: Path, env: dict[str, str] | None = None, unprivileged: bool = False) -> subprocess.Popen:
    """Start ``cmd`` in its own process group, in a clean environment (plus ``env``); ``unprivileged``: obeying
    file permission bits even as root."""
    preexec = _drop_permission_override if unprivileged and os.geteuid() == 0 else None
    return start_child(cmd, cwd, env, preexec_fn=preexec)


def _finish(proc: subprocess.Popen) -> Result:
    """Wait for ``proc``; on timeout kill its whole process group and fail."""
    return Result(*finish_child(proc, TIMEOUT_S))


def _run_process(cmd: list, cwd: Path) -> Result:
    return _finish(_start(cmd, cwd))


def grendel(args: list, cwd: Path, *, process: bool = False) -> Result:
    """``grendel ARGS``: in-process, or (``process``) as ``python -m grendel_py ARGS`` run in ``cwd``."""
    if process:
        return _run_process([sys.executable, "-m", "grendel_py", *args], cwd)
    return _run_inprocess(args)


# ------------------------------------------------------------------------------------------------ checks


def assert_input_error(res: Result, names: list, problem: str) -> str:
    """Exit 2, nothing on stdout, and stderr exactly one line ``error: ...`` containing every one of ``names``
    and matching the regular expression ``problem`` (case-insensitive); returns the line."""
    assert res.rc == 2, f"exit status {res.rc}, stderr:\n{res.err[-4000:]}"
    assert res.out == "", f"stdout:\n{res.out[-4000:]}"
    lines = res.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), f"expected one error line, stderr:\n{res.err[-4000:]}"
    for name in names:
        assert str(name) in lines[0], f"{name} not named in: {lines[0]}"
    assert re.search(problem, lines[0], re.IGNORECASE), f"problem /{problem}/ not stated in: {lines[0]}"
    return lines[0]


def assert_no_output(root: Path, *outputs: Path) -> None:
    """None of ``outputs`` exists and no temporary file or folder is left anywhere under ``root``."""
    for out in outputs:
        assert not os.path.lexists(out), f"partial output left: {out} ({sorted(p.name for p in _listing(out))})"
    leftovers = sorted(str(p) for p in root.rglob(".*tmp*"))
    assert not leftovers, f"temporary files left: {leftovers}"


def _listing(path: Path) -> list[Path]:
    return list(path.iterdir()) if path.is_dir() else []


# ------------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def scene(object_scene_seed2: Path) -> Path:
    """The tiny synthetic COLMAP scene (``object`` preset: 160x120 PNG views, a few thousand points), made once
    per session and shared with other modules: tests here only read it, or break copies of it."""
    return object_scene_seed2


@pytest.fixture(scope="module")
def good_ply(scene: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A valid model PLY of the scene (SH degree 1)."""
    out = tmp_path_factory.mktemp("good_ply") / "model.ply"
    res = _run_inprocess(["init", scene, out, "model.sh_degree=1"])
    assert res.rc == 0, res.err
    return out


def _data(scene: Path) -> list[str]:
    return [f"data.path={scene}", "data.downscale=4", "data.test_every=4"]


def _train_args(scene: Path, out: Path) -> list[str]:
    """``grendel train`` words for a few-image run (every case here fails before training starts)."""
    return [
        "train",
        *_data(scene),
        f"train.out={out}",
        "train.images=4",
        "train.eval_every=0",
        "train.eval_renders=0",
        "train.checkpoint_every=0",
        "model.sh_degree=0",
        "dist.timeout_s=30",
        "dist.calibrate=false",
    ]


def _copy_scene(scene: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "scene"
    shutil.copytree(scene, dst)
    return dst


def _garbage(n: int = 300, seed: int = 0) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


# ------------------------------------------------------------------------------------------------ COLMAP


def _overwrite(path: Path) -> None:
    path.write_bytes(_garbage())


def _truncate(path: Path, keep: float = 2 / 3) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _to_text(sparse: Path) -> None:
    """Rewrite the model as .txt (keypoints dropped to keep it small) and remove the .bin files."""
    cameras, images, points = read_model(sparse)
    for img in images.values():
        img.xys, img.point3D_ids = np.zeros((0, 2)), np.zeros(0, np.int64)
    points.track_offsets[:] = 0
    points.track_image_ids, points.track_point2D_idx = np.zeros(0, np.int64), np.zeros(0, np.int64)
    write_model(sparse, cameras, images, points, binary=False)
    for stem in ("cameras", "images", "points3D"):
        (sparse / f"{stem}.bin").unlink()


def _edit_text_line(path: Path, edit) -> None:
    """Apply ``edit`` (tokens -> tokens) to the first data line of a COLMAP text file."""
    lines = path.read_text().splitlines()
    i = next(i for i, line in enumerate(lines) if line and not line.startswith("#"))
    lines[i] = " ".join(edit(lines[i].split()))
    path.write_text("\n".join(lines) + "\n")


def _nan_point(sparse: Path) -> None:
    cameras, images, points = read_model(sparse)
    points.xyz[10, 1] = np.nan
    write_model(sparse, cameras, images, points)


# case: (offending file in sparse/0, how to break the model, problem)
COLMAP_CASES = {
    "cameras.bin-garbage": ("cameras.bin", lambda s: _overwrite(s / "cameras.bin"), GARBAGE_PROBLEM),
    "images.bin-garbage": ("images.bin", lambda s: _overwrite(s / "images.bin"), GARBAGE_PROBLEM),
    "points3D.bin-garbage": ("points3D.bin", lambda s: _overwrite(s / "points3D.bin"), GARBAGE_PROBLEM),
    "cameras.bin-truncated": ("cameras.bin", lambda s: _truncate(s / "cameras.bin"), "truncated"),
    "images.bin-truncated": ("images.bin", lambda s: _truncate(s / "images.bin"), "truncated"),
    "points3D.bin-truncated": ("points3D.bin", lambda s: _truncate(s / "points3D.bin"), "truncated"),
    "points3D.bin-nan": ("points3D.bin", _nan_point, "non-finite"),
    "cameras.txt-malformed": (
        "cameras.txt",
        lambda s: (_to_text(s), _edit_text_line(s / "cameras.txt", lambda t: [*t[:2], "wide", *t[3:]])),
        "line 4: malformed camera",
    ),
    "images.txt-malformed": (
        "images.txt",
        lambda s: (_to_text(s), _edit_text_line(s / "images.txt", lambda t: [t[0], "x", *t[2:]])),
        "line 5: malformed image",
    ),
    "points3D.txt-malformed": (
        "points3D.txt",
        lambda s: (_to_text(s), _edit_text_line(s / "points3D.txt", lambda t: t[:5])),
        "line 4: malformed point",
    ),
}
# the case whose `grendel train` runs as a real process (the others run it in-process: the same code, faster)
TRAIN_PROCESS = {"cameras.bin-garbage"}


@pytest.mark.parametrize("command", ["info", "train"])
@pytest.mark.parametrize("case", list(COLMAP_CASES))
def test_corrupt_colmap_model(scene: Path, tmp_path: Path, case: str, command: str) -> None:
    name, damage, problem = COLMAP_CASES[case]
    broken = _copy_scene(scene, tmp_path)
    sparse = broken / "sparse" / "0"
    damage(sparse)
    out = tmp_path / "run"
    if command == "info":
        res = grendel(["info", broken, "data.downscale=4"], tmp_path)
    else:
        res = grendel(_train_args(broken, out), tmp_path, process=case in TRAIN_PROCESS)
    assert_input_error(res, [sparse / name], problem)
    assert_no_output(tmp_path, out)


# ------------------------------------------------------------------------------------------------ images


def _rename_image(scene: Path, index: int, suffix: str) -> Path:
    """Make the model refer to image ``index`` (in name order) by another extension; returns the new path."""
    sparse = scene / "sparse" / "0"
    cameras, images, points = read_model(sparse)
    img = sorted(images.values(), key=lambda i: i.name)[index]
    old = scene / "images" / img.name
    img.name = Path(img.name).with_suffix(suffix).name
    write_model(sparse, cameras, images, points)
    Image.open(old).convert("RGB").save(scene / "images" / img.name, quality=90)
    old.unlink()
    return scene / "images" / img.name


def _break_image(scene: Path, case: str) -> Path:
    """Damage the fourth image of ``scene`` as ``case`` says; returns its path."""
    kind, damage = case.split("-")
    path = sorted((scene / "images").iterdir())[3]
    if kind == "jpg":
        path = _rename_image(scene, 3, ".jpg")
    if damage == "missing":
        path.unlink()
    elif damage == "garbage":
        path.write_bytes(_garbage(2000))
    else:
        _truncate(path, 0.5)
    return path


IMAGE_CASES = {
    "png-missing": "image file is missing",
    "png-garbage": "cannot read image: not an image file",
    "png-truncated": "cannot read image: corrupt or truncated",  # found by the PNG chunk checks
    "jpg-garbage": "cannot read image: not an image file",
    "jpg-truncated": "cannot read image: corrupt or truncated",  # no end-of-image marker: decoded at 1/8
}
IMAGE_TRAIN_PROCESS = {"jpg-truncated"}


@pytest.mark.parametrize("command", ["info", "train"])
@pytest.mark.parametrize("case", list(IMAGE_CASES))
def test_missing_or_corrupt_image(scene: Path, tmp_path: Path, case: str, command: str) -> None:
    broken = _copy_scene(scene, tmp_path)
    bad = _break_image(broken, case)
    out = tmp_path / "run"
    if command == "info":
        res = grendel(["info", broken, "data.downscale=4"], tmp_path)
    else:
        res = grendel(_train_args(broken, out), tmp_path, process=case in IMAGE_TRAIN_PROCESS)
    assert_input_error(res, [bad], IMAGE_CASES[case])
    assert_no_output(tmp_path, out)


# ------------------------------------------------------------------------------------------------ config

# case: (YAML text of --config FILE (None: no file; "<missing>": FILE does not exist; "<folder>": FILE is a
# folder), overrides, what the line names ("FILE": the config file), problem)
CONFIG_CASES = {
    "file-unknown-key": ("bogus: 1\n", [], ["FILE", "bogus"], "unknown key"),
    "file-unknown-nested-key": ("train:\n  imges: 5\n", [], ["FILE", "train.imges"], "unknown key"),
    "override-unknown-key": (None, ["bogus=1"], ["'bogus=1'"], "unknown key"),
    "override-unknown-nested-key": (None, ["train.imges=5"], ["'train.imges=5'"], "unknown key"),
    "file-wrong-type": (
        "densify:\n  every_images: often\n",
        [],
        ["FILE", "densify.every_images"],
        "expected an integer",
    ),
    "override-wrong-type": (None, ["data.downscale=abc"], ["'data.downscale=abc'"], "expected a number"),
    "file-out-of-range": ("train:\n  lambda_dssim: 2\n", [], ["FILE", "train.lambda_dssim"], r"in \[0, 1\]"),
    "override-out-of-range": (None, ["train.batch_size=0"], ["'train.batch_size=0'"], "> 0"),
    "file-not-yaml": ("train: [1, 2\nseed: 3\n", [], ["FILE"], "invalid YAML"),
    "override-not-yaml": (None, ["seed=[1"], ["'seed=[1'"], "not valid YAML"),
    "file-not-a-mapping": ("- 1\n- 2\n", [], ["FILE"], "expected a mapping"),
    "file-missing": ("<missing>", [], ["FILE"], "no such config file"),
    "file-is-a-folder": ("<folder>", [], ["FILE"], "cannot read config"),
}
CONFIG_TRAIN_PROCESS = {"file-unknown-nested-key"}


@pytest.mark.parametrize("command", ["info", "train"])
@pytest.mark.parametrize("case", list(CONFIG_CASES))
def test_bad_config(scene: Path, tmp_path: Path, case: str, command: str) -> None:
    text, overrides, names, problem = CONFIG_CASES[case]
    config = tmp_path / "bad.yaml"
    if text == "<folder>":
        config.mkdir()
    elif text is not None and text != "<missing>":
        config.write_text(text)
    words = (["--config", config] if text is not None else []) + overrides
    out = tmp_path / "run"
    if command == "info":
        res = grendel(["info", scene, *words], tmp_path)
    else:
        res = grendel([*_train_args(scene, out), *words], tmp_path, process=case in CONFIG_TRAIN_PROCESS)
    assert_input_error(res, [config if n == "FILE" else n for n in names], problem)
    assert_no_output(tmp_path, out)


# ------------------------------------------------------------------------------------------------ PLY


def _vertices(path: Path) -> np.ndarray:
    return PlyData.read(str(path))["vertex"].data


def _write_vertices(path: Path, vertices: np.ndarray) -> None:
    PlyData([PlyElement.describe(vertices, "vertex")], byte_order="<").write(str(path))


def _with_value(good: Path, out: Path, prop: str, value: float) -> None:
    v = _vertices(good).copy()
    v[prop][7] = value
    _write_vertices(out, v)


def _fields(vertices: np.ndarray, names: list[str]) -> np.ndarray:
    """A packed copy of ``vertices`` with only the properties ``names``."""
    out = np.empty(len(vertices), dtype=[(n, vertices.dtype[n]) for n in names])
    for n in names:
        out[n] = vertices[n]
    return out


def _without(good: Path, out: Path, prop: str) -> None:
    v = _vertices(good)
    _write_vertices(out, _fields(v, [n for n in v.dtype.names if n != prop]))


# case: (how to write the bad file from the good one, problem)
PLY_CASES = {
    "nan-opacity": (lambda g, o: _with_value(g, o, "opacity", np.nan), "'opacity' has 1 non-finite"),
    "inf-x": (lambda g, o: _with_value(g, o, "x", np.inf), "'x' has 1 non-finite"),
    "no-opacity": (lambda g, o: _without(g, o, "opacity"), "lacks properties opacity"),
    "no-scale_2": (lambda g, o: _without(g, o, "scale_2"), "lacks properties scale_2"),
    "truncated": (lambda g, o: o.write_bytes(g.read_bytes()[: g.stat().st_size * 2 // 3]), "not a valid PLY"),
    "not-a-ply": (lambda g, o: o.write_bytes(b"solid cube\n" + _garbage()), "not a valid PLY"),
    "garbage": (lambda g, o: o.write_bytes(_garbage()), "not a valid PLY"),
    "empty": (lambda g, o: o.write_bytes(b""), "not a valid PLY"),
    "missing": (lambda g, o: None, "no such file|not found"),
}


def _ply_command(command: str, model: Path, scene: Path, out: Path) -> list:
    if command == "render":
        return ["render", model, "--data", scene, "--out", out, "data.downscale=4", "data.test_every=4"]
    if command == "eval":
        return ["eval", model, "--data", scene, "--out", out, "data.downscale=4", "data.test_every=4"]
    return [
        "simulate",
        "--scenes",
        "fox",
        "--fox",
        scene,
        "--fox-model",
        model,
        "--fox-downscale",
        "4",
        "--worlds",
        "2",
        "--batch-factors",
        "1",
        "--tolerances",
        "0",
        "--images",
        "2",
        "--json",
    ]


@pytest.mark.parametrize("command", ["render", "eval", "simulate"])
@pytest.mark.parametrize("case", list(PLY_CASES))
def test_bad_model_ply(scene: Path, good_ply: Path, tmp_path: Path, case: str, command: str) -> None:
    write, problem = PLY_CASES[case]
    model = tmp_path / "model.ply"
    write(good_ply, model)
    out = tmp_path / ("renders" if command == "render" else "eval.json")
    if command == "eval":
        out.write_text("previous results\n")  # an existing output stays as it was
    res = grendel(_ply_command(command, model, scene, out), tmp_path)
    assert_input_error(res, [model], problem)
    if command == "eval":
        assert out.read_text() == "previous results\n"
        out.unlink()
    assert_no_output(tmp_path, out)


def _transforms_scene(scene: Path, root: Path, ply: Path) -> Path:
    """A transforms.json scene of the first 3 views of ``scene`` whose point cloud is the file ``ply``."""
    cameras, images, _ = read_model(scene / "sparse" / "0")
    cam = next(iter(cameras.values()))
    fx, fy, cx, cy = cam.params.tolist()
    frames = []
    for img in sorted(images.values(), key=lambda i: i.name)[:3]:
        R = qvec_to_rotmat(img.qvec)
        c2w = np.eye(4)
        c2w[:3, :3], c2w[:3, 3] = R.T, -R.T @ img.tvec
        c2w[:3, 1:3] *= -1  # OpenCV -> OpenGL camera axes
        (root / "images").mkdir(parents=True, exist_ok=True)
        shutil.copy(scene / "images" / img.name, root / "images" / img.name)
        frames.append({"file_path": f"images/{img.name}", "transform_matrix": c2w.tolist()})
    meta = {
        "fl_x": fx,
        "fl_y": fy,
        "cx": cx,
        "cy": cy,
        "w": cam.width,
        "h": cam.height,
        "ply_file_path": ply.name,
        "frames": frames,
    }
    (root / "transforms.json").write_text(json.dumps(meta))
    return root


def _points_ply(out: Path, case: str) -> None:
    xyz = np.random.default_rng(0).normal(size=(50, 3)).astype("<f4")
    v = np.zeros(50, dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1")])
    v["x"], v["y"], v["z"] = xyz.T
    if case == "nan":
        v["z"][3] = np.nan
    if case == "no-z":
        v = _fields(v, ["x", "y", "red", "green", "blue"])
    _write_vertices(out, v)
    if case == "truncated":
        out.write_bytes(out.read_bytes()[:-100])
    if case == "not-a-ply":
        out.write_bytes(_garbage())


POINTS_CASES = {
    "nan": "non-finite",
    "no-z": "lack properties z",
    "truncated": "not a valid PLY",
    "not-a-ply": "not a valid PLY",
}


@pytest.mark.parametrize("command", ["info", "init"])
@pytest.mark.parametrize("case", list(POINTS_CASES))
def test_bad_points_ply_of_transforms_scene(scene: Path, tmp_path: Path, case: str, command: str) -> None:
    ply = tmp_path / "scene" / "points.ply"
    root = _transforms_scene(scene, tmp_path / "scene", ply)
    _points_ply(ply, case)
    out = tmp_path / "init.ply"
    res = grendel(["info", root] if command == "info" else ["init", root, out], tmp_path)
    assert_input_error(res, [ply], POINTS_CASES[case])
    assert_no_output(tmp_path, out)


# ------------------------------------------------------------------------------------------------ outputs


def _output_command(command: str, scene: Path, good_ply: Path, out: Path) -> list:
    return {
        "train": _train_args(scene, out),
        "render": ["render", good_ply, "--data", scene, "--out", out, "data.downscale=4", "data.test_every=4"],
        "init": ["init", scene, out, "model.sh_degree=0"],
        # eval writes after evaluating: few test views keep that quick
        "eval": ["eval", good_ply, "--data", scene, "--out", out, "data.downscale=4", "data.test_every=16"],
    }[command]


OUTPUT_NAMES = {"train": "run", "render": "renders", "init": "init.ply", "eval": "eval.json"}


@pytest.fixture(scope="module")
def read_only_runs(scene: Path, good_ply: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple]:
    """Every command writing into a read-only folder of its own, all started at once (they only read the shared
    inputs) to save time: {command: (its test folder, the read-only folder, the output, Result)}."""
    read_only = stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH
    started = {}
    try:
        for command, name in OUTPUT_NAMES.items():
            root = tmp_path_factory.mktemp(f"read_only_{command}")
            folder = root / "read_only"
            folder.mkdir()
            folder.chmod(read_only)
            out = folder / name
            cmd = [sys.executable, "-m", "grendel_py", *_output_command(command, scene, good_ply, out)]
            started[command] = (root, folder, out, _start(cmd, root, unprivileged=True))
        return {command: (root, folder, out, _finish(proc)) for command, (root, folder, out, proc) in started.items()}
    finally:
        for _, folder, _, proc in started.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            folder.chmod(0o755)


@pytest.mark.parametrize("command", list(OUTPUT_NAMES))
def test_output_in_read_only_folder(read_only_runs: dict[str, tuple], command: str) -> None:
    root, folder, out, res = read_only_runs[command]
    assert_input_error(res, [out], "permission denied")
    assert_no_output(root, out)
    assert not any(folder.iterdir())


@pytest.mark.parametrize("command", list(OUTPUT_NAMES))
def test_output_parent_is_a_file(scene: Path, good_ply: Path, tmp_path: Path, command: str) -> None:
    blocker = tmp_path / "notes.txt"
    blocker.write_text("a file, not a folder\n")
    out = blocker / OUTPUT_NAMES[command]
    res = grendel(_output_command(command, scene, good_ply, out), tmp_path)
    assert_input_error(res, [out], r"not a (folder|directory)")
    assert blocker.read_text() == "a file, not a folder\n"
    assert_no_output(tmp_path, out)


@pytest.mark.parametrize("command", ["init", "eval"])
def test_output_file_is_a_folder(scene: Path, good_ply: Path, tmp_path: Path, command: str) -> None:
    out = tmp_path / OUTPUT_NAMES[command]
    out.mkdir()
    (out / "keep.txt").write_text("keep\n")
    res = grendel(_output_command(command, scene, good_ply, out), tmp_path)
    assert_input_error(res, [out], "is a folder")
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert_no_output(tmp_path)


# ------------------------------------------------------------------------------------------------ ranks


RANKS = 3  # the smallest model has 2 Gaussians (model.random_points >= 2), so 3 ranks are the fewest to outnumber it


@pytest.mark.parametrize("process", [False, True], ids=["inprocess", "process"])
def test_batch_larger_than_the_training_cameras(scene: Path, tmp_path: Path, process: bool) -> None:
    out = tmp_path / "run"
    n = json.loads(_run_inprocess(["info", scene, *_data(scene)[1:]]).out)["train_cameras"]
    res = grendel([*_train_args(scene, out), f"train.batch_size={n + 1}"], tmp_path, process=process)
    line = assert_input_error(res, [scene, f"train.batch_size={n + 1}"], "more than")
    assert f"{n} training cameras" in line, line
    assert_no_output(tmp_path, out)


def _ranks_args(scene: Path, out: Path) -> list[str]:
    return [*_train_args(scene, out), "model.init=random", "model.random_points=2"]


def test_more_ranks_than_gaussians(scene: Path, tmp_path: Path) -> None:
    """Ranks started with torchrun's environment (RANK, WORLD_SIZE, MASTER_ADDR, ...) and each left to finish on
    its own: every rank exits 2 with the one error line, naming the scene, and the run folder is not created."""
    out, port = tmp_path / "run", free_port()
    procs = []
    for rank in range(RANKS):
        env = {
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": str(RANKS),
            "LOCAL_WORLD_SIZE": str(RANKS),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
        }
        procs.append(_start([sys.executable, "-m", "grendel_py", *_ranks_args(scene, out)], tmp_path, env))
    for rank, proc in enumerate(procs):
        res = _finish(proc)
        line = assert_input_error(res, [scene], r"fewer.*ranks")
        assert f"{RANKS} ranks" in line, f"rank {rank}: {line}"
    assert_no_output(tmp_path, out)


def test_more_ranks_than_gaussians_under_torchrun(scene: Path, tmp_path: Path) -> None:
    """The same job launched by torchrun. Once torchrun sees a rank fail it stops the others (SIGTERM), so a rank
    slower to reach the check may be terminated before it prints; every rank that finished by itself exited 2
    with exactly the error line, the first failure among them, and the run folder is not created."""
    out, logs = tmp_path / "run", tmp_path / "logs"
    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        str(RANKS),
        "--master-addr",
        "127.0.0.1",
        "--master-port",
        str(free_port()),
        "--monitor-interval",
        "1",
        "--log-dir",
        logs,
        "--redirects",
        "3",
        "-m",
        "grendel_py",
    ]
    res = _run_process([*torchrun, *_ranks_args(scene, out)], tmp_path)
    assert res.rc != 0
    # torchrun's failure report: one entry per rank, "rank : R (local_rank: R)" then "exitcode : S"
    report = res.err[res.err.rindex("Failures:") :]
    entries = re.findall(r"^\s*rank\s+:\s*(\d+).*?^\s*exitcode\s+:\s*(-?\d+)", report, re.MULTILINE | re.DOTALL)
    statuses = {int(rank): int(status) for rank, status in entries}
    root_cause = report[report.index("Root Cause") :]
    first = int(re.search(r"^\s*exitcode\s+:\s*(-?\d+)", root_cause, re.MULTILINE).group(1))
    assert sorted(statuses) == list(range(RANKS)), f"exit statuses {statuses}:\n{res.err[-4000:]}"
    assert first == 2 and set(statuses.values()) <= {2, -signal.SIGTERM}, (
        f"exit statuses {statuses}:\n{res.err[-4000:]}"
    )
    for rank in range(RANKS):
        (stderr,) = logs.glob(f"*/attempt_0/{rank}/stderr.log")
        lines = [re.sub(r"^\[rank\d+\]:", "", line) for line in stderr.read_text().splitlines()]
        if statuses.get(rank, 2) == 2:
            assert len(lines) == 1, f"rank {rank} stderr:\n{stderr.read_text()[-4000:]}"
            assert_input_error(Result(2, "", lines[0] + "\n"), [scene], r"fewer.*ranks")
    assert_no_output(tmp_path, out)
