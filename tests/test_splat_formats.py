"""The viewer formats (.splat, SPZ, compressed PLY): known bytes, round trips within each format's
quantisation, and the same file from W ranks as from one."""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from plyfile import PlyData

from grendel_py.errors import InputError
from grendel_py.model import splat_formats as sf
from grendel_py.model.gaussians import C0, Gaussians
from grendel_py.parallel.export import write_merged
from grendel_py.parallel.runtime import DistContext, init_distributed
from tests.dist_util import run_ranks


def _model(n: int, sh_degree: int = 3, seed: int = 0) -> Gaussians:
    """Values inside every format's range: positions within +-50, log scales within [-6, 1], colours
    within [0, 1], higher SH bands within +-0.9, ids permuted; means[:, 0] unique (rows matched by it)."""
    gen = torch.Generator().manual_seed(seed)
    means = (torch.rand(n, 3, generator=gen) - 0.5) * 100
    means[:, 0] = torch.randperm(n, generator=gen).to(torch.float32) * 0.01 - 20.0
    return Gaussians(
        means=means,
        log_scales=torch.rand(n, 3, generator=gen) * 7 - 6,
        quats=torch.randn(n, 4, generator=gen),
        opacity_logits=torch.randn(n, generator=gen) * 2,
        sh0=(torch.rand(n, 1, 3, generator=gen) - 0.5) / C0 * 0.9,
        shN=(torch.rand(n, (sh_degree + 1) ** 2 - 1, 3, generator=gen) - 0.5) * 1.8,
        ids=torch.randperm(n, generator=gen) + 100,
    )


def _single() -> DistContext:
    return init_distributed(env={})


def _matched(back: Gaussians, want: Gaussians, atol_x: float = 1e-3) -> Gaussians:
    """``back``'s rows in ``want``'s order, matched by means[:, 0] (unique, 0.01 apart)."""
    order = torch.argsort(want.means[:, 0])
    rows = torch.argsort(back.means[:, 0])
    assert torch.allclose(back.means[rows, 0], want.means[order, 0], atol=atol_x)
    out = back.select(rows[torch.argsort(order)])
    return out


