"""Run a function on W gloo ranks in separate processes, torchrun-style, and collect what each returns; start
and finish child commands (``grendel``, torchrun, mpiexec) in a clean environment."""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import traceback
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

REPO = Path(__file__).resolve().parents[1]
_LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
# an enclosing job's process-manager variables (SLURM_ too: Hydra would launch through srun); MPIR_CVAR_* settings stay
_MPI_PREFIXES = ("PMI_", "PMIX_", "OMPI_", "HYDRA_", "MPI_LOCAL", "SLURM_")


def child_env(**extra: str) -> dict[str, str]:
    """This environment for a child job: CPU only, one thread per rank, no launcher variables inherited,
    the repository importable; plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in _LAUNCH_VARS and not k.startswith(_MPI_PREFIXES)}
    path = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.update(CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1", PYTHONPATH=path, **extra)
    return env


def start_child(
    cmd: list, cwd: Path, env: dict[str, str] | None = None, merge_output: bool = False, preexec_fn=None
) -> subprocess.Popen:
    """Start ``cmd`` in ``child_env(**env)``, in its own session (so that a timeout kills its whole process
    tree), stdout and stderr captured as text (stderr into stdout with ``merge_output``)."""
    return subprocess.Popen(
        [str(c) for c in cmd],
        cwd=cwd,
        env=child_env(**(env or {})),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT if merge_output else subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=preexec_fn,
    )


def finish_child(proc: subprocess.Popen, timeout: float) -> tuple[int, str, str]:
    """Exit status, stdout and stderr ("" when merged) of ``proc``; past ``timeout`` seconds its process group
    is killed and the test fails with the end of its output."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"timed out after {timeout:.0f} s: {' '.join(map(str, proc.args))}\n{(err or out)[-4000:]}")
    return proc.returncode, out, err or ""


def launch_env(rank: int, world: int, port: str) -> dict[str, str]:
    """The torchrun variables of ``rank`` of ``world`` ranks meeting at 127.0.0.1:``port`` (none for one rank)."""
    if world == 1:
        return {}
    return dict(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=port)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, fn, args, queue) -> None:
    os.environ.update(
        RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    os.environ["CUDA_VISIBLE_DEVICES"] = ""  # gloo on CPU even on a GPU machine
    torch.set_num_threads(1)
    from grendel_py.parallel.runtime import init_distributed, shutdown

    ctx = init_distributed(timeout_s=60)
    try:
        buffer = io.BytesIO()  # tensors travel as bytes: shared-memory handles die with this process
        torch.save(fn(ctx, *args), buffer)
        queue.put((rank, buffer.getvalue(), None))
    except BaseException:  # reported to the parent, which fails the test
        queue.put((rank, None, traceback.format_exc()))
    finally:
        shutdown(ctx)


def run_ranks(world: int, fn, *args, timeout: float = 120.0) -> list:
    """``fn(ctx, *args)`` on ``world`` ranks; returns the results ordered by rank (raises on any failure)."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_worker, args=(r, world, port, fn, args, queue)) for r in range(world)]
    for p in procs:
        p.start()
    results = {}
    try:
        for _ in range(world):
            rank, value, error = queue.get(timeout=timeout)
            if error is not None:
                raise AssertionError(f"rank {rank} failed:\n{error}")
            results[rank] = torch.load(io.BytesIO(value), weights_only=False)
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
    return [results[r] for r in range(world)]
