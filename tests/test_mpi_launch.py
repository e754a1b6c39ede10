"""``mpiexec -n 2 grendel train`` on the CPU: the MPI rendezvous of :mod:`grendel_py.parallel.runtime` gives the
model ``torchrun --nproc-per-node 2`` gives, byte for byte.

The checks:

- :func:`test_mpiexec_trains_the_torchrun_model` launches both jobs as subprocesses on a tiny scene.
- :func:`test_mpi_world_init_distributed` (rendezvous and an all-reduce) and
  :func:`test_mpi_world_training_step` (one distributed forward + backward equal to one process's) are meant
  for ``mpiexec -n 2 python -m pytest --with-mpi tests/test_mpi_launch.py -k mpi_world`` (pytest-mpi skips
  them without ``--with-mpi``).
- :func:`test_pytest_with_mpi_under_mpiexec` runs that very command, so a plain ``pytest`` (and CI) runs them.

The subprocess tests skip only when mpi4py or ``mpiexec`` is missing (``pip install -e .[mpi]`` provides both).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from grendel_py.parallel.runtime import detect_launcher, init_distributed, shutdown
from tests.dist_util import finish_child, free_port, start_child

REPO = Path(__file__).resolve().parents[1]
TIMEOUT_S = 180  # a whole subprocess job; collectives inside it time out after dist.timeout_s


def _mpiexec() -> str | None:
    """The mpiexec of this Python's environment (the MPI mpi4py is built for), else the first on PATH."""
    beside = Path(sys.executable).parent / "mpiexec"
    return str(beside) if beside.is_file() and os.access(beside, os.X_OK) else shutil.which("mpiexec")


MPIEXEC = _mpiexec()
needs_mpi = pytest.mark.skipif(
    importlib.util.find_spec("mpi4py") is None or MPIEXEC is None,
    reason="mpi4py or mpiexec missing: pip install -e '.[mpi]' (mpi4py + mpich)",
)
not_inside_a_job = pytest.mark.skipif(
    detect_launcher(os.environ) != "single", reason="starts its own 2-rank jobs: run pytest without mpiexec/torchrun"
)


def _run(cmd: list[str], cwd: Path) -> str:
    """Run ``cmd`` in its own process group (killed whole on timeout); return stdout+stderr, fail on exit != 0."""
    code, out, _ = finish_child(start_child(cmd, cwd, merge_output=True), TIMEOUT_S)
    assert code == 0, f"exit {code}: {' '.join(cmd)}\n{out[-4000:]}"
    return out


@pytest.fixture(scope="module")
def scene(object_scene_seed2: Path) -> Path:
    return object_scene_seed2


def _train_args(scene: Path, out: Path) -> list[str]:
    """``grendel train`` words for a few-second 2-rank run with densification and redistribution."""
    return [
        "-m",
        "grendel_py",
        "train",
        f"data.path={scene}",
        "data.downscale=4",
        f"train.out={out}",
        "train.images=20",
        "train.batch_size=2",
        "train.eval_every=0",
        "train.eval_renders=1",
        "train.sh_degree_every=10",
        "model.sh_degree=1",
        "densify.start_images=4",
        "densify.stop_images=16",
        "densify.every_images=6",
        "densify.reset_opacity_every=12",
        "dist.ownership=kd",
        "dist.rebalance_threshold=1.0",
        "dist.timeout_s=60",
        "dist.calibrate=false",
    ]


@needs_mpi
@not_inside_a_job
def test_mpiexec_trains_the_torchrun_model(scene: Path, tmp_path: Path) -> None:
    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "--master-addr",
        "127.0.0.1",
        "--master-port",
        str(free_port()),
    ]
    logs = {
        "torchrun": _run([*torchrun, *_train_args(scene, tmp_path / "torchrun")], tmp_path),
        "mpi": _run([MPIEXEC, "-n", "2", sys.executable, *_train_args(scene, tmp_path / "mpi")], tmp_path),
    }
    metrics = {}
    for name, log in logs.items():
        # rank 0 alone prints the summary: two singleton processes (a foreign mpiexec) would print it twice
        assert log.count("trained 20 images on 2 rank(s)") == 1, f"{name}:\n{log[-4000:]}"
        metrics[name] = json.loads((tmp_path / name / "metrics.json").read_text())
        assert metrics[name]["world_size"] == 2
    a, b = metrics["torchrun"], metrics["mpi"]
    assert a["num_gaussians"] == b["num_gaussians"] and a["test"] == b["test"]
    # the same job with the same ranks: the merged PLY (rank 0's rows, then rank 1's, each by global id) is
    # identical to the byte, not merely close
    assert (tmp_path / "mpi" / "model.ply").read_bytes() == (tmp_path / "torchrun" / "model.ply").read_bytes()


@pytest.mark.mpi(min_size=2)
def test_mpi_world_init_distributed() -> None:
    if detect_launcher(os.environ) != "mpi":
        pytest.skip("run under mpiexec: mpiexec -n 2 python -m pytest --with-mpi tests/test_mpi_launch.py -k mpi_world")
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    ctx = init_distributed(timeout_s=60)
    try:
        assert (ctx.rank, ctx.world_size, ctx.launcher) == (comm.rank, comm.size, "mpi")
        total = torch.tensor([float(ctx.rank + 1)], device=ctx.device)
        dist.all_reduce(total)
        assert float(total) == comm.size * (comm.size + 1) / 2
        hosts: dict[str, list[int]] = {}
        for host, local in comm.allgather((MPI.Get_processor_name(), ctx.local_rank)):
            hosts.setdefault(host, []).append(local)
        assert all(sorted(locals_) == list(range(len(locals_))) for locals_ in hosts.values())  # 0..k-1 per host
    finally:
        shutdown(ctx)


@pytest.mark.mpi(min_size=2)
def test_mpi_world_training_step() -> None:
    """One distributed forward + backward (projection, tile table, exchange, rasterize, halo, loss) over MPI-
    launched ranks gives the single process's loss, image and gradients (the check of test_dist_step)."""
    if detect_launcher(os.environ) != "mpi":
        pytest.skip("run under mpiexec: mpiexec -n 2 python -m pytest --with-mpi tests/test_mpi_launch.py -k mpi_world")
    from mpi4py import MPI

    from tests.test_dist_step import _check, _rank_job, _reference

    ctx = init_distributed(timeout_s=60)
    try:
        results = MPI.COMM_WORLD.allgather(_rank_job(ctx))
        _check(results, _reference())
        assert sum(r[5] for r in results) > 0  # splats crossed ranks
    finally:
        shutdown(ctx)


@needs_mpi
@not_inside_a_job
def test_pytest_with_mpi_under_mpiexec() -> None:
    cmd = [
        MPIEXEC,
        "-n",
        "2",
        sys.executable,
        "-m",
        "pytest",
        "--with-mpi",
        "tests/test_mpi_launch.py",
        "-k",
        "mpi_world",
        "-q",
        "-p",
        "no:cacheprovider",
    ]
    log = _run(cmd, REPO)
    assert log.count("2 passed") == 2, log[-4000:]  # each rank ran both tests, none skipped them
