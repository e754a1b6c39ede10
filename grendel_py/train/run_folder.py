"""The run folder (``train.out``): checked by every rank before any work, created by rank 0 with the resolved
config, and cleared of what an earlier attempt or a later checkpoint left."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
import torch.distributed as dist

from grendel_py.config import Config, save_config
from grendel_py.errors import InputError, WriteError, on_every_rank
from grendel_py.fileio import ROOM_OR_IO, ensure_folder, os_problem, write_error
from grendel_py.parallel.runtime import DistContext
from grendel_py.train.checkpoint import Manifest, complete_checkpoints, interrupted_checkpoints, run_dir_of
from grendel_py.train.run_lock import LOCK

_LEFTOVERS = {"config.yaml", "tb", "checkpoints"}  # what a run writes before its first complete checkpoint


def check_run_dir(cfg: Config, resume: Manifest | None, restart: bool) -> Path:
    """The run folder ``cfg.train.out``, checked (every rank, before any work): a fresh run needs it absent or
    empty (or, with ``restart``, holding only an earlier attempt's leftovers); a resumed run, the
    checkpoint's own folder."""
    if not cfg.train.out:
        raise InputError(None, "train.out is not set: give the run's output folder, e.g. train.out=runs/demo")
    out = Path(cfg.train.out)
    if resume is None and out.exists():
        if not out.is_dir():
            raise InputError(out, "output folder is a file; choose a new path")
        found = {p.name for p in out.iterdir()} - {LOCK}  # the lock this job holds (run_lock.py)
        if found and not (restart and found <= _LEFTOVERS):
            raise InputError(out, "output folder exists and is not empty; choose a new path (or --resume it)")
    if resume is not None and run_dir_of(resume).resolve() != out.resolve():
        raise InputError(out, f"train.out must be the folder of the checkpoint {resume.folder}")
    return out


def create_run_dir(out: Path, cfg: Config, resume: Manifest | None, ctx: DistContext) -> None:
    """Rank 0 creates the run folder and saves the resolved config; a fresh run clears an earlier attempt's
    leftovers, a resumed one removes checkpoints newer than its own and interrupted ones. Every rank raises
    the same InputError when rank 0 cannot write there."""
    if ctx.distributed:
        dist.barrier()  # every rank has checked the folder before rank 0 changes it
    problem: InputError | WriteError | None = None
    if ctx.is_main:
        created = not out.exists()
        try:
            ensure_folder(out)
            if resume is None:
                for name in ("tb", "checkpoints"):
                    shutil.rmtree(out / name, ignore_errors=True)
            else:
                for later in complete_checkpoints(out):
                    if later.images_seen > resume.images_seen:
                        shutil.rmtree(later.folder)
                for folder in interrupted_checkpoints(out):
                    shutil.rmtree(folder)
            save_config(cfg, out / "config.yaml")
        except (InputError, WriteError) as e:
            problem = e
        except OSError as e:
            problem = write_error(e, out, "the run folder") if e.errno in ROOM_OR_IO else None
            problem = problem or InputError(out, f"cannot write the run folder: {os_problem(e, out)}")
        if problem and created:
            shutil.rmtree(out, ignore_errors=True)
    failed = ctx.reduce(torch.tensor([float(bool(problem))]), "max")
    if float(failed) > 0:
        raise on_every_rank(problem or InputError(out, "rank 0 cannot write the run folder"))
