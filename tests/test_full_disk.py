"""A disk that fills up while a run writes: every kind of write ends in one line naming the folder and what was
being written (exit status 74 from ``grendel train``), leaves nothing half-written, keeps the last complete
checkpoint, and the same command goes on once space is freed.

The disk is a real small file system: a tmpfs mounted in a user and mount namespace of the test's own
(``unshare``), where the test fills it (tests/full_disk.py runs there and reports as JSON).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from grendel_py.errors import EXIT_WRITE
from tests.full_disk import run_on_small_disk, unshare_problem

NO_SPACE = "No space left on device"


@pytest.fixture(scope="module")
def small_disks(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("small_disks")
    problem = unshare_problem(root / "probe")
    if problem:
        pytest.skip(problem)
    return root


def _report(small_disks: Path, name: str, size_mb: int, args: list[str]) -> dict:
    disk, report = small_disks / name / "disk", small_disks / name / "report.json"
    done = run_on_small_disk(disk, size_mb, [args[0], str(disk), str(report), *args[1:]], timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(report.read_text())


def test_every_kind_of_write_on_a_full_disk_names_its_folder_and_leaves_nothing(
    small_disks: Path, object_scene_seed2: Path
) -> None:
    got = _report(small_disks, "writes", 32, ["writes", str(object_scene_seed2)])
    disk = small_disks / "writes" / "disk"
    run = disk / "run"
    named = {  # what each line names: the folder (or file) and what was being written
        "checkpoint": rf"{run}/checkpoints/images_000000002: cannot write the checkpoint \(rank_00000\.pt\)",
        "ply": rf"{run}/model\.ply: cannot write the merged model",
        "spz": rf"{run}/model\.spz: cannot write the merged model",
        "splat": rf"{run}/model\.splat: cannot write the merged model",
        "ply-compressed": rf"{run}/model\.compressed\.ply: cannot write the merged model",
        "photo cache": rf"{disk}/cache: cannot write the photo cache \(\d{{6}}-\w+\.u8\)",
        "tensorboard": rf"{run}/tb: cannot write TensorBoard events",
        "renders": rf"{run}/renders: cannot write",
        "work pictures": rf"{run}/work/00000002/tiles\.png: cannot write",
        "metrics.json": rf"{run}/metrics\.json: cannot write",
        "config.yaml": rf"{run}/config\.yaml: cannot write",
    }
    for kind, start in named.items():
        result = got[kind]
        assert result["raised"] == "WriteError", (kind, result)
        assert re.match(rf"{start}: {NO_SPACE}", result["message"]), (kind, result["message"])
        assert "\n" not in result["message"]
        # nothing half-written: no temporary file is left (the event file keeps what it had; TensorBoard's
        # reader drops a torn last record)
        assert result["new files"] == [], (kind, result["new files"])
    assert got["checkpoints after"] == [got["first checkpoint"]]  # the last complete checkpoint is intact
    assert got["interrupted after"] == []  # the failed one's folder is gone
    assert got["first checkpoint reads"]


@pytest.mark.parametrize("world", [1, 2])
def test_a_run_that_fills_its_disk_stops_in_one_line_and_resumes_once_space_is_freed(
    small_disks: Path, object_scene_seed2: Path, world: int
) -> None:
    got = _report(small_disks, f"train{world}", 64, ["train", str(object_scene_seed2), str(world)])
    run = small_disks / f"train{world}" / "disk" / "run"
    assert [r["status"] for r in got["first"]["ranks"]] == [0] * world, got["first"]
    full = got["full"]["ranks"]
    assert [r["status"] for r in full] == [EXIT_WRITE] * world, full
    for rank, r in enumerate(full):
        lines = r["stderr"].strip().splitlines()
        assert len(lines) == 1, (rank, r["stderr"][-3000:])  # one line, no traceback
        assert re.fullmatch(
            rf"error: {run}/checkpoints/images_000000020: cannot write the checkpoint .*; the last complete "
            rf"checkpoint, {run}/checkpoints/images_000000010, is intact: free space, then run again with "
            r"--auto-resume",
            lines[0],
        ), lines[0]
    assert any(NO_SPACE in r["stderr"] for r in full)  # the rank that failed says why
    assert got["complete after"] == [10] and got["interrupted after"] == [] and got["hidden files after"] == []
    assert got["newest holds"] > 0
    assert [r["status"] for r in got["freed"]["ranks"]] == [0] * world, got["freed"]
    assert got["complete at the end"] == [20] and got["images at the end"] == 20
