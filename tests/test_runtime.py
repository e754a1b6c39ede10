"""The launch context: launcher detection and a real 2-rank gloo job started torchrun-style."""

from __future__ import annotations

import torch
import torch.distributed as dist

from grendel_py.dist.runtime import DistContext, detect_launcher, init_distributed
from tests.dist_util import run_ranks


def test_detect_launcher() -> None:
    assert detect_launcher({}) == "single"
    assert detect_launcher({"RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "h", "MASTER_PORT": "1"}) == "torchrun"
    assert detect_launcher({"PMI_SIZE": "2", "PMI_RANK": "0"}) == "mpi"
    assert detect_launcher({"OMPI_COMM_WORLD_SIZE": "4"}) == "mpi"


def test_single_process() -> None:
    ctx = init_distributed(env={})
    assert (ctx.rank, ctx.world_size, ctx.backend, ctx.is_main, ctx.distributed) == (0, 1, "none", True, False)


def _all_reduce(ctx: DistContext) -> tuple:
    t = torch.tensor([float(ctx.rank + 1)])
    dist.all_reduce(t)
    return ctx.rank, ctx.world_size, ctx.backend, ctx.launcher, float(t)


def test_two_gloo_ranks() -> None:
    assert run_ranks(2, _all_reduce) == [(0, 2, "gloo", "torchrun", 3.0), (1, 2, "gloo", "torchrun", 3.0)]