def _same_rotation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Largest component error between unit quaternions up to sign."""
    a = torch.nn.functional.normalize(a.double(), dim=1)
    b = torch.nn.functional.normalize(b.double(), dim=1)
    sign = torch.where((a * b).sum(dim=1, keepdim=True) < 0, -1.0, 1.0)
    return (a - sign * b).abs().amax(dim=1)


def _colour(g: Gaussians) -> torch.Tensor:
    return g.sh0.reshape(len(g), 3).double() * C0 + 0.5


def test_splat_record_bytes() -> None:
    g = Gaussians(
        means=torch.tensor([[1.0, -2.0, 3.5]]),
        log_scales=torch.tensor([[0.0, math.log(2.0), math.log(0.5)]]),
        quats=torch.tensor([[2.0, 0.0, 0.0, 0.0]]),
        opacity_logits=torch.tensor([0.0]),
        sh0=torch.tensor([[[0.0, 0.5 / C0, -1.0 / C0]]]),
        shN=torch.zeros(1, 0, 3),
        ids=torch.tensor([0]),
    )
    record = sf.splat_records(g)[0].tobytes()
    assert record[:24] == struct.pack("<6f", 1.0, -2.0, 3.5, 1.0, 2.0, 0.5)
    assert list(record[24:28]) == [127, 255, 0, 127]  # 0.5 * 255 = 127.5 truncated; colours clipped
    assert list(record[28:32]) == [255, 128, 128, 128]  # w = 1: 256 clipped to 255


def test_splat_round_trip(tmp_path: Path) -> None:
    g = _model(500, 0)
    write_merged(tmp_path / "m.splat", g, _single(), "splat")
    assert (tmp_path / "m.splat").stat().st_size == 500 * 32
    back = _matched(sf.read_model(tmp_path / "m.splat"), g, 0.0)
    assert torch.equal(back.means, g.means)
    assert torch.allclose(back.log_scales, g.log_scales, atol=1e-5)
    assert float((_colour(back) - _colour(g)).abs().max()) <= 1 / 255
    assert float((back.opacities().double() - g.opacities().double()).abs().max()) <= 1 / 255
    assert float(_same_rotation(back.quats, g.quats).max()) <= 2 / 128


def test_spz_known_bytes_and_one_gzip_member(tmp_path: Path) -> None:
    g = Gaussians(
        means=torch.tensor([[1.0, -1.0, 0.5]]),
        log_scales=torch.tensor([[-10.0, 0.0, 5.9375]]),
        quats=torch.tensor([[1.0, 0.0, 0.0, 0.0]]),
        opacity_logits=torch.tensor([0.0]),
        sh0=torch.tensor([[[0.0, 1.0, -1.0]]]),
        shN=torch.zeros(1, 3, 3),
        ids=torch.tensor([0]),
    )
    write_merged(tmp_path / "m.spz", g, _single(), "spz", antialiased=True)
    data = (tmp_path / "m.spz").read_bytes()
    d = zlib.decompressobj(31)
    payload = d.decompress(data)
    assert d.eof and d.unused_data == b""  # exactly one gzip member
    assert payload[:16] == struct.pack("<IIIBBBB", 0x5053474E, 3, 1, 1, 12, 1, 0)
    body = payload[16:]
    assert body[0:9] == bytes([0x00, 0x10, 0x00, 0x00, 0xF0, 0xFF, 0x00, 0x08, 0x00])  # 4096, -4096, 2048 (24-bit LE)
    assert body[9] == 128  # sigmoid(0) * 255 = 127.5, rounded half away from zero
    assert list(body[10:13]) == [128, round(0.15 * 255 + 127.5), round(-0.15 * 255 + 127.5)]
    assert list(body[13:16]) == [0, 160, 255]
    assert body[16:20] == (3 << 30).to_bytes(4, "little")  # w largest: index 3 of (x, y, z, w), the rest 0
    assert list(body[20:29]) == [128] * 9
    assert len(body) == 29


def test_spz_round_trip_and_range(tmp_path: Path) -> None:
    g = _model(700, 3)
    write_merged(tmp_path / "m.spz", g, _single(), "spz")
    back = _matched(sf.read_model(tmp_path / "m.spz"), g, 1 / 4096)
    assert float((back.means - g.means).abs().max()) <= 0.5 / 4096 + 1e-6
    assert float((back.log_scales - g.log_scales).abs().max()) <= 1 / 32 + 1e-6
    assert float((back.sh0 - g.sh0).abs().max()) <= 1 / (2 * 0.15 * 255) + 1e-6
    assert float((back.opacities() - g.opacities()).abs().max()) <= 1 / 255
    assert float(_same_rotation(back.quats, g.quats).max()) <= 2e-3
    err = (back.shN - g.shN).abs()
    assert float(err[:, :3].max()) <= 4 / 128 + 1 / 128 and float(err[:, 3:].max()) <= 8 / 128 + 1 / 128
    far = _model(3, 0)
    far.means[1, 2] = 2048.0
    with pytest.raises(InputError, match="far.spz: SPZ stores positions within \\+-2048"):
        write_merged(tmp_path / "far.spz", far, _single(), "spz")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.spz"]


def test_compressed_ply_layout_and_known_rotation(tmp_path: Path) -> None:
    g = _model(600, 2)
    g.quats[0] = torch.tensor([1.0, 0.0, 0.0, 0.0])
    write_merged(tmp_path / "m.compressed.ply", g, _single(), "ply-compressed", antialiased=True)
    ply = PlyData.read(str(tmp_path / "m.compressed.ply"))
    assert [el.name for el in ply.elements] == ["chunk", "vertex", "sh"]
    assert ply["chunk"].count == 3 and ply["vertex"].count == ply["sh"].count == 600
    assert [p.name for p in ply["sh"].properties] == [f"f_rest_{i}" for i in range(24)]
    assert "SplatRenderMode: mip" in ply.comments
    rotations = np.asarray(ply["vertex"].data["packed_rotation"])
    assert (512 << 20 | 512 << 10 | 512) in rotations.tolist()  # identity: index 0 (w), the rest 0 -> 511.5 rounds up


def test_compressed_ply_round_trip(tmp_path: Path) -> None:
    g = _model(1000, 3)
    write_merged(tmp_path / "m.ply", g, _single(), "ply-compressed")
    back = _matched(sf.read_model(tmp_path / "m.ply"), g, 0.05)
    ply = PlyData.read(str(tmp_path / "m.ply"))
    chunk = ply["chunk"].data
    extent = max(float(np.max(chunk[f"max_{a}"] - chunk[f"min_{a}"])) for a in "xyz")
    assert float((back.means - g.means).abs().max()) <= extent / (2 * 1023) + 1e-5
    assert float((back.log_scales - g.log_scales).abs().max()) <= 7 / (2 * 1023) + 1e-5
    assert float((_colour(back) - _colour(g)).abs().max()) <= 0.9 / (2 * 255) + 1e-6
    assert float((back.opacities() - g.opacities()).abs().max()) <= 1 / 510 + 1e-6
    assert float(_same_rotation(back.quats, g.quats).max()) <= 2e-3
    assert float((back.shN - g.shN).abs().max()) <= 1 / 32 + 1e-6


def _write_job(ctx: DistContext, path: str, fmt: str, sizes: list[int]) -> None:
    g = _model(sum(sizes), 1)
    rows = torch.randperm(len(g), generator=torch.Generator().manual_seed(7))
    bounds = np.cumsum([0, *sizes])
    write_merged(path, g.select(rows[bounds[ctx.rank] : bounds[ctx.rank + 1]]), ctx, fmt)


@pytest.mark.parametrize("fmt", ["splat", "spz", "ply-compressed"])
def test_w_ranks_write_what_one_rank_writes(tmp_path: Path, fmt: str) -> None:
    """Three ranks (one empty; 300 rows: the chunks of 256 span two ranks) give the one-rank file: the same
    bytes where the rows are in id order (splat, SPZ); for the compressed PLY, whose rows follow each rank's
    Morton curve, the same Gaussians within the quantisation (a chunk's bounds are merged over its ranks)."""
    sizes = [130, 0, 170]
    suffix = {"splat": ".splat", "spz": ".spz", "ply-compressed": ".ply"}[fmt]
    three, one = tmp_path / f"w3{suffix}", tmp_path / f"w1{suffix}"
    run_ranks(3, _write_job, str(three), fmt, sizes)
    run_ranks(1, _write_job, str(one), fmt, [sum(sizes)])
    g = _model(sum(sizes), 1)
    if fmt == "ply-compressed":
        for back in (sf.read_model(three), sf.read_model(one)):
            back = _matched(back, g, 0.05)
            assert float((_colour(back) - _colour(g)).abs().max()) <= 0.9 / (2 * 255) + 1e-6
            assert float((back.shN - g.shN).abs().max()) <= 1 / 32 + 1e-6
    else:
        a, b = _matched(sf.read_model(three), g), _matched(sf.read_model(one), g)
        for name in ("means", "log_scales", "quats", "opacity_logits", "sh0", "shN"):
            assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([three.name, one.name])


def test_read_model_rejects_damaged_files(tmp_path: Path) -> None:
    (tmp_path / "bad.splat").write_bytes(b"x" * 33)
    with pytest.raises(InputError, match="32-byte"):
        sf.read_model(tmp_path / "bad.splat")
    (tmp_path / "bad.spz").write_bytes(gzip.compress(b"NGSP" + b"\0" * 20))
    with pytest.raises(InputError, match="SPZ"):
        sf.read_model(tmp_path / "bad.spz")


def test_export_command_converts_and_reports_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from grendel_py.cli import main
    from grendel_py.model.ply import write_ply

    g = _model(300, 3)
    write_ply(tmp_path / "model.ply", g)
    assert main(["export", str(tmp_path / "model.ply"), "--format", "spz", "--out", str(tmp_path / "m.spz")]) == 0
    assert "300 Gaussians" in capsys.readouterr().out
    # SPZ -> compressed PLY -> INRIA PLY: the model survives within the two quantisations.
    assert (
        main(
            [
                "export",
                str(tmp_path / "m.spz"),
                "--format",
                "ply-compressed",
                "--out",
                str(tmp_path / "m.compressed.ply"),
            ]
        )
        == 0
    )
    assert (
        main(["export", str(tmp_path / "m.compressed.ply"), "--format", "ply", "--out", str(tmp_path / "back.ply")])
        == 0
    )
    back = _matched(sf.read_model(tmp_path / "back.ply"), g, 0.05)
    assert float((back.means - g.means).abs().max()) < 0.1
    capsys.readouterr()
    assert main(["export", str(tmp_path / "missing.ply"), "--format", "splat", "--out", str(tmp_path / "x.splat")]) == 2
    assert main(["export", str(tmp_path / "model.ply"), "--format", "splat", "--out", str(tmp_path / "model.ply")]) == 2
    g.means[7, 0] = 5000.0
    write_ply(tmp_path / "far.ply", g)
    assert main(["export", str(tmp_path / "far.ply"), "--format", "spz", "--out", str(tmp_path / "far.spz")]) == 2
    ply = PlyData.read(str(tmp_path / "model.ply"))
    ply["vertex"].data["opacity"][5] = float("nan")
    ply.write(str(tmp_path / "nan.ply"))
    assert main(["export", str(tmp_path / "nan.ply"), "--format", "splat", "--out", str(tmp_path / "nan.splat")]) == 2
    unwritable = tmp_path / "model.ply" / "m.splat"  # under a file: no folder can be made there (root included)
    assert main(["export", str(tmp_path / "model.ply"), "--format", "splat", "--out", str(unwritable)]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 5 and "missing.ply" in errors[0] and "far.spz" in errors[2] and "2048" in errors[2]
    assert "nan.ply" in errors[3] and "opacity" in errors[3] and str(unwritable) in errors[4], errors
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "back.ply",
        "far.ply",
        "m.compressed.ply",
        "m.spz",
        "model.ply",
        "nan.ply",
    ]


@pytest.mark.parametrize("fmt", ["ply", "splat", "spz", "ply-compressed"])
def test_blocks_of_rows_encode_the_bytes_of_the_whole_shard(fmt: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A shard encoded in blocks (host memory bounded) gives the bytes of one block, also for a shard that
    starts inside a chunk of 256 (rows 130.. of a 1130-row file)."""
    from grendel_py.parallel import export

    writer = export.FORMAT_WRITERS[fmt]
    shard = _model(1000, 2)
    summary = [writer.summary(_model(130, 2, seed=1), 0)]

    def body() -> bytes:
        out = bytearray(writer.body_size(1130, 2))
        for offset, array in writer.pieces(shard, 130, 1130, summary):
            data = np.ascontiguousarray(array).reshape(-1).view(np.uint8).tobytes()
            out[offset : offset + len(data)] = data
        return bytes(out)

    whole = body()
    monkeypatch.setattr(export, "BLOCK_ROWS", 300)
    assert body() == whole
