"""Sharded checkpoints that a run can resume from, on the same number of ranks or on another.

A checkpoint is the folder ``RUN/checkpoints/images_{seen:09d}/`` with one ``rank_{r:05d}.pt`` per rank (that
rank's parameters, ids, Adam state and densification statistics) and ``manifest.json`` (world size, images
seen, shard sizes, the camera sampler's state, the next free Gaussian id, the SH degree). Each rank writes
its file atomically; rank 0 writes the manifest last, after every rank has finished, so a folder without a
manifest is an interrupted checkpoint and is ignored. Rank 0 then deletes all but the newest ``keep``. A write
that fails on any rank (no space left, say) fails the checkpoint on every rank: rank 0 removes its folder,
the older checkpoints stay as they were, and every rank raises :class:`~grendel_py.errors.WriteError`.

Resuming on the same world size loads each rank's own file: the run continues exactly as if it had not
stopped. On another world size rank r loads the files r, r + W, r + 2W, ... and the caller redistributes
(:func:`grendel_py.parallel.redistribute.redistribute`), so the Adam state travels with its Gaussians.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from grendel_py.errors import InputError, WriteError, on_every_rank
from grendel_py.fileio import atomic_open
from grendel_py.model.densify import Strategy
from grendel_py.model.gaussians import TRAINABLE, num_sh_rest
from grendel_py.model.optim import GaussianOptimizer
from grendel_py.parallel.runtime import DistContext

FORMAT = 1
MANIFEST = "manifest.json"
REPLICATED = "replicated.pt"
_PREFIX = "images_"


@dataclass(frozen=True)
class Manifest:
    """What ``manifest.json`` records about a complete checkpoint in ``folder``."""

    folder: Path
    world_size: int
    images_seen: int
    shard_sizes: list[int]
    sampler: dict
    next_id: int
    sh_degree: int

    def shard_file(self, rank: int) -> Path:
        return self.folder / f"rank_{rank:05d}.pt"


def checkpoint_dir(run_dir: Path, images_seen: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"{_PREFIX}{images_seen:09d}"


def save_checkpoint(
    run_dir: Path,
    images_seen: int,
    optimizer: GaussianOptimizer,
    densify: Strategy,
    sampler_state: dict,
    next_id: int,
    keep: int,
    ctx: DistContext,
    replicated: dict[str, Any] | None = None,
) -> Path:
    """Write this rank's shard and (rank 0) the manifest of checkpoint ``images_seen``; collective. Keeps the
    newest ``keep`` complete checkpoints. Returns the checkpoint folder. ``replicated``: state every rank holds
    the same copy of (the exposures), written once by rank 0 (``replicated.pt``, :func:`load_replicated`)."""
    folder = checkpoint_dir(run_dir, images_seen)
    state = {
        "format": FORMAT,
        "rank": ctx.rank,
        "world_size": ctx.world_size,
        "images_seen": images_seen,
        "optimizer": optimizer.state_dict(torch.device("cpu")),
        "densify": densify.state_dict(torch.device("cpu")),
    }
    failed = _written(lambda: _save(state, folder / f"rank_{ctx.rank:05d}.pt"))
    sizes = [0] * ctx.world_size
    sizes[ctx.rank] = len(optimizer.gaussians)
    flags = [0] * ctx.world_size
    flags[ctx.rank] = int(failed is not None)
    summed = ctx.reduce(torch.tensor(sizes + flags), "sum").tolist()  # collective: every rank has written its file
    sizes, flags = summed[: ctx.world_size], summed[ctx.world_size :]
    _give_up_if_failed(folder, failed, flags, ctx)
    if ctx.is_main:
        manifest = {
            "format": FORMAT,
            "world_size": ctx.world_size,
            "images_seen": images_seen,
            "shard_sizes": sizes,
            "sampler": sampler_state,
            "next_id": next_id,
            "sh_degree": optimizer.gaussians.sh_degree,
        }
        failed = _written(lambda: _seal(folder, manifest, replicated))
    flags = [int(failed is not None)] + [0] * (ctx.world_size - 1)
    if ctx.distributed:  # also the barrier: the manifest exists before anyone goes on
        flags = ctx.reduce(torch.tensor(flags), "sum").tolist()
    _give_up_if_failed(folder, failed, flags, ctx)
    if ctx.is_main:
        for old in complete_checkpoints(run_dir)[:-keep]:
            shutil.rmtree(old.folder, ignore_errors=True)
    return folder


def _save(state: dict[str, Any], path: Path) -> None:
    with atomic_open(path) as f:
        torch.save(state, f)


def _seal(folder: Path, manifest: dict[str, Any], replicated: dict[str, Any] | None) -> None:
    """Rank 0's part once every shard is written: the replicated state, then the manifest."""
    if replicated:
        _save(replicated, folder / REPLICATED)
    with atomic_open(folder / MANIFEST, "w") as f:
        json.dump(manifest, f, indent=1)


