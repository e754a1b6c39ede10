"""Tests for grendel_py.parallel.export: one PLY from W shards equals the single-rank model, byte for byte."""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from plyfile import PlyData, PlyElement

from grendel_py.errors import WriteError
from grendel_py.model.gaussians import Gaussians
from grendel_py.model.ply import ply_property_names, read_ply, write_ply
from grendel_py.parallel import export
from grendel_py.parallel.export import ply_header, write_merged
from grendel_py.parallel.runtime import DistContext, init_distributed
from tests.dist_util import run_ranks

FLOAT_FIELDS = ("means", "log_scales", "quats", "opacity_logits", "sh0", "shN")


def _model(n: int, sh_degree: int = 2, seed: int = 0) -> Gaussians:
    """Random values in every field, ids permuted; means[:, 0] is unique so rows can be matched by it."""
    gen = torch.Generator().manual_seed(seed)
    means = torch.randn(n, 3, generator=gen) * 10
    means[:, 0] = torch.randperm(n, generator=gen).to(torch.float32) * 0.25 - 3.0
    return Gaussians(
        means=means,
        log_scales=torch.randn(n, 3, generator=gen),
        quats=torch.randn(n, 4, generator=gen),
        opacity_logits=torch.randn(n, generator=gen) * 5,
        sh0=torch.randn(n, 1, 3, generator=gen),
        shN=torch.randn(n, (sh_degree + 1) ** 2 - 1, 3, generator=gen),
        ids=torch.randperm(n, generator=gen) + 100,
    )


def _shards(g: Gaussians, sizes: list[int]) -> list[Gaussians]:
    """``g`` split into shards of ``sizes`` rows, taken in a scrambled (neither row nor id) order."""
    rows = torch.randperm(len(g), generator=torch.Generator().manual_seed(7))
    bounds = np.cumsum([0, *sizes])
    return [g.select(rows[bounds[r] : bounds[r + 1]]) for r in range(len(sizes))]


def _by_id(g: Gaussians) -> Gaussians:
    return g.select(torch.argsort(g.ids))


def _by_x(g: Gaussians) -> Gaussians:
    return g.select(torch.argsort(g.means[:, 0]))


def _single() -> DistContext:
    return init_distributed(env={})


def _plyfile_bytes(n: int, sh_degree: int) -> bytes:
    vertices = np.zeros(n, dtype=[(name, "<f4") for name in ply_property_names(sh_degree)])
    buffer = io.BytesIO()
    PlyData([PlyElement.describe(vertices, "vertex")], text=False, byte_order="<").write(buffer)
    return buffer.getvalue()


@pytest.mark.parametrize("sh_degree", [0, 1, 2, 3])
@pytest.mark.parametrize("n", [0, 1, 1000])
def test_header_is_plyfiles(n: int, sh_degree: int) -> None:
    header = ply_header(n, sh_degree)
    data = _plyfile_bytes(n, sh_degree)
    assert data[: len(header)] == header
    assert len(data) == len(header) + n * 4 * len(ply_property_names(sh_degree))


@pytest.mark.parametrize("sh_degree", [0, 3])
def test_single_rank_equals_write_ply(tmp_path: Path, sh_degree: int) -> None:
    g = _model(57, sh_degree)
    (tmp_path / ".merged.ply.merge.tmp").write_bytes(b"stale leftover of a crashed run" * 1000)
    write_merged(tmp_path / "merged.ply", g, _single())
    write_ply(tmp_path / "plain.ply", _by_id(g))  # rows are written in id order
    assert (tmp_path / "merged.ply").read_bytes() == (tmp_path / "plain.ply").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merged.ply", "plain.ply"]


def test_single_rank_empty_model(tmp_path: Path) -> None:
    g = _model(0, 1)
    write_merged(tmp_path / "merged.ply", g, _single())
    write_ply(tmp_path / "plain.ply", g)
    assert (tmp_path / "merged.ply").read_bytes() == (tmp_path / "plain.ply").read_bytes()


def test_failure_removes_temporary_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(export, "_write_pieces", fail)
    with pytest.raises(WriteError, match="merged.ply: cannot write the merged model: disk full"):
        write_merged(tmp_path / "sub" / "merged.ply", _model(10), _single())
    assert list((tmp_path / "sub").iterdir()) == []


def test_invalid_shard_is_rejected(tmp_path: Path) -> None:
    g = _model(10)
    g.quats[3, 1] = float("nan")
    with pytest.raises(ValueError, match="quats"):
        write_merged(tmp_path / "merged.ply", g, _single())
    assert list(tmp_path.iterdir()) == []


def _write_job(ctx: DistContext, path: str, n: int, sizes: list[int]) -> tuple[bool, list[str]]:
    write_merged(path, _shards(_model(n), sizes)[ctx.rank], ctx)
    return Path(path).exists(), sorted(p.name for p in Path(path).parent.iterdir())


@pytest.mark.parametrize("sizes", [[0, 37], [13, 0, 24]])
def test_w_ranks_write_the_single_rank_model(tmp_path: Path, sizes: list[int]) -> None:
    path = tmp_path / "merged.ply"
    g = _model(sum(sizes))
    results = run_ranks(len(sizes), _write_job, str(path), len(g), sizes)
    assert results == [(True, ["merged.ply"])] * len(sizes)  # no rank returns before the rename
    write_ply(tmp_path / "plain.ply", Gaussians.cat([_by_id(s) for s in _shards(g, sizes)]))
    assert path.read_bytes() == (tmp_path / "plain.ply").read_bytes()
    back, want = _by_x(read_ply(path)), _by_x(g)
    for name in FLOAT_FIELDS:
        assert torch.equal(getattr(back, name), getattr(want, name)), name


def _failing_job(ctx: DistContext, path: str, fault: str) -> str:
    shard = _shards(_model(20), [12, 8])[ctx.rank]
    if ctx.rank == 1 and fault == "nan":
        shard.opacity_logits[0] = float("nan")
    if ctx.rank == 1 and fault == "degree":
        shard.shN = shard.shN[:, :3]
    try:
        write_merged(path, shard, ctx)
    except (ValueError, RuntimeError) as e:
        return f"{type(e).__name__}: {e}"
    return "no error"


@pytest.mark.parametrize(
    ("fault", "errors"),
    [
        ("nan", ["RuntimeError: .*rank.*1.*opacity_logits", "ValueError: opacity_logits"]),
        ("degree", ["ValueError: .*SH degrees \\[1, 2\\]"] * 2),
    ],
)
def test_failure_on_one_rank_raises_on_all(tmp_path: Path, fault: str, errors: list[str]) -> None:
    results = run_ranks(2, _failing_job, str(tmp_path / "merged.ply"), fault)
    assert all(re.match(pattern, result) for pattern, result in zip(errors, results, strict=True)), results
    assert list(tmp_path.iterdir()) == []
