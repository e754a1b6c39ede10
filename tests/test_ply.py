"""Tests for grendel_py.model.ply: INRIA byte layout, bit-exact round trips, gsplat files, bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from plyfile import PlyData, PlyElement

from grendel_py.errors import InputError, WriteError
from grendel_py.model import ply as ply_module
from grendel_py.model.gaussians import Gaussians
from grendel_py.model.ply import read_ply, write_ply

FIELDS = ("means", "log_scales", "quats", "opacity_logits", "sh0", "shN", "ids")


def _random(n: int, sh_degree: int, seed: int = 0) -> Gaussians:
    """Gaussians with arbitrary random float32 values in every field (ids permuted)."""
    gen = torch.Generator().manual_seed(seed)
    k = (sh_degree + 1) ** 2
    return Gaussians(
        means=torch.randn(n, 3, generator=gen) * 100,
        log_scales=torch.randn(n, 3, generator=gen),
        quats=torch.randn(n, 4, generator=gen),
        opacity_logits=torch.randn(n, generator=gen) * 5,
        sh0=torch.randn(n, 1, 3, generator=gen),
        shN=torch.randn(n, k - 1, 3, generator=gen),
        ids=torch.randperm(n, generator=gen),
    )


def _inria_vertices(g: Gaussians) -> np.ndarray:
    """The vertex array the INRIA code (save_ply) writes, built field by field from its definition."""
    n, rest = len(g), g.shN.shape[1]
    names = ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
    names += [f"f_rest_{i}" for i in range(3 * rest)]
    names += ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    v = np.zeros(n, dtype=[(name, "f4") for name in names])
    for i, axis in enumerate("xyz"):
        v[axis] = g.means[:, i].numpy()
        v[f"scale_{i}"] = g.log_scales[:, i].numpy()
    for c in range(3):
        v[f"f_dc_{c}"] = g.sh0[:, 0, c].numpy()
        for k in range(rest):
            v[f"f_rest_{c * rest + k}"] = g.shN[:, k, c].numpy()
    for i in range(4):
        v[f"rot_{i}"] = g.quats[:, i].numpy()
    v["opacity"] = g.opacity_logits.numpy()
    return v


def _write_vertices(path: Path, vertices: np.ndarray, text: bool = False) -> None:
    PlyData([PlyElement.describe(vertices, "vertex")], text=text, byte_order="<").write(str(path))


def _assert_bit_equal(a: Gaussians, b: Gaussians) -> None:
    for name in FIELDS[:-1]:
        x, y = getattr(a, name), getattr(b, name)
        assert x.shape == y.shape and torch.equal(x.view(torch.int32), y.view(torch.int32)), name


@pytest.mark.parametrize("sh_degree", [0, 1, 2, 3])
def test_round_trip_bit_exact(tmp_path: Path, sh_degree: int) -> None:
    g = _random(57, sh_degree)
    g.means[0, 0] = -0.0
    g.sh0[1, 0, 1] = 1e-42  # subnormal
    g.quats[2] = torch.tensor([3.4e38, -3.4e38, 1e-38, 0.0])
    write_ply(tmp_path / "m.ply", g)
    back = read_ply(tmp_path / "m.ply")
    back.validate()
    _assert_bit_equal(g, back)
    assert torch.equal(back.ids, torch.arange(57))


def test_binary_vertices_are_mapped_not_parsed_row_by_row(tmp_path: Path) -> None:
    """plyfile parses an unmapped binary element one row and one property at a time in Python (minutes for
    millions of Gaussians); a model file is mapped (copy-on-write) and still reads bit for bit."""
    g = _random(300, 3)
    write_ply(tmp_path / "m.ply", g)
    assert isinstance(ply_module.read_ply_data(tmp_path / "m.ply")["vertex"].data, np.memmap)
    _assert_bit_equal(g, read_ply(tmp_path / "m.ply"))


@pytest.mark.parametrize("sh_degree", [0, 3])
def test_byte_layout_matches_inria(tmp_path: Path, sh_degree: int) -> None:
    g = _random(9, sh_degree)
    write_ply(tmp_path / "m.ply", g)
    data = (tmp_path / "m.ply").read_bytes()
    header, body = data.split(b"end_header\n", 1)
    expected = _inria_vertices(g)
    assert body == expected.astype(expected.dtype.newbyteorder("<")).tobytes()
    lines = header.decode("ascii").splitlines()
    assert lines[:3] == ["ply", "format binary_little_endian 1.0", "element vertex 9"]
    assert [line for line in lines if line.startswith("property")] == [
        f"property float {name}" for name in expected.dtype.names
    ]


def test_reads_gsplat_layout_any_order_and_ascii(tmp_path: Path) -> None:
    g = _random(12, 1)
    inria = _inria_vertices(g)
    names = [n for n in inria.dtype.names if n not in ("nx", "ny", "nz")][::-1]
    gsplat = np.zeros(12, dtype=[(n, "f4") for n in names])
    for n in names:
        gsplat[n] = inria[n]
    _write_vertices(tmp_path / "gsplat.ply", gsplat)
    _assert_bit_equal(g, read_ply(tmp_path / "gsplat.ply"))
    _write_vertices(tmp_path / "ascii.ply", gsplat.astype([(n, "f8") for n in names]), text=True)
    torch.testing.assert_close(read_ply(tmp_path / "ascii.ply").shN, g.shN)


def test_empty_model_round_trips(tmp_path: Path) -> None:
    write_ply(tmp_path / "e.ply", _random(4, 2).select(slice(0, 0)))
    back = read_ply(tmp_path / "e.ply")
    assert len(back) == 0 and back.sh_degree == 2


def test_write_is_atomic_and_creates_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "a" / "b" / "m.ply"
    write_ply(target, _random(5, 0))
    original = target.read_bytes()

    def fail(self: PlyData, stream: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(ply_module.PlyData, "write", fail)
    with pytest.raises(WriteError, match="m.ply: cannot write: disk full"):
        write_ply(target, _random(6, 1))
    assert target.read_bytes() == original
    assert [p.name for p in target.parent.iterdir()] == ["m.ply"]


def test_write_to_an_impossible_path_is_input_error(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(InputError, match="cannot write: .*notes.txt is a file, not a folder") as info:
        write_ply(tmp_path / "notes.txt" / "sub" / "m.ply", _random(3, 0))
    assert info.value.path == tmp_path / "notes.txt" / "sub" / "m.ply"
    (tmp_path / "m.ply").mkdir()
    with pytest.raises(InputError, match="is a folder") as info:
        write_ply(tmp_path / "m.ply", _random(3, 0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.ply", "notes.txt"]


def test_write_rejects_invalid_gaussians(tmp_path: Path) -> None:
    g = _random(5, 1)
    g.opacity_logits[2] = float("nan")
    with pytest.raises(ValueError, match="opacity_logits"):
        write_ply(tmp_path / "m.ply", g)
    assert not any(tmp_path.iterdir())


def _drop(vertices: np.ndarray, name: str) -> np.ndarray:
    keep = [n for n in vertices.dtype.names if n != name]
    out = np.zeros(len(vertices), dtype=[(n, "f4") for n in keep])
    for n in keep:
        out[n] = vertices[n]
    return out


def _bad_files(tmp_path: Path) -> list[tuple[str, Path, str]]:
    """(case, path, substring expected in the problem) for every kind of bad input."""
    good = _inria_vertices(_random(8, 1))
    cases: list[tuple[str, Path, str]] = [("missing", tmp_path / "absent.ply", "no such file")]
    (tmp_path / "text.ply").write_text("hello, not a ply\n")
    cases.append(("not a ply", tmp_path / "text.ply", "not a valid PLY"))
    write_ply(tmp_path / "full.ply", _random(8, 1))
    (tmp_path / "short.ply").write_bytes((tmp_path / "full.ply").read_bytes()[:-10])
    cases.append(("truncated", tmp_path / "short.ply", "early end-of-file"))
    faces = np.zeros(2, dtype=[("vertex_indices", "i4", (3,))])
    PlyData([PlyElement.describe(faces, "face")]).write(str(tmp_path / "faces.ply"))
    cases.append(("no vertex", tmp_path / "faces.ply", "no 'vertex' element"))
    listed = np.zeros(2, dtype=[("x", "f4"), ("rgb", "u1", (3,))])
    _write_vertices(tmp_path / "list.ply", listed)
    cases.append(("list property", tmp_path / "list.ply", "rgb are not numeric scalars"))
    _write_vertices(tmp_path / "noopacity.ply", _drop(good, "opacity"))
    cases.append(("missing field", tmp_path / "noopacity.ply", "opacity"))
    _write_vertices(tmp_path / "rest.ply", _drop(good, "f_rest_8"))
    cases.append(("f_rest count", tmp_path / "rest.ply", "8 f_rest_* properties"))
    renamed = ["f_rest_99" if n == "f_rest_3" else n for n in good.dtype.names]
    gap = good.view([(n, "f4") for n in renamed])
    _write_vertices(tmp_path / "gap.ply", gap)
    cases.append(("f_rest gap", tmp_path / "gap.ply", "f_rest_3"))
    for value, name in ((np.nan, "nan"), (np.inf, "inf")):
        bad = good.copy()
        bad["scale_1"][5] = value
        _write_vertices(tmp_path / f"{name}.ply", bad)
        cases.append((name, tmp_path / f"{name}.ply", "'scale_1' has 1 non-finite values (first at vertex 5)"))
    return cases


def test_bad_input_raises_input_error(tmp_path: Path) -> None:
    for case, path, problem in _bad_files(tmp_path):
        with pytest.raises(InputError) as info:
            read_ply(path)
        assert info.value.path == path, case
        assert problem in info.value.problem, (case, info.value.problem)
        assert str(path) in str(info.value), case