def _written(write: Callable[[], None]) -> WriteError | None:
    """Run ``write``; the WriteError it raised, or None."""
    try:
        write()
    except WriteError as e:
        return e
    return None


def _give_up_if_failed(folder: Path, failed: WriteError | None, flags: list[int], ctx: DistContext) -> None:
    """When a rank could not write its part of the checkpoint ``folder`` (``flags``, by rank, the same on every
    rank), rank 0 removes the folder (every rank has finished writing) and every rank raises WriteError naming
    it: this rank's own failure, or the first rank's that failed."""
    if not any(flags):
        return
    if ctx.is_main:
        shutil.rmtree(folder, ignore_errors=True)
    if failed is not None:
        raise on_every_rank(failed.named(folder, f"the checkpoint ({failed.path.name})"))
    first = next(r for r, f in enumerate(flags) if f)
    raise on_every_rank(
        WriteError(folder, "the checkpoint", f"rank {first} could not write its part (its own line says why)")
    )


def complete_checkpoints(run_dir: Path) -> list[Manifest]:
    """The checkpoints of ``run_dir`` that have a manifest, oldest first."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.name.startswith(_PREFIX) and (p / MANIFEST).is_file()]
    return [read_manifest(p) for p in sorted(found)]


def interrupted_checkpoints(run_dir: Path) -> list[Path]:
    """Checkpoint folders of ``run_dir`` without a manifest (their writing was interrupted)."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.name.startswith(_PREFIX) and not (p / MANIFEST).is_file())


