"""What training changes and a checkpoint keeps: this rank's shard with its Adam state, densification's
statistics, the exposures, the camera order, the next free Gaussian id and the images seen; made from the
scene's initial model or loaded from a checkpoint, on any number of ranks."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from grendel_py.config import Config
from grendel_py.data.dataset import Scene
from grendel_py.errors import InputError
from grendel_py.model.densify import Strategy, densify_strategy
from grendel_py.model.exposure import Exposures
from grendel_py.model.gaussians import Gaussians
from grendel_py.model.initialize import initial_gaussians
from grendel_py.model.optim import GaussianOptimizer
from grendel_py.parallel.ids import IdAllocator
from grendel_py.parallel.redistribute import redistribute
from grendel_py.parallel.runtime import DistContext
from grendel_py.train.checkpoint import MANIFEST, Manifest, load_replicated, load_shards, save_checkpoint
from grendel_py.train.sampler import CameraSampler


@dataclass
class TrainingState:
    """This rank's training state: the ``optimizer`` over its shard, ``densify`` (the strategy and its
    statistics), ``exposures`` (None without ``optim.exposure_lr``), the camera ``sampler``, the id allocator
    ``allocate_ids`` and the images ``seen``."""

    optimizer: GaussianOptimizer
    densify: Strategy
    exposures: Exposures | None
    sampler: CameraSampler
    allocate_ids: IdAllocator
    seen: int

    @property
    def shard(self) -> Gaussians:
        """This rank's Gaussians (the optimizer's parameters)."""
        return self.optimizer.gaussians

    def save(self, out: Path, keep: int, ctx: DistContext) -> Manifest:
        """A sharded checkpoint of this state in the run folder ``out`` (every rank), keeping the ``keep`` newest."""
        replicated = {} if self.exposures is None else {"exposures": self.exposures.state_dict()}
        return save_checkpoint(
            out,
            self.seen,
            self.optimizer,
            self.densify,
            self.sampler.state_dict(),
            self.allocate_ids.next_id,
            keep,
            ctx,
            replicated,
        )


def initial_state(cfg: Config, scene: Scene, resume: Manifest | None, ctx: DistContext) -> TrainingState:
    """The state a run starts from: the initial Gaussians of the scene, or the checkpoint ``resume`` (on any
    number of ranks; exposures start at the identity when it has none), split into spatial shards."""
    densify = densify_strategy(cfg.densify, scene.extent, cfg.seed, ctx.reduce)
    exposures = (
        Exposures(len(scene.train_cameras), cfg.optim.exposure_lr, ctx.device) if cfg.optim.exposure_lr > 0 else None
    )
    sampler = CameraSampler(len(scene.train_cameras), cfg.train.batch_size, cfg.seed)
    if resume is None:
        model = initial_gaussians(cfg.model, scene.points, scene.cameras, scene.extent, cfg.seed)
        if len(model) < ctx.world_size:
            raise InputError(
                scene.source,
                f"the initial model has {len(model)} Gaussians, fewer than the {ctx.world_size} ranks: "
                "use fewer ranks, or more points (model.init=random model.random_points=N)",
            )
        # redistributed below
        shard = model.select(torch.arange(len(model)) % ctx.world_size == ctx.rank).to(ctx.device)
        allocate_ids, seen = IdAllocator(int(model.ids.max()) + 1, ctx), 0
        del model
    else:
        where = resume.folder / MANIFEST
        if resume.sh_degree != cfg.model.sh_degree:
            raise InputError(where, f"checkpoint has SH degree {resume.sh_degree}, the config {cfg.model.sh_degree}")
        if sum(resume.shard_sizes) < ctx.world_size:
            raise InputError(
                where, f"checkpoint holds {sum(resume.shard_sizes)} Gaussians, fewer than the {ctx.world_size} ranks"
            )
        if any(i >= len(scene.train_cameras) for i in resume.sampler["order"]):
            raise InputError(where, "checkpoint was made on a scene with more training cameras than this one")
        loaded = load_shards(resume, ctx)
        shard = Gaussians(**loaded["optimizer"]["params"], ids=loaded["optimizer"]["ids"]).to(ctx.device)
        sampler.load_state_dict(resume.sampler)
        allocate_ids, seen = IdAllocator(resume.next_id, ctx), resume.images_seen
    optimizer = GaussianOptimizer(shard, cfg.optim, scene.extent, cfg.train.batch_size)
    if resume is not None:
        optimizer.load_state_dict(loaded["optimizer"])  # onto the shard's device
        densify.load_state_dict({k: v.to(ctx.device) for k, v in loaded["densify"].items()})
        saved = load_replicated(resume).get("exposures")
        if exposures is not None and saved is not None:
            exposures.load_state_dict(saved)
    if resume is None or resume.world_size != ctx.world_size:
        redistribute(optimizer, densify, cfg.dist.ownership, ctx)
    return TrainingState(optimizer, densify, exposures, sampler, allocate_ids, seen)
