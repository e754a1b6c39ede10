"""One PLY file from a model sharded over the ranks, without any rank holding the whole model.

Every record of the INRIA layout (see :mod:`grendel_py.model.ply`) has the same size, so each rank can write
its own rows at a known offset: rank 0 writes the header and sizes a temporary file next to the target, every
rank writes its shard (rows sorted by global id) at the exclusive prefix sum of the shard sizes, and rank 0
renames the file into place. The file's rows are therefore ordered by rank, then by id.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
import torch.distributed as dist

from grendel_py.parallel.runtime import DistContext
from grendel_py.model.gaussians import Gaussians
from grendel_py.model.ply import ply_property_names, ply_records

T = TypeVar("T")


def ply_header(n: int, sh_degree: int) -> bytes:
    """The header plyfile writes for ``n`` binary little-endian INRIA vertices of degree ``sh_degree``."""
    lines = [
        "ply",
        "format binary_little_endian 1.0",
        f"element vertex {n}",
        *(f"property float {name}" for name in ply_property_names(sh_degree)),
        "end_header",
    ]
    return ("\n".join(lines) + "\n").encode("ascii")


def write_merged_ply(path: str | Path, shard: Gaussians, ctx: DistContext) -> None:
    """Write the union of every rank's ``shard`` to ``path`` as one INRIA PLY; collective over all ranks.

    Each shard is validated and its rows sorted by global id; the file holds rank 0's rows, then rank 1's, ...
    The file appears whole or not at all: it is assembled in ``.{name}.merge.tmp`` next to ``path`` (a
    directory all ranks must see) and renamed when every rank has written and fsynced its part. A failure on
    any rank raises on every rank and rank 0 removes the temporary file. With one rank and ids in ascending
    order the bytes equal :func:`~grendel_py.model.ply.write_ply`'s.
    """
    path = Path(path)
    tmp = path.parent / f".{path.name}.merge.tmp"
    try:
        layout = _agree(ctx, lambda: _validated_layout(shard))
        degrees = sorted({degree for _, degree in layout})
        if len(degrees) != 1:
            raise ValueError(f"write_merged_ply: shards have different SH degrees {degrees}")
        sizes = [n for n, _ in layout]
        header = ply_header(sum(sizes), degrees[0])
        record_size = 4 * len(ply_property_names(degrees[0]))
        offset = len(header) + sum(sizes[: ctx.rank]) * record_size
        _agree(ctx, lambda: _create(tmp, header, sum(sizes) * record_size) if ctx.is_main else None)
        _agree(ctx, lambda: _write_rows(tmp, offset, shard))
        _agree(ctx, lambda: os.replace(tmp, path) if ctx.is_main else None)
    except BaseException:
        if ctx.is_main:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        raise


def _validated_layout(shard: Gaussians) -> tuple[int, int]:
    """(rows, SH degree) of ``shard`` after :meth:`Gaussians.validate`."""
    shard.validate()
    return len(shard), shard.sh_degree


def _create(tmp: Path, header: bytes, body_size: int) -> None:
    """``tmp`` holding ``header`` followed by ``body_size`` zero bytes (parent directories created)."""
    tmp.parent.mkdir(parents=True, exist_ok=True)
    with open(tmp, "wb") as f:
        f.write(header)
        f.truncate(len(header) + body_size)


def _write_rows(tmp: Path, offset: int, shard: Gaussians) -> None:
    """Write the records of ``shard``, sorted by id, into ``tmp`` at byte ``offset``, and fsync."""
    records = ply_records(shard.select(torch.argsort(shard.ids)))
    with open(tmp, "r+b") as f:
        f.seek(offset)
        f.write(records.reshape(-1).view(np.uint8))
        f.flush()
        os.fsync(f.fileno())


def _agree(ctx: DistContext, step: Callable[[], T]) -> list[T]:
    """Run ``step`` here and all-gather its result; returns every rank's result, by rank. Also a barrier.

    If ``step`` raised on any rank, every rank raises: that rank its own exception, the others RuntimeError."""
    try:
        value, error = step(), None
    except Exception as e:  # re-raised below, once the other ranks know
        value, error = None, e
    results: list[tuple[T | None, str | None]] = [(value, None)]
    if ctx.distributed:
        results = [(None, None)] * ctx.world_size
        dist.all_gather_object(results, (value, None if error is None else f"{type(error).__name__}: {error}"))
    if error is not None:
        raise error
    failed = {rank: report for rank, (_, report) in enumerate(results) if report is not None}
    if failed:
        raise RuntimeError(f"write_merged_ply failed on other ranks: {failed}")
    return [v for v, _ in results]
