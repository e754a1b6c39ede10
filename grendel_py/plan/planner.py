"""``grendel plan``: the run a config describes, predicted for W = 1, 2, ... ranks before it is paid for.

For each W the planner does what the run would do to the first ``images`` images of an epoch: shards the
model as ``dist.ownership`` says, draws batches as the run's sampler does, builds each batch's tile table
from the simulator's intersections and lets the run's tile balancer assign the tiles
(:mod:`grendel_py.simulate`); every rank's counts (:mod:`grendel_py.plan.counts`), averaged over the batches,
go through the cost model (:mod:`grendel_py.plan.model`) with a device's calibrated profile.

Larger models (``gaussians``), two ways (``grow``): ``density``, the counts that grow with the model (its
Gaussians, those seen, their intersections, the splats sent) are scaled by ``gaussians / len(model)``, as if
each added Gaussian looked like the model's average one; pixels, tiles and halo pixels do not change. That is
exact for a model that replicates the given one's density and sizes, and an overestimate of the
intersections for one that grew by splitting (smaller Gaussians touch fewer tiles). ``area``: the scene is
larger, not denser (more of it, each part seen by its own cameras, as
:class:`~grendel_py.plan.blocks.BlockScene` lays out): only the Gaussians a rank holds (its Adam, its
visibility tests) are scaled; what a batch's cameras see is the scene's.
"""

from __future__ import annotations

import numpy as np

from grendel_py.config import Config
from grendel_py.plan.counts import mean_counts, rank_counts
from grendel_py.plan.links import Fabric
from grendel_py.plan.model import Link, Prediction, predict
from grendel_py.plan.profile import Profile
from grendel_py.simulate import SimScene, batch_table
from grendel_py.train.sampler import CameraSampler
from partition.balancer import TileBalancer

GROWS = {
    "density": ("gaussians", "gaussian_cameras", "visible", "sh_terms", "listed_pairs", "pairs", "received",
                "bytes_sent", "bytes_received", "bytes_sent_across", "bytes_received_across"),
    "area": ("gaussians", "gaussian_cameras"),
}  # fmt: skip
"""The counts that grow with the model, each way it can grow (see the module docstring)."""


def batch_counts(
    scene: SimScene, cfg: Config, world: int, images: int, link: Link | Fabric | None, start: int = 0
) -> list[list[dict]]:
    """Every rank's counts in each batch of ``images`` images from image ``start`` of the run on (each at the SH
    degree the run renders it with: ``train.sh_degree_every``; batches drawn as ``dist.batch_sampling`` says)."""
    batch = cfg.train.batch_size
    n_cameras = len(scene.cameras)
    if batch > n_cameras:
        raise ValueError(f"train.batch_size {batch} is larger than the scene's {n_cameras} cameras")
    owner = scene.owners(world, cfg.dist.ownership)
    sampler = CameraSampler(n_cameras, batch, cfg.seed)
    if cfg.dist.batch_sampling == "owner-aware":
        sampler.set_affinity(scene.affinity(owner, world))
    node_size = link.ranks_per_node if isinstance(link, Fabric) else None
    if link is None:
        bandwidth = cfg.dist.link_gbps * 1e9 / 8
    else:  # the balancer trades bytes for balance at the slowest link's speed
        bandwidth = link.bytes_per_s if isinstance(link, Link) else link.across.bytes_per_s
    balancer = TileBalancer(cfg.dist.assignment, world, cfg.dist.tolerance, bandwidth)
    per_batch = []
    for i in range(max(1, images // batch)):
        cams = sampler.next_batch()
        table = batch_table(scene, cams, owner, world)
        plan = balancer.plan(table)
        sh_degree = min(cfg.model.sh_degree, (start + i * batch) // cfg.train.sh_degree_every)
        per_batch.append(rank_counts(scene, cams, owner, plan, sh_degree, node_size))
    return per_batch


def scaled(counts: list[dict], factor: float, grow: str = "density") -> list[dict]:
    """``counts`` of a model ``factor`` times as large, grown as ``grow`` says (module docstring)."""
    return [{k: v * factor if k in GROWS[grow] else v for k, v in c.items()} for c in counts]


def plan(
    scene: SimScene,
    cfg: Config,
    worlds: list[int],
    profile: Profile,
    link: Link | Fabric | None,
    images: int,
    gaussians: int | None = None,
    devices: int | None = None,
    grow: str = "density",
    start: int = 0,
) -> list[dict]:
    """One row per W: predicted seconds per iteration and per epoch (from every rank's counts averaged over the
    batches), the slowest rank's local work over the mean, bytes on the links per iteration, where the time
    goes, and the peak memory of the busiest rank in the heaviest batch. ``devices``: at most this many
    devices for the ranks to share (:func:`grendel_py.plan.model.predict`; default: one each). ``gaussians``
    and ``grow``: a larger model (module docstring); ``start``: the images planned begin there in the run."""
    factor = 1.0 if gaussians is None else gaussians / scene.gaussians
    iterations_per_epoch = int(np.ceil(len(scene.cameras) / cfg.train.batch_size))
    rows, one = [], None
    for w in worlds:
        per_batch = [scaled(b, factor, grow) for b in batch_counts(scene, cfg, w, images, link, start)]
        counts = mean_counts(per_batch)
        p: Prediction = predict(counts, profile, link if w > 1 else None, None if devices is None else min(w, devices))
        one = p.seconds if w == 1 else one
        every = (profile.peak_bytes(c, cfg.model.sh_degree) for b in per_batch for c in b)
        memory = max(every, key=lambda m: m["peak"])
        rows.append(
            {
                "world_size": w,
                "gaussians": int(round(scene.gaussians * factor)),
                "seconds_per_iteration": p.seconds,
                "seconds_per_epoch": p.seconds * iterations_per_epoch,
                "speedup": None if one is None else one / p.seconds,
                "balance": p.balance,
                "link_bytes_per_iteration": p.link_bytes,
                "peak_bytes_per_rank": memory,
                "fits": bool(profile.memory_bytes == 0 or memory["peak"] <= profile.memory_bytes),
                "segments": p.segments,
                "counts": counts,
            }
        )
    return rows


def summary(rows: list[dict]) -> dict:
    """The smallest W whose busiest rank's peak fits the device's memory (None: none of them), and the W with
    the least seconds per iteration: past it, adding ranks does not pay."""
    fitting = [r["world_size"] for r in rows if r["fits"]]
    return {
        "smallest_world_that_fits": min(fitting, default=None),
        "fastest_world": min(rows, key=lambda r: r["seconds_per_iteration"])["world_size"],
    }
