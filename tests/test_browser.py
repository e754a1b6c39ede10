"""The live viewer in a real browser: a 2-rank ``grendel train`` with ``train.viewer_port`` is loaded by
headless Chromium (Debian's ``chromium``, which ``.ci/run`` installs when it runs as root, as it does the
SLURM tests' packages; elsewhere the test skips and says so). The page must show the run's numbers and its
last evaluation's pictures of the distributed work, and its screenshot must differ from that of the same
viewer without the model where the splats are drawn: not a blank page, not an error page.

WebGL runs in software (SwiftShader); the ranks are stopped with SIGTERM, as a scheduler stops them, and must
exit with the preempted status.
"""

from __future__ import annotations

import contextlib
import html
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from grendel_py.errors import EXIT_PREEMPTED
from tests.dist_util import finish_child, free_port, start_child

pytest.importorskip("viser", reason="the viewer extra (a dev dependency) is not installed")

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
WINDOW = (800, 600)
PANEL_X = 460  # viser's control panel floats at the right of the window from about here
TOAST = (330, 200)  # its "software WebGL" notice covers the top left corner up to here
NUMBERS = ("images", "gaussians", "loss", "psnr")  # the scalars the training loop shows
MIN_DRAWN = 0.05  # share of the view the splats must change (29% measured; frusta and shard boxes are thin lines)


def _browser() -> str | None:
    return next((shutil.which(b) for b in BROWSERS if shutil.which(b)), None)


pytestmark = pytest.mark.skipif(
    _browser() is None, reason="no chromium on PATH (.ci/run installs Debian's chromium when it runs as root)"
)


