"""The browser viewer (viser): a model, the cameras and scalars served over HTTP; ``grendel view``."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from grendel_py.cli import build_parser
from grendel_py.config import load_config
from grendel_py.data.cameras import Camera, look_at
from grendel_py.errors import InputError
from grendel_py.model.gaussians import Gaussians
from grendel_py.model.ply import write_ply
from grendel_py.pictures import rank_colours
from grendel_py.view_splats import select_for_view, view_splats
from grendel_py.viewer import BACK_OFF, BATCH_COLOUR, CAMERA_COLOUR, Viewer

pytest.importorskip("viser", reason="the viewer extra (a dev dependency) is not installed")


def _model(n: int) -> Gaussians:
    gen = torch.Generator().manual_seed(0)
    return Gaussians(
        means=torch.randn(n, 3, generator=gen),
        log_scales=torch.randn(n, 3, generator=gen) - 3,
        quats=torch.randn(n, 4, generator=gen),
        opacity_logits=torch.randn(n, generator=gen),
        sh0=torch.randn(n, 1, 3, generator=gen),
        shN=torch.zeros(n, 3, 3),
        ids=torch.arange(n),
    )


def _cameras() -> list[Camera]:
    out = []
    for uid, x in enumerate((-1.0, 1.0)):
        R = torch.eye(3, dtype=torch.float64)
        out.append(
            Camera(
                uid, f"c{uid}.png", 64, 48, 50.0, 50.0, 32.0, 24.0, R, torch.tensor([x, 0.0, 4.0], dtype=torch.float64)
            )
        )
    return out


def _page(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30) as r:
        assert r.status == 200
        return r.read().decode("utf-8", "replace")


def test_viewer_serves_the_model_cameras_and_scalars() -> None:
    viewer = Viewer(0, _cameras(), host="127.0.0.1")
    try:
        assert viewer.port > 0 and viewer.clients == 0
        assert "<html" in _page(viewer.port).lower()
        viewer.show_model(view_splats(select_for_view(_model(500), 100)))
        first = viewer._splats
        viewer.show_model(view_splats(select_for_view(_model(500), 300)))  # a new count: the same node, updated
        assert viewer._splats is first and len(first.centers) == 300
        viewer.show_batch([1])
        assert tuple(viewer._frusta[1].color) == BATCH_COLOUR and tuple(viewer._frusta[0].color) == CAMERA_COLOUR
        viewer.show_batch([0, 7])  # a camera the viewer does not show is ignored
        assert tuple(viewer._frusta[1].color) == CAMERA_COLOUR and tuple(viewer._frusta[0].color) == BATCH_COLOUR
        viewer.show_scalars({"loss": 0.25, "images": 100})
        viewer.show_scalars({"loss": 0.125})
        assert viewer._numbers["loss"].value == 0.125
    finally:
        viewer.close()


def _ring(target: tuple[float, float, float], count: int = 6, radius: float = 3.0) -> list[Camera]:
    """Cameras on a circle around ``target``, each looking at it (y up)."""
    out = []
    for uid in range(count):
        a = 2.0 * np.pi * uid / count
        eye = torch.tensor(target, dtype=torch.float64) + torch.tensor(
            [radius * np.cos(a), 0.5, radius * np.sin(a)], dtype=torch.float64
        )
        R, t = look_at(
            eye, torch.tensor(target, dtype=torch.float64), torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64)
        )
        out.append(Camera(uid, f"r{uid}.png", 64, 48, 40.0, 40.0, 32.0, 24.0, R, t))
    return out


def test_the_view_opens_behind_the_first_camera_looking_where_the_cameras_look() -> None:
    """Cameras around a point: the view looks at that point along the first camera's axis, from BACK_OFF of
    the way behind it, with its up and field of view; cameras that all look one way: the target lies as far
    ahead as they are spread."""
    target = np.array([1.0, 2.0, -0.5])
    ring = _ring(tuple(target))
    viewer = Viewer(0, ring, host="127.0.0.1")
    try:
        start = viewer.server.initial_camera
        eye = ring[0].center.numpy()
        np.testing.assert_allclose(start.look_at, target, atol=1e-9)
        np.testing.assert_allclose(start.position, eye - BACK_OFF * (target - eye), atol=1e-9)
        np.testing.assert_allclose(start.up, -ring[0].R.numpy()[1], atol=1e-12)
        assert start.fov == pytest.approx(2.0 * np.arctan(48 / 80.0))
    finally:
        viewer.close()
    parallel = _cameras()  # two cameras 2 apart looking along +z: spread 1
    viewer = Viewer(0, parallel, host="127.0.0.1")
    try:
        np.testing.assert_allclose(
            viewer.server.initial_camera.look_at, parallel[0].center.numpy() + [0.0, 0.0, 1.0], atol=1e-12
        )
    finally:
        viewer.close()


def _work_folder(folder: Path, boxes: list, names: list[str]) -> Path:
    folder.mkdir(parents=True)
    for i, name in enumerate(names):
        Image.fromarray(np.full((20, 30, 3), 40 * i, dtype=np.uint8)).save(folder / f"{name}_tiles.png")
    ranks = [{"rank": r, "gaussians": 10, "low": b and b[0], "high": b and b[1]} for r, b in enumerate(boxes)]
    (folder / "shards.json").write_text(json.dumps({"quantile": 0.01, "ranks": ranks}))
    return folder


def test_the_work_pictures_and_shard_boxes_replace_the_last_ones(tmp_path: Path) -> None:
    viewer = Viewer(0, _cameras(), host="127.0.0.1")
    try:
        first = _work_folder(
            tmp_path / "00000060", [[[0, 0, 0], [1, 2, 4]], None, [[-1, -1, -1], [0, 0, 0]]], ["00001_a", "00002_b"]
        )
        viewer.show_work(first, 60)
        panel, *rest = viewer._work
        assert panel.label == "Work after 60 images"
        boxes = [h for h in rest if type(h).__name__ == "BoxHandle"]  # viser's handle classes are not exported
        assert len(boxes) == 2  # the empty rank 1 has none
        np.testing.assert_allclose(boxes[0].position, [0.5, 1.0, 2.0])
        np.testing.assert_allclose(boxes[0].dimensions, [1.0, 2.0, 4.0])
        assert tuple(boxes[1].color) == tuple(rank_colours(3)[2])
        images = [h for h in rest if type(h).__name__ == "GuiImageHandle"]
        assert [h.label for h in images] == ["00001_a_tiles", "00002_b_tiles"]
        assert images[1].image.shape == (20, 30, 3) and int(images[1].image.max()) == 40
        viewer.show_work(_work_folder(tmp_path / "00000120", [[[0, 0, 0], [1, 1, 1]]], ["00001_a"]), 120)
        assert viewer._work[0].label == "Work after 120 images"
        assert [type(h).__name__ for h in viewer._work[1:]] == ["GuiImageHandle", "BoxHandle"]
        viewer.show_work(tmp_path / "nothing", 180)  # an evaluation without pictures: nothing shown
        assert viewer._work == []
    finally:
        viewer.close()


def test_grendel_view_serves_a_model_file(tmp_path: Path) -> None:
    write_ply(tmp_path / "model.ply", _model(400))
    _work_folder(tmp_path / "work" / "00000060", [[[0, 0, 0], [1, 1, 1]]], ["00001_a"])
    _work_folder(tmp_path / "work" / "00000120", [[[0, 0, 0], [1, 1, 1]]], ["00001_a"])  # the last evaluation's
    cmd = [
        sys.executable,
        "-m",
        "grendel_py",
        "view",
        str(tmp_path / "model.ply"),
        "--port",
        "0",
        "--host",
        "127.0.0.1",
        "--budget",
        "150",
        "--seconds",
        "10",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lines, match = [], None
        while match is None and len(lines) < 40:  # viser prints its own box of addresses first
            lines.append(proc.stdout.readline())
            match = re.search(r"150 of 400 Gaussians at http://127\.0\.0\.1:(\d+)", lines[-1])
        assert match, (lines, proc.stderr.read() if proc.poll() is not None else "")
        assert any(f"work in {tmp_path / 'work' / '00000120'}" in line for line in lines), lines
        assert "<html" in _page(int(match.group(1))).lower()
        assert proc.wait(timeout=120) == 0
    finally:
        proc.kill()
    bad = subprocess.run(
        cmd[:4] + [str(tmp_path / "missing.ply")] + cmd[5:], capture_output=True, text=True, timeout=120
    )
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0 and "missing.ply" in bad.stderr


def _watched_training_job(ctx, scene: str, out: str, port: int) -> list[int] | None:
    """A 40-image run with ``train.viewer_port`` whose viewer believes a browser is connected; rank 0 returns
    how many Gaussians each refresh showed."""
    from grendel_py.config import load_config
    from grendel_py.train.loop import train

    shown: list[int] = []
    Viewer.clients = property(lambda self: 1)  # a browser, as far as the loop can tell
    show_model = Viewer.show_model
    Viewer.show_model = lambda self, splats: (shown.append(len(splats["centers"])), show_model(self, splats))[1]
    cfg = load_config(
        None,
        [
            f"data.path={scene}",
            "data.downscale=4",
            f"train.out={out}",
            "train.images=40",
            "train.batch_size=2",
            "train.eval_every=0",
            "train.eval_renders=0",
            "densify.start_images=5",
            "densify.every_images=10",
            "densify.stop_images=35",
            f"train.viewer_port={port}",
            "train.viewer_every=10",
            "train.viewer_budget=500",
        ],
    )
    train(cfg, ctx)
    return shown if ctx.is_main else None


@pytest.mark.parametrize("world", [1, 2])
def test_a_watched_run_refreshes_its_viewer_within_the_budget(
    object_scene_seed2: Path, tmp_path: Path, world: int
) -> None:
    """Refreshed when the browser connects (after the first batch) and every 10 images: 5 times in 40 images;
    each time at most the budget (+ W - 1: each rank rounds its share up) and no fewer."""
    from tests.dist_util import free_port, run_ranks

    shown = run_ranks(world, _watched_training_job, str(object_scene_seed2), str(tmp_path / "run"), free_port())[0]
    assert len(shown) == 5
    assert all(500 <= n <= 500 + world - 1 for n in shown), shown


def test_viewers_listen_on_this_machine_only_by_default() -> None:
    """The viewer, ``grendel view`` and a run's viewer bind 127.0.0.1 unless told otherwise (viser has no
    access control); ``train.viewer_host`` opens a run's, and an empty one is refused."""
    viewer = Viewer(0, [])
    try:
        assert viewer.server.get_host() == "127.0.0.1"
    finally:
        viewer.close()
    demo = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"
    assert load_config(demo, []).train.viewer_host == "127.0.0.1"
    assert load_config(demo, ["train.viewer_host=0.0.0.0"]).train.viewer_host == "0.0.0.0"
    for bad in ("train.viewer_host= ", "train.viewer_host=''"):
        with pytest.raises(InputError, match="viewer_host"):
            load_config(demo, [bad])
    assert build_parser().parse_args(["view", "model.ply"]).host == "127.0.0.1"


def test_a_run_viewer_on_a_taken_port_says_where_it_serves(capsys: pytest.CaptureFixture) -> None:
    """Two jobs on one node with the same ``train.viewer_port``: viser moves the second to a free port, and the
    run says which, so that its user does not look at the other job's model."""
    import socket

    from grendel_py.parallel.runtime import single_process
    from grendel_py.train.observers import ViewerFeed

    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        feed = ViewerFeed(load_config(None, [f"train.viewer_port={port}"]).train, _cameras(), single_process())
        try:
            assert feed.viewer is not None and feed.viewer.port != port
            assert f"viewer: http://127.0.0.1:{feed.viewer.port} (port {port} is taken" in capsys.readouterr().err
        finally:
            feed.close()
