"""Who am I among how many: one :class:`DistContext` built from the launch environment and passed down.

Four launchers are recognised (:func:`detect_launcher`, in this order):

- torchrun (or any launcher that sets ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``; ``LOCAL_RANK``
  optional): torch.distributed reads them itself (``env://``). torchrun started by ``srun`` is torchrun.
- SLURM: the tasks of a job step (``srun -n W python -m grendel_py train ...``), recognised by
  ``SLURM_STEP_ID`` with ``SLURM_PROCID``, ``SLURM_NTASKS`` and ``SLURM_LOCALID`` (the batch script's shell
  and salloc's have the last three but no ``SLURM_STEP_ID``: a process started there is a single process).
  Rank, size and local rank are those three; rank 0 listens on the first host of ``SLURM_STEP_NODELIST``
  (``MASTER_ADDR`` overrides it) at the port :func:`slurm_port` derives from the job and step ids
  (``MASTER_PORT`` overrides it). A step of one task is a single process.
- MPI (``mpiexec`` / ``mpirun``, recognised by the variables MPICH, Open MPI, PMI and PMIx set): mpi4py
  gives rank and size, the local rank comes from a shared-memory sub-communicator, and rank 0 binds a free
  port and broadcasts its address and port. ``srun --mpi=pmi2|pmix`` sets PMI/PMIx variables for its own
  tasks; where they agree with SLURM's rank and size the step is launched as a SLURM step (no mpi4py
  needed). mpiexec inside an allocation starts its ranks under srun-launched proxies, whose SLURM
  variables count proxies, not ranks: there the MPI variables disagree and MPI decides.
- Nothing: a single process (no process group is created).

The process group routes CUDA tensors to NCCL and CPU tensors to gloo when CUDA is available (gloo only
otherwise); each process uses the GPU of its local rank.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from grendel_py.errors import InputError

_REDUCE_OPS = {"sum": dist.ReduceOp.SUM, "min": dist.ReduceOp.MIN, "max": dist.ReduceOp.MAX}

_MPI_SIZE_VARS = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE", "MPI_LOCALNRANKS", "HYDRA_CONTROL_FD")
_SLURM_STEP_VARS = ("SLURM_JOB_ID", "SLURM_STEP_ID", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID")
# the MPI process managers' rank and size variables and the SLURM variable each equals in a task srun started
_MPI_AS_SLURM = {
    "OMPI_COMM_WORLD_RANK": "SLURM_PROCID", "OMPI_COMM_WORLD_SIZE": "SLURM_NTASKS",
    "PMI_RANK": "SLURM_PROCID", "PMI_SIZE": "SLURM_NTASKS", "PMIX_RANK": "SLURM_PROCID",
}  # fmt: skip
SLURM_PORT_BASE, SLURM_PORT_SPAN = 12000, 20000  # below Linux's ephemeral ports (32768-60999)


@dataclass(frozen=True)
class DistContext:
    """The process's place in the job. ``backend`` is "cpu:gloo,cuda:nccl" (GPUs), "gloo" or "none" (single process)."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str
    launcher: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def reduce(self, tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
        """The element-wise ``op`` ("sum", "min" or "max") of ``tensor`` over all ranks, the same on each (a
        new tensor; ``tensor`` itself for a single process)."""
        if not self.distributed:
            return tensor
        out = tensor.clone()
        dist.all_reduce(out, op=_REDUCE_OPS[op])
        return out


def single_process() -> DistContext:
    """The context of a process that works alone (no process group)."""
    device, _ = _device(0)
    return DistContext(0, 1, 0, device, "none", "single")


def detect_launcher(env: Mapping[str, str]) -> str:
    """"torchrun", "slurm", "mpi" or "single" from the environment variables ``env`` (order and reasons in
    the module docstring)."""
    if all(k in env for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")):
        return "torchrun"
    if _slurm_task(env):
        return "slurm" if int(env["SLURM_NTASKS"]) > 1 else "single"
    if any(k in env for k in _MPI_SIZE_VARS):
        return "mpi"
    return "single"


def _slurm_task(env: Mapping[str, str]) -> bool:
    """Whether this process is a task of a SLURM job step that srun started itself: the step variables are
    set and every MPI rank and size variable present agrees with them."""
    if not all(k in env for k in _SLURM_STEP_VARS):
        return False
    return all(env[mpi] == env[slurm] for mpi, slurm in _MPI_AS_SLURM.items() if mpi in env)


def first_host(nodelist: str) -> str:
    """The first host of a SLURM host list, as ``scontrol show hostnames LIST | head -n1`` prints it
    ("node[07-09,12],gpu1" -> "node07"), without needing scontrol where the task runs (containers)."""
    first = re.match(r"(?:[^,\[]|\[[^\]]*\])+", nodelist)
    if first is None:
        raise InputError(None, f"SLURM node list {nodelist!r}: no host in it")
    return re.sub(r"\[([^\],-]+)[^\]]*\]", r"\1", first.group(0))


def slurm_port(job_id: int, step_id: int) -> int:
    """The rendezvous port of a SLURM job step: ``12000 + (16 * job_id + step_id) mod 20000``, the same on
    every task, different for the steps of a job (up to 16 at once) and for jobs whose ids differ by less
    than 1250 (jobs sharing a node otherwise collide only by chance; set ``MASTER_PORT`` then)."""
    return SLURM_PORT_BASE + (16 * job_id + step_id) % SLURM_PORT_SPAN


def _device(local_rank: int) -> tuple[torch.device, str]:
    """This rank's GPU (by local rank) and a process group that routes CUDA tensors to NCCL and CPU tensors
    to gloo: the training loop still exchanges CPU tensors, which NCCL alone cannot carry."""
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
        return torch.device("cuda", torch.cuda.current_device()), "cpu:gloo,cuda:nccl"
    return torch.device("cpu"), "gloo"


def init_distributed(timeout_s: float = 600.0, env: Mapping[str, str] | None = None) -> DistContext:
    """Join the job this process was launched into and return its context.

    ``timeout_s`` bounds collective operations (a rank that dies makes the others fail after it).
    """
    env = os.environ if env is None else env
    launcher = detect_launcher(env)
    if launcher == "single":
        return single_process()
    timeout = timedelta(seconds=timeout_s)
    if launcher == "torchrun":
        rank, world, local = int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0))
        device, backend = _device(local)
        dist.init_process_group(backend, init_method="env://", rank=rank, world_size=world, timeout=timeout)
    else:
        rank, world, local, address = slurm_rendezvous(env) if launcher == "slurm" else _mpi_rendezvous()
        device, backend = _device(local)
        dist.init_process_group(backend, init_method=address, rank=rank, world_size=world, timeout=timeout)
    return DistContext(rank, world, local, device, backend, launcher)