def _chromium(url: str, profile: Path, *args: str, budget_ms: int = 8000) -> subprocess.CompletedProcess:
    """Headless Chromium on ``url`` (software WebGL, a private profile) for ``budget_ms`` of page time."""
    cmd = [
        _browser(),
        "--headless=new",
        "--no-sandbox",
        "--use-angle=swiftshader",
        "--enable-unsafe-swiftshader",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
        f"--window-size={WINDOW[0]},{WINDOW[1]}",
        f"--virtual-time-budget={budget_ms}",
        *args,
        url,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def _numbers(dom: str) -> dict[str, float]:
    """viser's read-only number fields in a dumped page: label -> value."""
    labels = {m.group(1): html.unescape(m.group(2)) for m in re.finditer(r'<label for="([^"]+)">([^<]+)</label>', dom)}
    values = {}
    for m in re.finditer(r'<input[^>]*\bid="([^"]+)"[^>]*\bvalue="([^"]*)"', dom):
        if m.group(1) in labels:
            with contextlib.suppress(ValueError):
                values[labels[m.group(1)]] = float(m.group(2).replace(",", ""))
    return values


def _wait_for_page(url: str, procs: list[subprocess.Popen], timeout: float = 180.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        assert all(p.poll() is None for p in procs), [finish_child(p, 10) for p in procs]
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(1.0)
    pytest.fail(f"no viewer at {url} after {timeout:g} s")


def _screenshot(url: str, profile: Path, path: Path, budget_ms: int) -> np.ndarray:
    result = _chromium(url, profile, f"--screenshot={path}", budget_ms=budget_ms)
    assert path.exists(), result.stderr[-2000:]
    return np.asarray(Image.open(path).convert("RGB")).astype(np.int16)


def _scene_pixels(shot: np.ndarray) -> np.ndarray:
    """The pixels of the 3D view that no panel covers (a mask)."""
    mask = np.ones(shot.shape[:2], dtype=bool)
    mask[:, PANEL_X:] = False
    mask[: TOAST[1], : TOAST[0]] = False
    return mask


def _viewer_without_model(scene: Path, tmp_path: Path) -> np.ndarray:
    """A screenshot of the viewer of the same cameras, opened from the same place, with no model in it."""
    from grendel_py.config import load_config
    from grendel_py.data.dataset import scene_from_config
    from grendel_py.viewer import Viewer

    cameras = scene_from_config(load_config(None, [f"data.path={scene}", "data.downscale=4"]).data).train_cameras
    viewer = Viewer(0, cameras, host="127.0.0.1")
    try:
        return _screenshot(f"http://127.0.0.1:{viewer.port}/", tmp_path / "empty_profile", tmp_path / "empty.png", 8000)
    finally:
        viewer.close()


def _splats_drawn(shot: np.ndarray, empty: np.ndarray) -> float:
    """The share of the 3D view's pixels that differ clearly from the same view without the model."""
    mask = _scene_pixels(shot)
    return float((np.abs(shot - empty).max(axis=2) > 40)[mask].mean())


def test_a_two_rank_run_shows_its_splats_numbers_and_work_in_a_browser(
    object_scene_seed2: Path, tmp_path: Path
) -> None:
    empty = _viewer_without_model(object_scene_seed2, tmp_path)
    port, master = free_port(), str(free_port())
    args = [
        f"data.path={object_scene_seed2}",
        "data.downscale=4",
        f"train.out={tmp_path / 'run'}",
        "train.images=100000",
        "train.batch_size=2",
        "train.eval_every=50",
        "train.eval_renders=1",
        "train.checkpoint_every=0",
        f"train.viewer_port={port}",
        "train.viewer_every=4",
        "train.viewer_budget=20000",
        "dist.calibrate=false",
        "dist.timeout_s=120",
    ]  # (evaluations 50 iterations apart: each one replaces the work panel, which a dump can miss)
    procs = [
        start_child(
            [sys.executable, "-m", "grendel_py", "train", *args],
            tmp_path,
            dict(RANK=str(r), WORLD_SIZE="2", LOCAL_RANK=str(r), MASTER_ADDR="127.0.0.1", MASTER_PORT=master),
        )
        for r in range(2)
    ]
    url = f"http://127.0.0.1:{port}/"
    try:
        _wait_for_page(url, procs)
        numbers, dom = {}, ""
        deadline = time.monotonic() + 480  # a time, not a number of tries: a page dump can take 1 s or 10
        while time.monotonic() < deadline:  # until the run has evaluated once and shown its pictures
            dom = _chromium(url, tmp_path / "profile", "--dump-dom").stdout
            numbers = _numbers(dom)
            if all(n in numbers for n in NUMBERS) and "Work after" in dom and "_tiles" in dom:
                break  # (the panel's title and its pictures: an evaluation may replace it between the two)
            assert all(p.poll() is None for p in procs), [finish_child(p, 10) for p in procs]
        assert all(n in numbers for n in NUMBERS), (numbers, dom[-3000:])
        written = sorted(str(f.relative_to(tmp_path)) for f in (tmp_path / "run").rglob("*") if "tb" not in f.parts)
        assert "Work after" in dom and "_tiles" in dom, (written[-40:], dom[-1500:])
        for attempt in range(3):  # the page draws once its worker has sorted the splats: give it longer each time
            shot = _screenshot(url, tmp_path / "profile", tmp_path / "run.png", 12000 * (attempt + 1))
            if _splats_drawn(shot, empty) > MIN_DRAWN:
                break
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        finished = [finish_child(p, 180) for p in procs]
    assert [f[0] for f in finished] == [EXIT_PREEMPTED] * 2, [f[2][-2000:] for f in finished]

    # The numbers are the run's: whole batches of images, a model, a loss and a PSNR of a run that learns.
    stopped_at = int(re.search(r"after (\d+) images", finished[0][2]).group(1))
    assert 2 <= numbers["images"] <= stopped_at and numbers["images"] % 2 == 0, (numbers, stopped_at)
    assert numbers["gaussians"] >= 1000 and 0.0 < numbers["loss"] < 1.0 and 5.0 < numbers["psnr"] < 60.0, numbers

    # Splats drawn: the 3D view differs from the same view without the model over much of its area.
    drawn = _splats_drawn(shot, empty)
    assert drawn > MIN_DRAWN, f"only {drawn:.1%} of the view changed with the model in it"
    assert len(np.unique(shot[_scene_pixels(shot)].reshape(-1, 3) // 16, axis=0)) > 20  # a picture, not a flat page
