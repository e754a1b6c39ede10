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

Devices (:func:`_device`): with ``device`` "auto" (the default) or "cuda" each process uses the GPU of its
local rank, and the process group routes CUDA tensors to NCCL and CPU tensors (metadata, statistics) to
gloo; with "cpu", or "auto" without CUDA, gloo alone. Rank r of a node takes GPU ``r mod G`` of the
G it sees: all of the node's GPUs (torchrun), or only its own (``srun --gpus-per-task=1`` and other per-rank
bindings show each rank one GPU). After joining, the ranks compare their GPUs' UUIDs: two ranks on one GPU
are refused (NCCL cannot run them and they would halve each other's speed) unless ``share_gpus`` is set,
which makes the ranks share GPUs over gloo alone, for testing the device path with one GPU, not for speed.
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
    "OMPI_COMM_WORLD_RANK": "SLURM_PROCID",
    "OMPI_COMM_WORLD_SIZE": "SLURM_NTASKS",
    "PMI_RANK": "SLURM_PROCID",
    "PMI_SIZE": "SLURM_NTASKS",
    "PMIX_RANK": "SLURM_PROCID",
}
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


def single_process(device: str = "auto") -> DistContext:
    """The context of a process that works alone (no process group), on ``device`` ("auto", "cpu", "cuda")."""
    return DistContext(0, 1, 0, _device(0, device, False)[0], "none", "single")


def detect_launcher(env: Mapping[str, str]) -> str:
    """ "torchrun", "slurm", "mpi" or "single" from the environment variables ``env`` (order and reasons in
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


def _device(local_rank: int, want: str, share_gpus: bool) -> tuple[torch.device, str]:
    """This rank's device and the process group's backend (module docstring); ``want`` is "auto", "cpu" or
    "cuda". Makes the GPU the current one, so that kernels and NCCL use it."""
    if want == "cpu" or (want == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu"), "gloo"
    if not torch.cuda.is_available():
        raise InputError(
            None,
            f"train.device=cuda but torch {torch.__version__} sees no CUDA GPU "
            f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}): use train.device=auto or cpu",
        )
    n = torch.cuda.device_count()
    if local_rank >= n > 1 and not share_gpus:  # several GPUs visible, but fewer than the ranks of the node
        raise InputError(None, _too_many_ranks(f"local rank {local_rank} has no GPU of its own: this process sees {n}"))
    torch.cuda.set_device(local_rank % n)
    return torch.device("cuda", local_rank % n), ("gloo" if share_gpus else "cpu:gloo,cuda:nccl")


def _too_many_ranks(what: str) -> str:
    return (
        f"{what}; start at most one rank per GPU (torchrun --nproc-per-node G, srun --gpus-per-task=1), "
        "or set dist.share_gpus=true to let ranks share GPUs over gloo"
    )


def shared_gpus(gpus: list[tuple[str, str]]) -> list[tuple[int, int, str, str]]:
    """(first rank, other rank, host, GPU UUID) for each rank whose (host, UUID) in ``gpus`` (by rank) an
    earlier rank already uses."""
    first: dict[tuple[str, str], int] = {}
    return [(first[g], r, *g) for r, g in enumerate(gpus) if first.setdefault(g, r) != r]


def _check_one_rank_per_gpu(ctx: DistContext, share_gpus: bool) -> None:
    """Refuse (on every rank, before any NCCL operation) ranks that ended up on the same GPU."""
    gpus: list = [None] * ctx.world_size
    dist.all_gather_object(gpus, (socket.gethostname(), str(torch.cuda.get_device_properties(ctx.device).uuid)))
    clashes = shared_gpus(gpus)
    if clashes and not share_gpus:
        a, b, host, uuid = clashes[0]
        dist.destroy_process_group()
        raise InputError(None, _too_many_ranks(f"ranks {a} and {b} both use GPU {uuid} on {host}"))


def init_distributed(
    timeout_s: float = 600.0, env: Mapping[str, str] | None = None, device: str = "auto", share_gpus: bool = False
) -> DistContext:
    """Join the job this process was launched into and return its context.

    ``timeout_s`` bounds collective operations (a rank that dies makes the others fail after it); ``device``
    ("auto", "cpu", "cuda") and ``share_gpus`` choose the rank's device (module docstring).
    """
    env = os.environ if env is None else env
    launcher = detect_launcher(env)
    if launcher == "single":
        return single_process(device)
    timeout = timedelta(seconds=timeout_s)
    if launcher == "torchrun":
        rank, world, local = int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0))
        address = "env://"
    else:
        rank, world, local, address = slurm_rendezvous(env) if launcher == "slurm" else _mpi_rendezvous()
    dev, backend = _device(local, device, share_gpus)
    dist.init_process_group(backend, init_method=address, rank=rank, world_size=world, timeout=timeout)
    ctx = DistContext(rank, world, local, dev, backend, launcher)
    if dev.type == "cuda":
        _check_one_rank_per_gpu(ctx, share_gpus)  # over gloo: object collectives carry CPU payloads
        dist.all_reduce(torch.zeros(1, device=dev))  # NCCL's communicator starts now, not in the first step
    return ctx


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
        raise InputError(
            None,
            f"the MPI launcher started {launched} processes but mpi4py sees {comm.Get_size()}: "
            f"mpiexec and mpi4py come from different MPI implementations ({MPI.Get_library_version().splitlines()[0]})",
        )
    local = comm.Split_type(MPI.COMM_TYPE_SHARED, key=comm.Get_rank())
    local_rank = local.Get_rank()
    local.Free()
    address = None
    if comm.Get_rank() == 0:
        # a name other hosts resolve (not an address that may be loopback)
        host = os.environ.get("MASTER_ADDR") or socket.gethostname()
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