def read_manifest(folder: Path) -> Manifest:
    """The manifest of the checkpoint ``folder``; InputError naming the file when it is missing or bad."""
    path = Path(folder) / MANIFEST
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(path, "no checkpoint manifest here (not a checkpoint, or an interrupted one)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(path, f"unreadable checkpoint manifest: {e}") from None
    try:
        if data["format"] != FORMAT:
            raise InputError(path, f"checkpoint format {data['format']} is not the supported {FORMAT}")
        manifest = Manifest(
            Path(folder),
            int(data["world_size"]),
            int(data["images_seen"]),
            [int(n) for n in data["shard_sizes"]],
            dict(data["sampler"]),
            int(data["next_id"]),
            int(data["sh_degree"]),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise InputError(path, f"checkpoint manifest lacks or garbles {e}") from None
    if len(manifest.shard_sizes) != manifest.world_size:
        raise InputError(path, f"{len(manifest.shard_sizes)} shard sizes for world size {manifest.world_size}")
    return manifest


def find_checkpoint(path: Path) -> Manifest:
    """The checkpoint to resume from: ``path`` itself if it is a checkpoint folder, else the newest complete
    checkpoint of the run folder ``path``."""
    path = Path(path)
    if (path / MANIFEST).is_file():
        return read_manifest(path)
    if not path.is_dir():
        raise InputError(path, "no such run folder or checkpoint to resume from")
    found = complete_checkpoints(path)
    if not found:
        raise InputError(path, "no complete checkpoint in this run folder (checkpoints/images_*/manifest.json)")
    return found[-1]


def run_dir_of(manifest: Manifest) -> Path:
    """The run folder a checkpoint belongs to."""
    return manifest.folder.parent.parent


def load_replicated(manifest: Manifest) -> dict[str, Any]:
    """The state saved once for all ranks with checkpoint ``manifest`` ({} when there is none)."""
    path = manifest.folder / REPLICATED
    if not path.is_file():
        return {}
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch.load reports corruption with assorted exception types
        raise InputError(path, f"unreadable checkpoint file: {e}") from None


def load_shards(manifest: Manifest, ctx: DistContext) -> dict[str, Any]:
    """This rank's part of the checkpoint: {"optimizer": optimizer state, "densify": statistics}, from its own
    file on the same world size, else the concatenation of files rank, rank + W, ... (rows to redistribute)."""
    files = [manifest.shard_file(r) for r in range(ctx.rank, manifest.world_size, ctx.world_size)]
    states = [_read_shard(f, manifest) for f in files]
    if len(states) == 1:
        return {"optimizer": states[0]["optimizer"], "densify": states[0]["densify"]}
    if not states:  # more ranks than shards: this one starts empty and receives its share
        return _empty(manifest.sh_degree)
    return _concat(states)


def _read_shard(path: Path, manifest: Manifest) -> dict[str, Any]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise InputError(path, "checkpoint shard is missing") from None
    except Exception as e:  # torch.load reports corruption with assorted exception types
        raise InputError(path, f"unreadable checkpoint shard: {e}") from None
    rank = int(path.stem.split("_")[1])
    n = len(state["optimizer"]["ids"])
    if n != manifest.shard_sizes[rank] or state["images_seen"] != manifest.images_seen:
        raise InputError(
            path,
            f"shard holds {n} Gaussians at {state['images_seen']} images; the manifest says "
            f"{manifest.shard_sizes[rank]} at {manifest.images_seen}",
        )
    return state


def _empty(sh_degree: int) -> dict[str, Any]:
    """A state with no Gaussians of degree ``sh_degree`` (Adam state: none yet)."""
    params = {
        "means": torch.zeros(0, 3),
        "log_scales": torch.zeros(0, 3),
        "quats": torch.zeros(0, 4),
        "opacity_logits": torch.zeros(0),
        "sh0": torch.zeros(0, 1, 3),
        "shN": torch.zeros(0, num_sh_rest(sh_degree), 3),
    }
    optimizer = {"params": params, "ids": torch.zeros(0, dtype=torch.int64), "adam": {f: {} for f in TRAINABLE}}
    return {"optimizer": optimizer, "densify": {}}


def _concat(states: list[dict[str, Any]]) -> dict[str, Any]:
    """One optimizer state and one set of statistics from several shards (Adam moments are zero where a
    shard had not stepped; step counts: the largest)."""
    opts = [s["optimizer"] for s in states]
    params = {f: torch.cat([o["params"][f] for o in opts]) for f in TRAINABLE}
    adam = {}
    for f in TRAINABLE:
        stepped = [o["adam"][f] for o in opts if o["adam"][f]]
        if not stepped:
            adam[f] = {}
            continue
        adam[f] = {"step": max((s["step"] for s in stepped), key=float).clone()}
        for key in ("exp_avg", "exp_avg_sq"):
            adam[f][key] = torch.cat(
                [o["adam"][f][key] if o["adam"][f] else torch.zeros_like(o["params"][f]) for o in opts]
            )
    densify = {}
    for key in sorted({k for s in states for k in s["densify"]}):  # a shard without statistics yet: zeros
        dtype = next(s["densify"][key].dtype for s in states if key in s["densify"])
        parts = []
        for s, o in zip(states, opts):
            value, n = s["densify"].get(key), len(o["ids"])
            parts.append(value if value is not None and len(value) == n else torch.zeros(n, dtype=dtype))
        densify[key] = torch.cat(parts)
    ids = torch.cat([o["ids"] for o in opts])
    return {"optimizer": {"params": params, "ids": ids, "adam": adam}, "densify": densify}
