"""What one refresh of the training run's viewer costs at scale: a model of ``--gaussians`` (random, SH degree
3) split evenly over ``--world`` gloo ranks on this machine, a budget of ``--budget``; each rank selects and
packs its share (``select_for_view`` + ``view_splats``), the shares are gathered on rank 0 (one
``gather_object``), and rank 0 hands them to viser (``Viewer.show_model``), with a websocket client connected
(the protocol-speaking client of ``bench/viewer_overhead.py``) that receives the message.

    python bench/viewer_refresh.py --gaussians 1000000 --budget 1000000 --world 2 [--repeats 3]

Prints, per repeat, the seconds of each part on rank 0 (the slowest rank's select+pack) and the seconds until
the client has received the model. A run's slowdown from the viewer is about the refresh's seconds divided by
the training seconds of ``train.viewer_every`` images.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from grendel_py.model.gaussians import Gaussians
from grendel_py.parallel.runtime import DistContext
from grendel_py.view_splats import gather_view_splats, select_for_view, share_of_budget, view_splats


def _shard(rank: int, world: int, total: int) -> Gaussians:
    n = total // world + (rank < total % world)
    gen = torch.Generator().manual_seed(rank)
    return Gaussians(
        means=torch.randn(n, 3, generator=gen) * 5,
        log_scales=torch.randn(n, 3, generator=gen) - 4,
        quats=torch.randn(n, 4, generator=gen),
        opacity_logits=torch.randn(n, generator=gen),
        sh0=torch.randn(n, 1, 3, generator=gen),
        shN=torch.randn(n, 15, 3, generator=gen) * 0.1,
        ids=torch.arange(n) * world + rank,
    )


def _worker(rank: int, world: int, port: int, args, queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    ctx = DistContext(rank, world, rank, torch.device("cpu"), "gloo", "torchrun")
    shard = _shard(rank, world, args.gaussians)
    viewer = browser = None
    if rank == 0:
        from bench.viewer_overhead import Browser
        from grendel_py.viewer import Viewer

        viewer = Viewer(0, [], host="127.0.0.1")
        browser = Browser(viewer.port)
        browser.start()
        while viewer.clients == 0:
            time.sleep(0.05)
    for repeat in range(args.repeats):
        shard.means += 1e-3 * repeat  # a model that moved (viser sends nothing for an unchanged one)
        dist.barrier()
        tic = time.perf_counter()
        view_splats(select_for_view(shard, share_of_budget(args.budget, len(shard), args.gaussians)))
        packed = torch.tensor([time.perf_counter() - tic])
        dist.all_reduce(packed, op=dist.ReduceOp.MAX)
        dist.barrier()
        tic = time.perf_counter()
        splats = gather_view_splats(shard, args.gaussians, args.budget, ctx)
        refresh = time.perf_counter() - tic  # select + pack + gather, as the training loop does it
        if rank == 0:
            before = browser.received
            tic = time.perf_counter()
            viewer.show_model(splats)
            shown = time.perf_counter() - tic
            while browser.received - before < 16 * len(splats["centers"]):  # at least the centres arrived
                time.sleep(0.01)
            delivered = time.perf_counter() - tic
            queue.put(
                {
                    "world": world,
                    "gaussians": args.gaussians,
                    "budget": args.budget,
                    "shown": len(splats["centers"]),
                    "select_pack_s": float(packed),
                    "gather_view_splats_s": refresh,
                    "show_model_s": shown,
                    "delivered_s": delivered,
                    "received_mb": (browser.received - before) / 1e6,
                    "main_thread_s": refresh + shown,
                }
            )
    if rank == 0:
        browser.stop()
        viewer.close()
    dist.barrier()
    dist.destroy_process_group()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gaussians", type=int, default=1_000_000)
    ap.add_argument("--budget", type=int, default=1_000_000)
    ap.add_argument("--world", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--port", type=int, default=29561)
    args = ap.parse_args()
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(r, args.world, args.port, args, queue)) for r in range(args.world)]
    for p in procs:
        p.start()
    for _ in range(args.repeats):
        print(json.dumps(queue.get(timeout=1800)), flush=True)
    for p in procs:
        p.join()


if __name__ == "__main__":
    main()
