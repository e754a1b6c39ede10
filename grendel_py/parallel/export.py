"""One model file from a model sharded over the ranks, without any rank holding the whole model.

Every format of :data:`~grendel_py.model.splat_formats.FORMATS` but SPZ is records of a fixed size per
Gaussian (and per chunk of 256, for the compressed PLY), so each rank encodes its own rows and writes them
at a known offset: rank 0 writes the header and sizes a temporary file next to the target, every rank writes
its shard at the exclusive prefix sum of the shard sizes, and rank 0 renames the file into place. Rows are
ordered by rank, then by global id (``ply``, ``splat``, ``spz``) or along a Morton curve over the rank's
shard (``ply-compressed``, whose chunks then have tight bounds; a chunk that spans two ranks gets bounds
merged from both, the only data the ranks exchange besides their sizes).

SPZ cannot be written in parallel: the file is ONE gzip stream (its readers stop after the first gzip
member, so per-rank members cannot be concatenated), and a deflate stream has to pass through one
compressor. The ranks still encode their rows in parallel, into an uncompressed payload file at their
offsets, which rank 0 then streams through the compressor (its memory does not grow with the model).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist

from grendel_py.errors import InputError, WriteError
from grendel_py.fileio import atomic_open, cannot_create, ensure_folder, write_error
from grendel_py.model import splat_formats as sf
from grendel_py.model.gaussians import Gaussians
from grendel_py.model.ply import ply_property_names, ply_records
from grendel_py.parallel.runtime import DistContext

T = TypeVar("T")
Pieces = Iterable[tuple[int, np.ndarray]]  # (byte offset in the body, contiguous array)


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


@dataclass(frozen=True)
class _Format:
    """How one format is written by many ranks: the ``header`` and ``body_size`` (total, SH degree,
    antialiased), the ``order`` of a shard's rows, a small ``summary`` of a rank's rows every rank gets
    (shard, first row), and the ``pieces`` of the body a rank writes (shard, first row, total, summaries)."""

    header: Callable[[int, int, bool], bytes]
    body_size: Callable[[int, int], int]
    order: Callable[[Gaussians], torch.Tensor]
    pieces: Callable[[Gaussians, int, int, list[Any]], Pieces]
    summary: Callable[[Gaussians, int], Any] = lambda shard, first: None


def _by_id(shard: Gaussians) -> torch.Tensor:
    return torch.argsort(shard.ids)


def _morton(shard: Gaussians) -> torch.Tensor:
    by_id = _by_id(shard)  # ties along the curve stay in id order
    return by_id[sf.morton_order(shard.means[by_id])]


BLOCK_ROWS = 1 << 20
"""Rows encoded at a time, so that the host memory an export takes does not grow with the shard."""


def _blocks(shard: Gaussians, first: int, align: int = 1):
    """(block, the file row it starts at) over ``shard``'s rows (file rows ``first``..) in blocks of about
    :data:`BLOCK_ROWS`; every block but the first starts at a file row that is a multiple of ``align``."""
    start = 0
    while start < len(shard):
        end = min(len(shard), (first + start + BLOCK_ROWS) // align * align - first)
        yield shard.select(slice(start, end)), first + start
        start = end


def _ply_pieces(shard: Gaussians, first: int, total: int, _) -> Pieces:
    record = 4 * len(ply_property_names(shard.sh_degree))
    for block, row in _blocks(shard, first):
        yield row * record, ply_records(block)


def _splat_pieces(shard: Gaussians, first: int, total: int, _) -> Pieces:
    for block, row in _blocks(shard, first):
        yield row * sf.SPLAT_RECORD, sf.splat_records(block)


def _spz_pieces(shard: Gaussians, first: int, total: int, _) -> Pieces:
    widths = sf.spz_widths(shard.sh_degree)
    starts = dict(zip(widths, np.cumsum([0, *widths.values()])[:-1] * total))
    for block, row in _blocks(shard, first):
        for name, column in sf.spz_columns(block).items():
            yield int(starts[name]) + row * widths[name], column


def _chunk_summary(shard: Gaussians, first: int) -> tuple[np.ndarray, np.ndarray]:
    """The bounds of the (at most two) chunks this rank may share with others: its first and last."""
    chunks, bounds = sf.chunk_bounds(sf.chunk_features(shard), first)
    ends = [0, len(chunks) - 1] if len(chunks) else []
    return chunks[ends], bounds[ends]


def _compressed_pieces(shard: Gaussians, first: int, total: int, summaries: list[Any]) -> Pieces:
    bounds = sf.merge_bounds([sf.chunk_bounds(sf.chunk_features(shard), first), *summaries])
    chunk_bytes, vertex_bytes, _ = sf.compressed_sizes(total, shard.sh_degree)
    for block, row in _blocks(shard, first, sf.CHUNK):
        own, chunks, vertex, sh = sf.compressed_records(block, row, bounds)
        yield chunk_bytes + row * vertex.shape[1] * 4, vertex
        yield chunk_bytes + vertex_bytes + row * sh.shape[1], sh
        if len(own):
            yield int(own[0]) * chunks.shape[1] * 4, chunks


FORMAT_WRITERS = {
    "ply": _Format(
        lambda n, d, aa: ply_header(n, d), lambda n, d: n * 4 * len(ply_property_names(d)), _by_id, _ply_pieces
    ),
    "splat": _Format(lambda n, d, aa: b"", lambda n, d: n * sf.SPLAT_RECORD, _by_id, _splat_pieces),
    "spz": _Format(sf.spz_header, lambda n, d: n * sum(sf.spz_widths(d).values()), _by_id, _spz_pieces),
    "ply-compressed": _Format(
        sf.compressed_header, lambda n, d: sum(sf.compressed_sizes(n, d)), _morton, _compressed_pieces, _chunk_summary
    ),
}


WHAT = "the merged model"


def write_merged(
    path: str | Path, shard: Gaussians, ctx: DistContext, fmt: str = "ply", antialiased: bool = False
) -> None:
    """Write the union of every rank's ``shard`` to ``path`` as one file in format ``fmt`` (see
    :data:`~grendel_py.model.splat_formats.FORMATS`; ``antialiased`` marks models trained with
    ``render.antialiased`` in the formats that say so: SPZ's flag, the compressed PLY's render-mode
    comment); collective over all ranks.

    Each shard is validated; the file holds rank 0's rows, then rank 1's, ... (in the format's order). The
    file appears whole or not at all: it is assembled in ``.{name}.merge.tmp`` next to ``path`` (a directory
    all ranks must see) and renamed, or for SPZ compressed into place, when every rank has written and
    fsynced its part. A failure on any rank raises on every rank (a failed write: WriteError) and rank 0
    removes the temporary file. With one rank, ``ply`` and ids in ascending order the bytes equal
    :func:`~grendel_py.model.ply.write_ply`'s.
    """
    path = Path(path)
    writer = FORMAT_WRITERS[fmt]
    tmp = path.parent / f".{path.name}.merge.tmp"
    try:
        layout = _agree(ctx, path, lambda: _validated_layout(shard))
        degrees = sorted({degree for _, degree in layout})
        if len(degrees) != 1:
            raise ValueError(f"write_merged: shards have different SH degrees {degrees}")
        sizes = [n for n, _ in layout]
        total, first = sum(sizes), sum(sizes[: ctx.rank])
        header = writer.header(total, degrees[0], antialiased)
        ordered = shard.select(writer.order(shard))
        summaries = _agree(ctx, path, lambda: writer.summary(ordered, first))
        others = [s for r, s in enumerate(summaries) if r != ctx.rank]
        _agree(
            ctx, path, lambda: _create(tmp, path, header, writer.body_size(total, degrees[0])) if ctx.is_main else None
        )
        _agree(
            ctx,
            path,
            lambda: _write_pieces(
                tmp, len(header), _encoded(path, lambda: writer.pieces(ordered, first, total, others))
            ),
        )
        _agree(ctx, path, lambda: _publish(tmp, path, fmt) if ctx.is_main else None)
    except BaseException:
        if ctx.is_main:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        raise


def _validated_layout(shard: Gaussians) -> tuple[int, int]:
    """(rows, SH degree) of ``shard`` after :meth:`Gaussians.validate`."""
    shard.validate()
    return len(shard), shard.sh_degree


def _create(tmp: Path, path: Path, header: bytes, body_size: int) -> None:
    """``tmp`` holding ``header`` followed by ``body_size`` zero bytes (parent directories created); InputError
    naming the output ``path`` when it cannot be created there."""
    ensure_folder(tmp.parent, path)
    try:
        f = open(tmp, "wb")  # noqa: SIM115 (closed by the with below; only the opening names the output)
    except OSError as e:
        raise cannot_create(e, path, tmp.parent) from None
    with f:
        f.write(header)
        f.truncate(len(header) + body_size)


def _encoded(path: Path, encode: Callable[[], Pieces]) -> Pieces:
    """The pieces of ``encode()``, each encoded as it is written; a value the format cannot hold (ValueError)
    becomes an InputError naming ``path``."""
    try:
        yield from encode()
    except ValueError as e:
        raise InputError(path, str(e)) from None


def _write_pieces(tmp: Path, body: int, pieces: Pieces) -> None:
    """Write each (offset, array) of ``pieces`` into ``tmp`` at byte ``body + offset``, and fsync."""
    with open(tmp, "r+b") as f:
        for offset, array in pieces:
            f.seek(body + offset)
            f.write(np.ascontiguousarray(array).reshape(-1).view(np.uint8))
        f.flush()
        os.fsync(f.fileno())


def _publish(tmp: Path, path: Path, fmt: str) -> None:
    """The assembled ``tmp`` as ``path``: renamed, or for SPZ compressed into it (then removed)."""
    if fmt != "spz":
        os.replace(tmp, path)
        return
    with atomic_open(path) as f:
        sf.spz_compress(tmp, f)
    os.unlink(tmp)


def _agree(ctx: DistContext, path: Path, step: Callable[[], T]) -> list[T]:
    """Run ``step`` here and all-gather its result; returns every rank's result, by rank. Also a barrier.

    If ``step`` raised on any rank, every rank raises: that rank its own exception (a failed write as
    WriteError naming ``path``), the others WriteError too when a write failed there, else RuntimeError."""
    try:
        value, error = step(), None
    except Exception as e:  # re-raised below, once the other ranks know
        value, error = None, (write_error(e, path, WHAT) if isinstance(e, OSError) else None) or e
    results: list[tuple[T | None, str | None]] = [(value, None)]
    if ctx.distributed:
        results = [(None, None)] * ctx.world_size
        dist.all_gather_object(results, (value, None if error is None else f"{type(error).__name__}: {error}"))
    if error is not None:
        raise error
    failed = {rank: report for rank, (_, report) in enumerate(results) if report is not None}
    wrote = [rank for rank, report in failed.items() if report.startswith(WriteError.__name__)]
    if wrote:
        raise WriteError(path, WHAT, f"rank {wrote[0]} could not write its part (its own line says why)")
    if failed:
        raise RuntimeError(f"write_merged failed on other ranks: {failed}")
    return [v for v, _ in results]
