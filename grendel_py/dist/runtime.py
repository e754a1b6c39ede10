"""Who am I among how many: one :class:`DistContext` built from the launch environment and passed down.

Three launchers are recognised, in this order:

- torchrun (or any launcher that sets ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``; ``LOCAL_RANK``
  optional): torch.distributed reads them itself (``env://``).
- MPI (``mpiexec`` / ``mpirun`` / ``srun --mpi``, recognised by the variables MPICH, Open MPI, PMI and PMIx
  set): mpi4py gives rank and size, the local rank comes from a shared-memory sub-communicator, and rank 0
  binds a free port and broadcasts its address and port.
- Nothing: a single process (no process group is created).

The process group routes CUDA tensors to NCCL and CPU tensors to gloo when CUDA is available (gloo only
otherwise); each process uses the GPU of its local rank.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from grendel_py.errors import InputError

_REDUCE_OPS = {"sum": dist.ReduceOp.SUM, "min": dist.ReduceOp.MIN, "max": dist.ReduceOp.MAX}

_MPI_SIZE_VARS = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE", "MPI_LOCALNRANKS", "HYDRA_CONTROL_FD")


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
    """"torchrun", "mpi" or "single" from the environment variables ``env``."""
    if all(k in env for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")):
        return "torchrun"
    if any(k in env for k in _MPI_SIZE_VARS):
        return "mpi"
    return "single"


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
        rank, world, local, address = _mpi_rendezvous()
        device, backend = _device(local)
        dist.init_process_group(backend, init_method=address, rank=rank, world_size=world, timeout=timeout)
    return DistContext(rank, world, local, device, backend, launcher)


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
