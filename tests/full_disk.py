"""Runs inside a mount namespace where ``DISK`` is a small tmpfs (tests/test_full_disk.py starts it with
:func:`run_on_small_disk`): fills the disk, makes each kind of write of a run fail on it, and writes what
happened as JSON to ``REPORT`` (outside the tmpfs, which vanishes with the namespace).

    python -m tests.full_disk writes DISK REPORT SCENE
    python -m tests.full_disk train DISK REPORT SCENE WORLD
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def unshare_problem(folder: Path) -> str | None:
    """Why a small tmpfs cannot be mounted in a mount namespace here (None when it can): the tests' skip reason."""
    if shutil.which("unshare") is None:
        return "needs root or user namespaces: no unshare (util-linux) on PATH to mount a small tmpfs"
    folder.mkdir(parents=True, exist_ok=True)
    probe = subprocess.run(
        ["unshare", "--user", "--map-root-user", "--mount", "mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", folder],
        capture_output=True,
        text=True,
    )
    if probe.returncode:
        return f"needs root or user namespaces to mount a small tmpfs: {probe.stderr.strip()}"
    return None


def run_on_small_disk(disk: Path, size_mb: int, args: list[str], timeout: float) -> subprocess.CompletedProcess:
    """``python -m tests.full_disk ARGS`` in a new user and mount namespace with a ``size_mb`` MB tmpfs at
    ``disk`` (the mount ends with the namespace)."""
    disk.mkdir(parents=True, exist_ok=True)
    script = 'mount -t tmpfs -o "size=$1m" tmpfs "$2" && shift 2 && exec "$@"'
    command = ["sh", "-c", script, "sh", str(size_mb), str(disk), sys.executable, "-m", "tests.full_disk", *args]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    return subprocess.run(
        ["unshare", "--user", "--map-root-user", "--mount", *command],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        env={**env, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"},
    )


def fill(disk: Path, leave: int = 0) -> Path:
    """A file on ``disk`` that takes all its free space but ``leave`` bytes (rounded to pages)."""
    filler = disk / "filler"
    with open(filler, "wb") as f:
        want = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize - leave
        chunk = bytes(1 << 16)
        while want > 0:
            try:
                want -= f.write(chunk[: min(len(chunk), want)])
                f.flush()
            except OSError:  # full
                break
    return filler


def files(root: Path) -> set[str]:
    """The files under ``root`` but the filler (folders a failed write created stay, empty)."""
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and p.name != "filler"}


def writes(disk: Path, report: Path, scene_path: str) -> None:
    """Each kind of write of a run on a full disk: what it raised and what it left."""
    import torch
    from PIL import Image

    from grendel_py.config import load_config, save_config
    from grendel_py.data.dataset import scene_from_config
    from grendel_py.data.photo_cache import PhotoCache
    from grendel_py.fileio import atomic_open
    from grendel_py.model.splat_formats import FILE_NAMES
    from grendel_py.outputs import save_png, staged_dir
    from grendel_py.parallel.export import write_merged
    from grendel_py.parallel.runtime import single_process
    from grendel_py.pictures import save_picture
    from grendel_py.train.checkpoint import complete_checkpoints, interrupted_checkpoints, load_shards
    from grendel_py.train.event_file import EventFile
    from grendel_py.train.state import initial_state

    run = disk / "run"
    cfg = load_config(None, [f"data.path={scene_path}", "data.downscale=4", f"train.out={run}", "train.images=10"])
    scene = scene_from_config(cfg.data)
    ctx = single_process()
    state = initial_state(cfg, scene, None, ctx)
    first = state.save(run, 2, ctx)  # a complete checkpoint while there is room
    cache = PhotoCache(disk / "cache", scene)
    events = EventFile(run / "tb", 1)
    state.seen += 2

    def tensorboard() -> None:  # more than the slack of the file's last page
        for step in range(500):
            events.scalar("train/loss", 0.5, step)
        events.flush()

    def renders() -> None:
        with staged_dir(run / "renders", replace=True) as folder:
            save_png(torch.rand(64, 64, 3), folder / "test_000.png")

    def metrics() -> None:
        with atomic_open(run / "metrics.json", "w") as f:
            json.dump({"psnr": [1.0] * 1000}, f)

    kinds = {
        "checkpoint": lambda: state.save(run, 2, ctx),
        **{
            fmt: (lambda fmt=fmt: write_merged(run / FILE_NAMES[fmt], state.shard, ctx, fmt))
            for fmt in ("ply", "spz", "splat", "ply-compressed")
        },
        "photo cache": lambda: cache.photo(scene.train_cameras[0]),
        "tensorboard": tensorboard,
        "renders": renders,
        "work pictures": lambda: save_picture(Image.new("RGB", (64, 64)), run / "work" / "00000002" / "tiles.png"),
        "metrics.json": metrics,
        "config.yaml": lambda: save_config(cfg, run / "config.yaml"),
    }
    results = {}
    for kind, write in kinds.items():
        before = files(disk)
        filler = fill(disk)
        try:
            write()
            results[kind] = {"raised": None}
        except Exception as e:
            results[kind] = {"raised": type(e).__name__, "message": str(e)}
        filler.unlink()
        results[kind]["new files"] = sorted(files(disk) - before)
    found = complete_checkpoints(run)
    results["checkpoints after"] = [str(m.folder) for m in found]
    results["first checkpoint"] = str(first)
    results["interrupted after"] = [p.name for p in interrupted_checkpoints(run)]
    results["first checkpoint reads"] = len(load_shards(found[-1], ctx)["optimizer"]["ids"]) == len(state.shard)
    report.write_text(json.dumps(results, indent=1))


