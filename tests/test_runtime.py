"""The launch context: launcher detection and a real 2-rank gloo job started torchrun-style.

The SLURM environments below are what a local SLURM 22.05 cluster gave (tests/test_slurm.py runs real jobs)."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from grendel_py.parallel.runtime import (
    DistContext,
    detect_launcher,
    first_host,
    init_distributed,
    slurm_port,
    slurm_rendezvous,
)
from tests.dist_util import run_ranks

TORCHRUN = {"RANK": "1", "WORLD_SIZE": "4", "MASTER_ADDR": "h", "MASTER_PORT": "1", "LOCAL_RANK": "1"}
# the batch script's shell of `sbatch -n 2`: the job's task count and PROCID 0, but no step
BATCH_SHELL = {
    "SLURM_JOB_ID": "7",
    "SLURM_PROCID": "0",
    "SLURM_NTASKS": "2",
    "SLURM_LOCALID": "0",
    "SLURM_JOB_NODELIST": "vm",
}


def _srun_task(rank: int, tasks: int, **extra: str) -> dict[str, str]:
    """The SLURM variables of task ``rank`` of ``srun -n tasks`` (step 0 of job 7 on node "vm")."""
    return {
        **BATCH_SHELL,
        "SLURM_STEP_ID": "0",
        "SLURM_PROCID": str(rank),
        "SLURM_NTASKS": str(tasks),
        "SLURM_LOCALID": str(rank),
        "SLURM_STEP_NODELIST": "vm",
        **extra,
    }


def test_detect_launcher() -> None:
    assert detect_launcher({}) == "single"
    assert detect_launcher({"RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "h", "MASTER_PORT": "1"}) == "torchrun"
    assert detect_launcher({"PMI_SIZE": "2", "PMI_RANK": "0"}) == "mpi"
    assert detect_launcher({"OMPI_COMM_WORLD_SIZE": "4"}) == "mpi"


@pytest.mark.parametrize(
    "env, launcher",
    [
        (BATCH_SHELL, "single"),  # `python -m grendel_py train` in the batch script: not the job's rank 0 of 2
        (_srun_task(1, 2), "slurm"),
        (_srun_task(0, 1), "single"),  # a step of one task
        ({**_srun_task(1, 2), **TORCHRUN}, "torchrun"),  # torchrun started by srun: its workers
        (_srun_task(1, 2, PMI_RANK="1", PMI_SIZE="2", PMI_FD="13"), "slurm"),  # srun --mpi=pmi2: its own tasks
        (_srun_task(1, 2, PMIX_RANK="1"), "slurm"),  # srun --mpi=pmix
        # mpiexec -n 2 in the batch script: Hydra's proxy is a one-task srun step, the ranks inherit its variables
        (_srun_task(0, 1, PMI_RANK="1", PMI_SIZE="2", MPI_LOCALNRANKS="2"), "mpi"),
        (_srun_task(1, 2, OMPI_COMM_WORLD_RANK="3", OMPI_COMM_WORLD_SIZE="4"), "mpi"),  # mpirun: 2 ranks per orted
        ({**BATCH_SHELL, "PMI_RANK": "1", "PMI_SIZE": "2"}, "mpi"),
    ],
)
def test_detect_launcher_under_slurm(env: dict[str, str], launcher: str) -> None:
    assert detect_launcher(env) == launcher


@pytest.mark.parametrize(
    "nodelist, first",
    [
        ("vm", "vm"),
        ("node[07-09,12],gpu1", "node07"),
        ("n1,n2", "n1"),
        ("x-[009-010]", "x-009"),
        ("a[1-2]b[3-4]", "a1b3"),
    ],
)
def test_first_host(nodelist: str, first: str) -> None:
    assert first_host(nodelist) == first  # what `scontrol show hostnames LIST | head -n1` printed


def test_slurm_rendezvous() -> None:
    assert slurm_rendezvous(_srun_task(1, 2)) == (1, 2, 1, f"tcp://vm:{slurm_port(7, 0)}")
    nodes = {"SLURM_STEP_NODELIST": "gpu[4-5]", "SLURM_JOB_NODELIST": "gpu[1-5]", "SLURM_LOCALID": "0"}
    assert slurm_rendezvous(_srun_task(3, 4, **nodes))[2:] == (0, f"tcp://gpu4:{slurm_port(7, 0)}")
    overridden = _srun_task(0, 2, MASTER_ADDR="10.0.0.1", MASTER_PORT="2222")
    assert slurm_rendezvous(overridden)[3] == "tcp://10.0.0.1:2222"


def test_slurm_port() -> None:
    ports = {slurm_port(job, step) for job in range(1000, 2250) for step in range(16)}
    assert len(ports) == 1250 * 16 and min(ports) >= 12000 and max(ports) < 32768  # no ephemeral ports
    assert slurm_port(1000, 0) == slurm_port(2250, 0)  # ids 1250 apart share a port


def test_single_process() -> None:
    ctx = init_distributed(env={})
    assert (ctx.rank, ctx.world_size, ctx.backend, ctx.is_main, ctx.distributed) == (0, 1, "none", True, False)


def _all_reduce(ctx: DistContext) -> tuple:
    t = torch.tensor([float(ctx.rank + 1)])
    dist.all_reduce(t)
    return ctx.rank, ctx.world_size, ctx.backend, ctx.launcher, float(t)


def test_two_gloo_ranks() -> None:
    assert run_ranks(2, _all_reduce) == [(0, 2, "gloo", "torchrun", 3.0), (1, 2, "gloo", "torchrun", 3.0)]