def slurm_rendezvous(env: Mapping[str, str]) -> tuple[int, int, int, str]:
    """Rank, size, local rank and the ``tcp://host:port`` init address of a task of a SLURM job step."""
    nodes = env.get("SLURM_STEP_NODELIST") or env["SLURM_JOB_NODELIST"]
    host = env.get("MASTER_ADDR") or first_host(nodes)  # rank 0 runs on the step's first node
    port = env.get("MASTER_PORT") or slurm_port(int(env["SLURM_JOB_ID"]), int(env["SLURM_STEP_ID"]))
    return int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]), int(env["SLURM_LOCALID"]), f"tcp://{host}:{port}"


def _mpi_rendezvous() -> tuple[int, int, int, str]:
    """Rank, size, local rank and a ``tcp://host:port`` init address agreed through MPI."""
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    launched = next((os.environ[k] for k in ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE") if k in os.environ), None)
    if launched is not None and launched.isdigit() and int(launched) != comm.Get_size():
        raise InputError(None, f"the MPI launcher started {launched} processes but mpi4py sees {comm.Get_size()}: "
                         f"mpiexec and mpi4py come from different MPI implementations ({MPI.Get_library_version().splitlines()[0]})")  # fmt: skip
    local = comm.Split_type(MPI.COMM_TYPE_SHARED, key=comm.Get_rank())
    local_rank = local.Get_rank()
    local.Free()
    address = None
    if comm.Get_rank() == 0:
        host = os.environ.get("MASTER_ADDR") or socket.gethostname()  # a name other hosts resolve (not an address that may be loopback)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("", 0))
            port = s.getsockname()[1]
        address = f"tcp://{host}:{port}"
    address = comm.bcast(address, root=0)
    return comm.Get_rank(), comm.Get_size(), local_rank, address


def shutdown(ctx: DistContext) -> None:
    """Leave the process group (no-op for a single process)."""
    if ctx.backend != "none" and dist.is_initialized():
        dist.destroy_process_group()