def _train(args: list[str], world: int, timeout: float = 300) -> dict:
    """``grendel train ARGS`` on ``world`` rank processes (gloo); every rank's exit status and stderr."""
    from tests.dist_util import finish_child, free_port, launch_env, start_child

    port = str(free_port())
    command = [sys.executable, "-m", "grendel_py", "train", *args]
    procs = [start_child(command, REPO, launch_env(rank, world, port)) for rank in range(world)]
    deadline = time.monotonic() + timeout
    try:
        results = []
        for p in procs:
            code, _, err = finish_child(p, max(1.0, deadline - time.monotonic()))
            results.append({"status": code, "stderr": err})
        return {"ranks": results}
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()


def train(disk: Path, report: Path, scene_path: str, world: int) -> None:
    """A run whose disk fills up before its second checkpoint, then the same command once space is freed."""
    from grendel_py.parallel.runtime import single_process
    from grendel_py.train.checkpoint import checkpoint_dir, complete_checkpoints, interrupted_checkpoints, load_shards

    run = disk / "run"

    def args(images: int) -> list[str]:
        return [
            f"data.path={scene_path}",
            "data.downscale=4",
            f"data.cache_dir={disk.parent / 'photos'}",  # off the small disk
            f"train.out={run}",
            f"train.images={images}",
            "train.batch_size=2",
            "train.eval_every=0",
            "train.eval_renders=1",
            "train.log_every=2",
            "train.checkpoint_every=10",
            "train.keep_checkpoints=1",
            "densify.start_images=100",
            "dist.calibrate=false",
            "dist.timeout_s=60",
            "--auto-resume",
        ]

    results = {"first": _train(args(10), world)}
    checkpoint_bytes = sum(f.stat().st_size for f in checkpoint_dir(run, 10).iterdir())
    filler = fill(disk, leave=checkpoint_bytes // 2)
    results["checkpoint bytes"] = checkpoint_bytes
    results["full"] = _train(args(20), world)
    found = complete_checkpoints(run)
    results["complete after"] = [m.images_seen for m in found]
    results["interrupted after"] = [p.name for p in interrupted_checkpoints(run)]
    results["hidden files after"] = sorted(p.name for p in run.rglob(".*") if p.name != ".lock")
    results["newest holds"] = len(load_shards(found[-1], single_process())["optimizer"]["ids"])
    filler.unlink()
    results["freed"] = _train(args(20), world)
    results["complete at the end"] = [m.images_seen for m in complete_checkpoints(run)]
    results["images at the end"] = json.loads((run / "metrics.json").read_text())["images"]
    report.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    case, disk, report, *rest = sys.argv[1:]
    if case == "writes":
        writes(Path(disk), Path(report), *rest)
    else:
        train(Path(disk), Path(report), rest[0], int(rest[1]))
