"""Two jobs never train in the same run folder: while one holds the folder's lock, a second stops with one line
naming the folder and the holder (host, pid) and exit status 73, with or without ``--auto-resume``; the kernel
releases the lock of a killed job, so the requeued job goes on."""

from __future__ import annotations

import signal
import socket
import sys
import time
from pathlib import Path

import pytest

from grendel_py.errors import EXIT_BUSY
from grendel_py.parallel.runtime import single_process
from grendel_py.train.checkpoint import complete_checkpoints
from grendel_py.train.run_lock import LOCK, locked_run_dir
from tests.dist_util import finish_child, start_child

TIMEOUT_S = 180


def _train(scene: Path, run: Path, images: int, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "grendel_py",
        "train",
        f"data.path={scene}",
        "data.downscale=4",
        f"train.out={run}",
        f"train.images={images}",
        "train.batch_size=2",
        "train.eval_every=0",
        "train.eval_renders=1",
        "train.checkpoint_every=10",
        "dist.calibrate=false",
        *extra,
    ]


def test_a_second_job_on_a_folder_in_use_stops_naming_the_first(object_scene_seed2: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    first = start_child(_train(object_scene_seed2, run, 100_000), tmp_path)
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while not complete_checkpoints(run):  # a checkpoint that --auto-resume would otherwise continue from
            assert first.poll() is None and time.monotonic() < deadline, finish_child(first, 1)[2][-3000:]
            time.sleep(0.05)
        holder = f"host {socket.gethostname()}, pid {first.pid}"
        assert (run / LOCK).read_text().strip() == holder
        before = sorted(p.name for p in run.iterdir())
        for extra in (["--auto-resume"], []):
            code, out, err = finish_child(start_child(_train(object_scene_seed2, run, 100_000, *extra), tmp_path), 120)
            assert (code, out) == (EXIT_BUSY, ""), err[-3000:]
            assert err == (
                f"error: {run}: run folder is in use by another job ({holder}); wait for it to end or stop it, "
                "or choose another train.out\n"
            )
        resume = finish_child(
            start_child([*_train(object_scene_seed2, run, 100_000)[:4], "--resume", run], tmp_path), 120
        )
        assert resume[0] == EXIT_BUSY and holder in resume[2], resume[2][-3000:]
        assert first.poll() is None  # the first job trains on, its folder as it was
        assert sorted(p.name for p in run.iterdir()) == before
    finally:
        first.send_signal(signal.SIGKILL)  # no chance to release anything: the kernel does
        first.wait()
    newest = complete_checkpoints(run)[-1].images_seen
    code, _, err = finish_child(
        start_child(_train(object_scene_seed2, run, newest + 2, "--auto-resume"), tmp_path), TIMEOUT_S
    )
    assert code == 0, err[-3000:]
    assert (run / "model.ply").is_file()


def test_a_run_that_stops_before_writing_leaves_no_folder(tmp_path: Path) -> None:
    """The lock creates the run folder; when the run stops before writing anything, the folder goes too."""
    out = tmp_path / "new" / "run"
    with pytest.raises(RuntimeError), locked_run_dir(out, single_process()):
        assert (out / LOCK).is_file()
        raise RuntimeError("bad input found")
    assert not out.exists()
    out.mkdir()  # an existing folder stays, with the lock file
    with locked_run_dir(out, single_process()):
        pass
    assert [p.name for p in out.iterdir()] == [LOCK]
